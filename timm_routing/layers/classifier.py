""" Classifier head with selectable global pooling, routing included

`PoolClassifierHead` is timm's `ClassifierHead` (pool, dropout, fc) with `'routing'` among the pooling choices; the
model families of the package keep their classifier at `head.fc` as timm's `ClassifierHead` models do.
"""
from typing import Any, Dict, Optional

import torch
import torch.nn as nn

from .pool import create_global_pool

__all__ = ['PoolClassifierHead']


class PoolClassifierHead(nn.Module):
    """Global pooling (avg, max, avgmax, catavgmax, routing or none), dropout and a linear classifier.

    Args:
        in_features: Channels of the feature map.
        num_classes: Classes; 0 replaces the classifier by an identity (the head then returns pooled features).
        pool_type: One of `timm_routing.layers.GLOBAL_POOL_TYPES`.
        routing_args: `RoutingPool2d` settings used whenever the pooling is (or is reset to) `'routing'`.
        drop_rate: Dropout before the classifier.
    """

    def __init__(
            self,
            in_features: int,
            num_classes: int,
            pool_type: str = 'avg',
            routing_args: Optional[Dict[str, Any]] = None,
            drop_rate: float = 0.,
            device=None,
            dtype=None,
    ):
        super().__init__()
        self.in_features = in_features
        self.routing_args = dict(routing_args or {})
        self.global_pool = create_global_pool(pool_type, in_features, self.routing_args)
        self.num_features = in_features * self.global_pool.feat_mult()
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(self.num_features, num_classes, device=device, dtype=dtype) if num_classes > 0 \
            else nn.Identity()

    def reset(self, num_classes: int, pool_type: Optional[str] = None, device=None, dtype=None):
        """New classifier for `num_classes`; the pooling changes only when `pool_type` is not None."""
        if pool_type is not None:
            self.global_pool = create_global_pool(pool_type, self.in_features, self.routing_args)
            self.global_pool.train(self.training)
            self.num_features = self.in_features * self.global_pool.feat_mult()
        self.fc = nn.Linear(self.num_features, num_classes, device=device, dtype=dtype) if num_classes > 0 \
            else nn.Identity()
        self.fc.train(self.training)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        x = self.drop(x)
        if pre_logits:
            return x
        return self.fc(x)
