""" Global pooling selection with routing

`create_global_pool` extends timm's `SelectAdaptivePool2d` choices with `'routing'`, so every model family of the
package (and any timm backbone given a routing head) switches between average, max and routing pooling with the
single `global_pool` argument that timm's train.py sets from `--gp`.
"""
from typing import Any, Dict, Optional

import torch.nn as nn

from timm.layers import SelectAdaptivePool2d

from .routing import RoutingPool2d, _check_routing_args, create_routing_act

__all__ = ['GLOBAL_POOL_TYPES', 'create_global_pool', 'resolve_routing_args']

GLOBAL_POOL_TYPES = ('', 'avg', 'max', 'avgmax', 'catavgmax', 'routing')


def resolve_routing_args(
        capsule_dim: int = 16,
        iters: int = 1,
        lam: float = 1.0,
        normalize: bool = False,
        activation: Optional[str] = None,
) -> Dict[str, Any]:
    """Validates routing settings and returns them as the keyword arguments of `RoutingPool2d`.

    Models call it in `__init__` whatever their pooling, so a bad `routing_*` model kwarg fails at creation, not at
    a later `reset_classifier(..., 'routing')`.
    """
    if isinstance(capsule_dim, bool) or not isinstance(capsule_dim, int) or capsule_dim < 1:
        raise ValueError(f'routing capsule_dim must be a positive int, got {capsule_dim!r}.')
    _check_routing_args(iters, lam)
    create_routing_act(activation)  # raises on an unknown activation
    return dict(capsule_dim=capsule_dim, iters=iters, lam=float(lam), normalize=bool(normalize), activation=activation)


def create_global_pool(
        pool_type: str,
        num_features: int,
        routing_args: Optional[Dict[str, Any]] = None,
        flatten: bool = True,
) -> nn.Module:
    """Global pooling layer for a classifier head.

    Args:
        pool_type: One of `GLOBAL_POOL_TYPES`; `''` is no pooling (identity).
        num_features: Channels of the feature map the pool receives (checked against the routing capsule size).
        routing_args: `RoutingPool2d` keyword arguments for `'routing'` (see `resolve_routing_args`).
        flatten: Flatten the pooled `(B, C, 1, 1)` to `(B, C)` (an unpooled map is never flattened).

    Returns:
        A module with timm's pooling interface: `pool_type`, `feat_mult()`, `is_identity()`.

    Raises:
        ValueError: an unknown `pool_type`, or a capsule size that does not divide `num_features`.
    """
    if pool_type is None:
        pool_type = ''
    if not isinstance(pool_type, str) or pool_type not in GLOBAL_POOL_TYPES:
        raise ValueError(f'Unknown global_pool {pool_type!r}; expected one of {GLOBAL_POOL_TYPES}.')
    if pool_type == 'routing':
        pool = RoutingPool2d(**(routing_args or {}), flatten=flatten)
        pool.check_channels(num_features)
        return pool
    # no pooling keeps the map as it is: nothing to flatten
    return SelectAdaptivePool2d(pool_type=pool_type, flatten=flatten and bool(pool_type))
