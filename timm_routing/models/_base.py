""" Shared timm model API of the package's CNN families

`StemStagesNet` holds what the CIFAR ResNets and the Table 1 4-conv net have in common: a `stem`, a sequence of
`stages` (the feature levels of `feature_info`) and a `PoolClassifierHead` whose pooling may be routing. It provides
the whole timm model interface on top of that layout: `forward_features`, `forward_head(pre_logits)`,
`reset_classifier` (keeping the pooling, routing included, when `global_pool` is None), `get_classifier`,
`forward_intermediates`, `prune_intermediate_layers`, `group_matcher` and `set_grad_checkpointing`.

Subclasses build `stem`, `stages` and `feature_info`, then call `_init_head`.
"""
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn

from timm.layers import get_device_dtype
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq

from ..layers import PoolClassifierHead

__all__ = ['StemStagesNet']


class StemStagesNet(nn.Module):
    """Base class: stem -> stages -> pooling head (avg, max, avgmax, catavgmax, routing or none) -> classifier."""

    def _init_head(
            self,
            num_features: int,
            num_classes: int,
            global_pool: str,
            routing_args: Dict[str, Any],
            drop_rate: float,
            device=None,
            dtype=None,
    ):
        self.num_classes = num_classes
        self.num_features = num_features
        self.drop_rate = drop_rate
        self.head = PoolClassifierHead(
            num_features, num_classes, pool_type=global_pool, routing_args=routing_args, drop_rate=drop_rate,
            device=device, dtype=dtype,
        )
        self.head_hidden_size = self.head.num_features

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r'^stem',
            blocks=r'^stages\.(\d+)' if coarse else r'^stages\.(\d+)\.(\d+)',
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        """New classifier for `num_classes` (0 removes it); `global_pool=None` keeps the current pooling."""
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool, **get_device_dtype(self))
        self.head_hidden_size = self.head.num_features

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward features that also returns the outputs of the stages.

        Args:
            x: Input image tensor.
            indices: Take the last n stages if int, all if None, the listed stages if a sequence.
            norm: Accepted for timm's API; these families have no final norm.
            stop_early: Stop after the last stage asked for.
            output_fmt: Only 'NCHW'.
            intermediates_only: Return the intermediates only.
        """
        if output_fmt != 'NCHW':
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}.")
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.stages), indices)

        x = self.stem(x)
        if torch.jit.is_scripting() or not stop_early:  # can't slice stages in torchscript
            stages = self.stages
        else:
            stages = self.stages[:max_index + 1]
        for feat_idx, stage in enumerate(stages):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint_seq(stage, x)
            else:
                x = stage(x)
            if feat_idx in take_indices:
                intermediates.append(x)

        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ):
        """Drops the stages after the last one asked for (and the head, by default)."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        self.stages = self.stages[:max_index + 1]
        if prune_end:
            # the head is sized for the final features, so it goes with the stages
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
            self.head.in_features = self.num_features
        if prune_head or prune_end:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.stages, x)
        else:
            x = self.stages(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        x = self.forward_head(x)
        return x
