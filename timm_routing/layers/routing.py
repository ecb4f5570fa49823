""" Dynamic routing as a pooling layer

The one home of the routing math of `Exploring Dynamic Routing As A Pooling Layer` (Zhao & Huang, 2019):
Algorithm 1 (vector-normed dynamic routing with the softmax over the *children*, Formula 3, and the sparsity
parameter λ of Formula 5) as a function, and the global pooling layer built on it.

* `route_by_agreement`: Algorithm 1 up to line 10, returns the weighted sum `s` and the coupling coefficients `c`.
* `dynamic_routing`: Algorithm 1 whole, `route_by_agreement` followed by the activation of line 11.
* `RoutingPool2d`: a global pooling layer, `(B, C, H, W) -> (B, C)`, that cuts the channels into capsules of
  `capsule_dim` consecutive channels and routes, in each channel group, the H·W spatial vectors into one parent.

Every head of the package (pooling head, class capsules, routing heads on timm backbones) calls `route_by_agreement`;
variants are arguments, not copies.

Numerics: the routing runs in float32 (float64 stays float64) whatever the input dtype or autocast state, using only
element-wise products and sums, which autocast leaves alone; outputs are cast back to the input dtype. Zero vectors
(dead ReLU maps) are normalised with an epsilon floor so outputs and gradients stay finite; the softmax subtracts its
maximum, so λ up to 1e4 is safe.
"""
import math
from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from timm.layers import register_notrace_function

__all__ = [
    'ROUTING_ACTIVATIONS', 'route_by_agreement', 'dynamic_routing', 'routing_pool2d', 'squash', 'vector_norm',
    'Squash', 'VectorNorm', 'create_routing_act', 'RoutingPool2d',
]

ROUTING_ACTIVATIONS = (None, 'identity', 'squash', 'norm')
_EPS = 1e-12


def squash(s: torch.Tensor, dim: int = -1, eps: float = _EPS) -> torch.Tensor:
    """Squash non-linearity of Sabour et al. 2017: `‖s‖² / (1 + ‖s‖²) · s / ‖s‖`.

    Written as `s · ‖s‖ / (1 + ‖s‖²)` with an epsilon inside the square root, so the gradient at `s = 0` is finite.
    """
    sq_norm = s.pow(2).sum(dim, keepdim=True)
    return s * torch.sqrt(sq_norm + eps) / (1. + sq_norm)


def vector_norm(s: torch.Tensor, dim: int = -1, eps: float = _EPS) -> torch.Tensor:
    """Scales vectors to unit length (Formula 6); zero vectors stay zero."""
    return F.normalize(s, p=2., dim=dim, eps=eps)


class Squash(nn.Module):
    """`squash` over the last dimension, as a module."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return squash(x)


class VectorNorm(nn.Module):
    """`vector_norm` over the last dimension, as a module."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return vector_norm(x)


class _CallableAct(nn.Module):
    """Wraps a user's plain callable so that it can sit in a module tree (not scriptable)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def create_routing_act(activation: Union[None, str, Callable[[torch.Tensor], torch.Tensor]]) -> nn.Module:
    """Module for the final activation of Algorithm 1 (line 11).

    Args:
        activation: `None` or `'identity'`, `'squash'`, `'norm'` (unit length), an `nn.Module` (used as is) or any
            callable mapping `(..., D)` to `(..., D)`.

    Raises:
        ValueError: an unknown activation name.
        TypeError: neither a string, None nor a callable.
    """
    if activation is None or activation == 'identity':
        return nn.Identity()
    if isinstance(activation, str):
        if activation == 'squash':
            return Squash()
        if activation == 'norm':
            return VectorNorm()
        raise ValueError(
            f"Unknown routing activation {activation!r}; expected one of {ROUTING_ACTIVATIONS} or a callable.")
    if isinstance(activation, nn.Module):
        return activation
    if callable(activation):
        return _CallableAct(activation)
    raise TypeError(f'Routing activation must be None, a string or a callable, got {type(activation).__name__}.')


def _check_routing_args(iters: int, lam: float) -> None:
    if isinstance(iters, bool) or not isinstance(iters, int):
        raise TypeError(f'Routing iterations must be an int, got {iters!r} ({type(iters).__name__}).')
    if iters < 0:
        raise ValueError(f'Routing iterations must be >= 0, got {iters}.')
    if isinstance(lam, bool) or not isinstance(lam, (int, float)):
        raise TypeError(f'Routing lambda must be a real number, got {lam!r} ({type(lam).__name__}).')
    if not math.isfinite(lam) or lam < 0:
        raise ValueError(f'Routing lambda must be finite and >= 0, got {lam}.')


@register_notrace_function
def route_by_agreement(
        u: torch.Tensor,
        iters: int = 1,
        lam: float = 1.0,
        normalize: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1 up to line 10: routes N children into one parent per leading index.

    `u' = u / ‖u‖` if `normalize` else `u`; `b = 0`; `c = softmax_N(λ·b)`; `iters` times: `s = Σ_N c·u'`,
    `v = s / ‖s‖`, `b += u'·v`, `c = softmax_N(λ·b)`; finally `s = Σ_N c·u'`.

    Args:
        u: Children, `(..., N, D)`.
        iters: Routing iterations `r`; 0 gives uniform couplings.
        lam: λ of Formula 5; 0 is average pooling (with `normalize=False`), large λ a "vector max".
        normalize: Normalise the children to unit length first, as Algorithm 1 prints it.

    Returns:
        The parent before activation `s`, `(..., D)`, and the coupling coefficients `c`, `(..., N)`, summing to 1 over
        N; both in the dtype of `u`.
    """
    out_dtype = u.dtype
    u = u.to(torch.promote_types(u.dtype, torch.float32))
    if normalize:
        u = vector_norm(u)
    # b = 0 gives uniform couplings; λ·0 = 0 for any λ
    c = torch.full(u.shape[:-1], 1. / u.shape[-2], dtype=u.dtype, device=u.device)
    b = torch.zeros_like(c)
    for _ in range(iters):
        s = (c.unsqueeze(-1) * u).sum(-2)
        v = vector_norm(s)
        b = b + (u * v.unsqueeze(-2)).sum(-1)
        c = torch.softmax(lam * b, dim=-1)
    s = (c.unsqueeze(-1) * u).sum(-2)
    return s.to(out_dtype), c.to(out_dtype)


def dynamic_routing(
        u: torch.Tensor,
        iters: int = 1,
        lam: float = 1.0,
        normalize: bool = False,
        activation: Union[None, str, Callable[[torch.Tensor], torch.Tensor]] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Vector-normed dynamic routing (Algorithm 1) of N children into one parent per leading index.

    Args:
        u: Children, `(..., N, D)`.
        iters: Routing iterations `r` (>= 0).
        lam: λ of Formula 5 (>= 0).
        normalize: Normalise the children to unit length first (Algorithm 1 line 1). With `normalize=False` and
            `lam=0` the result is exactly the average of the children.
        activation: Line 11: `None` (identity), `'squash'`, `'norm'` or a callable.

    Returns:
        `(v, c)`: the parent `(..., D)` and the coupling coefficients `(..., N)`.

    Raises:
        ValueError / TypeError: bad iterations, λ, activation or a `u` with fewer than 2 dims or no children.
    """
    _check_routing_args(iters, lam)
    act = create_routing_act(activation)
    if not isinstance(u, torch.Tensor):
        raise TypeError(f'u must be a tensor, got {type(u).__name__}.')
    if u.dim() < 2 or u.shape[-2] == 0:
        raise ValueError(f'u must be (..., N, D) with N >= 1 children, got shape {tuple(u.shape)}.')
    s, c = route_by_agreement(u, iters=iters, lam=lam, normalize=normalize)
    return act(s), c


@register_notrace_function
def routing_pool2d(
        x: torch.Tensor,
        capsule_dim: int,
        iters: int = 1,
        lam: float = 1.0,
        normalize: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Routes the H·W spatial vectors of each group of `capsule_dim` consecutive channels into one parent.

    Args:
        x: Feature map, `(B, C, H, W)`, with C divisible by `capsule_dim`.

    Returns:
        The parents before activation, `(B, G, capsule_dim)` with `G = C // capsule_dim`, and the coupling
        coefficients, `(B, G, H, W)`.
    """
    B, C, H, W = x.shape
    if C % capsule_dim != 0:
        raise ValueError(
            f'RoutingPool2d: capsule_dim={capsule_dim} does not divide the {C} input channels of a map of shape {x.shape}.')
    groups = C // capsule_dim
    # (B, G, D, H*W) -> (B, G, N=H*W, D): children are the spatial positions of each channel group
    u = x.reshape(B, groups, capsule_dim, H * W).transpose(-1, -2)
    s, c = route_by_agreement(u, iters=iters, lam=lam, normalize=normalize)
    return s, c.reshape(B, groups, H, W)


class RoutingPool2d(nn.Module):
    """Global pooling by dynamic routing, a drop-in for timm's `SelectAdaptivePool2d`.

    `(B, C, H, W) -> (B, C)` (or `(B, C, 1, 1)` with `flatten=False`): the channels are cut into
    `G = C / capsule_dim` groups of consecutive channels; in group g the H·W spatial vectors are the children of
    that group's single parent `v_g`, and `out[:, g*D:(g+1)*D] = v_g`. No learned parameters.

    The coupling coefficients, `(B, G, H, W)`, come from `route(x)` (returns `(out, couplings)`); `forward` returns the
    pooled output only.

    Args:
        capsule_dim: Neurons per capsule D; must divide the input channels.
        iters: Routing iterations (>= 0).
        lam: λ of Formula 5 (>= 0).
        normalize: Normalise the children to unit length (Algorithm 1 line 1).
        activation: Final activation of the parent capsules: None, 'squash', 'norm' or a callable.
        flatten: Return `(B, C)` rather than `(B, C, 1, 1)`.
        input_fmt: Only 'NCHW'.
    """

    def __init__(
            self,
            capsule_dim: int = 16,
            iters: int = 1,
            lam: float = 1.0,
            normalize: bool = False,
            activation: Union[None, str, Callable[[torch.Tensor], torch.Tensor]] = None,
            flatten: bool = True,
            input_fmt: str = 'NCHW',
    ):
        super().__init__()
        if isinstance(capsule_dim, bool) or not isinstance(capsule_dim, int):
            raise TypeError(f'capsule_dim must be an int, got {capsule_dim!r} ({type(capsule_dim).__name__}).')
        if capsule_dim < 1:
            raise ValueError(f'capsule_dim must be >= 1, got {capsule_dim}.')
        _check_routing_args(iters, lam)
        if input_fmt != 'NCHW':
            raise ValueError(f"RoutingPool2d supports input_fmt='NCHW' only, got {input_fmt!r}.")
        self.pool_type = 'routing'
        self.capsule_dim = capsule_dim
        self.iters = iters
        self.lam = float(lam)
        self.normalize = bool(normalize)
        self.activation = activation if activation is None or isinstance(activation, str) else 'custom'
        self.act = create_routing_act(activation)
        self.flatten = flatten

    def is_identity(self) -> bool:
        return False

    def feat_mult(self) -> int:
        return 1

    def check_channels(self, num_channels: int) -> None:
        """Raises a ValueError when `capsule_dim` does not divide `num_channels` (call it when building a head)."""
        if num_channels % self.capsule_dim != 0:
            raise ValueError(
                f'Routing capsule_dim={self.capsule_dim} does not divide the {num_channels} feature channels; '
                f'choose a capsule size that divides {num_channels}.')

    def route(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Pools `x` and returns `(out, couplings)`, couplings `(B, G, H, W)` summing to 1 over H·W."""
        s, c = routing_pool2d(x, self.capsule_dim, self.iters, self.lam, self.normalize)
        v = self.act(s).flatten(1)
        if not self.flatten:
            v = v.unsqueeze(-1).unsqueeze(-1)
        return v, c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.route(x)[0]

    def extra_repr(self) -> str:
        return (
            f'pool_type={self.pool_type}, capsule_dim={self.capsule_dim}, iters={self.iters}, lam={self.lam}, '
            f'normalize={self.normalize}, activation={self.activation}, flatten={self.flatten}')
