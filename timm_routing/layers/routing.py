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

Numerics: the couplings, agreements and proposals (tensors of size N or D) are float32 whatever the input dtype or
autocast state (float64 stays float64); the matrix products that read the children run in the children's own dtype,
outside autocast, and their small results are taken back to float32. Zero vectors (dead ReLU maps) are normalised with
an epsilon floor so outputs and gradients stay finite; the softmax subtracts its maximum, so λ up to 1e4 is safe.

Speed: eager calls run `_RoutingFunction`, whose backward reads the feature map once per read of the forward and
writes the gradient once; TorchScript runs the same math with plain autograd (`_route_reference`). With
`TIMM_ROUTING_TRITON=1`, CUDA tensors go to the fused Triton kernels of `routing_triton.py` instead (opt-in: checked
in Triton's interpreter and, compiled, on one H200 with Triton 3.6; see that module).
"""
import contextlib
import math
import os
from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from timm.layers import register_notrace_function

__all__ = [
    'ROUTING_ACTIVATIONS', 'route_by_agreement', 'route_over_parents', 'dynamic_routing', 'routing_pool2d', 'squash',
    'vector_norm',
    'Squash', 'VectorNorm', 'create_routing_act', 'RoutingPool2d',
]

ROUTING_ACTIVATIONS = (None, 'identity', 'squash', 'norm')
_EPS = 1e-12


def squash(s: torch.Tensor, dim: int = -1, eps: float = _EPS) -> torch.Tensor:
    """Squash non-linearity of Sabour et al. 2017: `‖s‖² / (1 + ‖s‖²) · s / ‖s‖`.

    Written as `s · ‖s‖ / (1 + ‖s‖²)` with an epsilon inside the square root, so the gradient at `s = 0` is
    finite.
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


def _route_reference(u: torch.Tensor, iters: int, lam: float, normalize: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1 on children laid out `(M, D, N)`, with plain autograd (the TorchScript path)."""
    work_dtype = torch.promote_types(u.dtype, torch.float32)
    u = u.to(work_dtype)
    if normalize:
        u = vector_norm(u, dim=1)
    c = torch.full((u.shape[0], u.shape[2]), 1. / u.shape[2], dtype=work_dtype, device=u.device)
    b = torch.zeros_like(c)
    for _ in range(iters):
        v = vector_norm((u * c.unsqueeze(1)).sum(2))
        b = b + (u * v.unsqueeze(2)).sum(1)
        c = torch.softmax(lam * b, dim=-1)
    return (u * c.unsqueeze(1)).sum(2), c


def _autocast_off(device: torch.device):
    """Context without autocast on `device` (a no-op where autocast does not exist, e.g. the meta device)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


_SLAB_ELEMENTS = 1 << 21  # rows of `u` per slab in `_child_norms`: about 8 MB of float32


def _child_norms(u: torch.Tensor, work_dtype: torch.dtype) -> torch.Tensor:
    """`‖u[m, :, n]‖`: `(M, D, N) -> (M, N)` in `work_dtype`.

    On CPU, `torch.linalg.vector_norm` over the middle dimension runs a strided kernel many times slower than a pass
    over the data (torch 2.14; see docs/benchmarks.md); a sum of squares over slabs of rows takes one pass and a
    slab-sized temporary. Traced and compiled graphs keep `vector_norm` (no shape-dependent loop).
    """
    if u.device.type != 'cpu' or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return torch.linalg.vector_norm(u, dim=1, dtype=work_dtype)
    out = torch.empty(u.shape[0], u.shape[2], dtype=work_dtype, device=u.device)
    rows = max(1, _SLAB_ELEMENTS // max(1, u.shape[1] * u.shape[2]))
    for start in range(0, u.shape[0], rows):
        slab = u[start:start + rows].to(work_dtype)
        torch.sum(slab * slab, dim=1, out=out[start:start + rows])
    return out.sqrt_()


def _contract_children(u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """`Σ_n w[m, n] u[m, :, n]`: `(M, D, N), (M, N) -> (M, D)`, in `u`'s dtype.

    Written as `wᵀ uᵀ`, which batched BLAS runs about twice as fast as `u w` on these thin matrices."""
    return torch.bmm(w.to(u.dtype).unsqueeze(1), u.transpose(1, 2)).squeeze(1)


class _RoutingFunction(torch.autograd.Function):
    """Algorithm 1 on children laid out `(M, D, N)`, with a hand-written backward that reads the feature map once per
    read of the forward and writes its gradient once.

    The children enter the routing only through matrix-vector products, `s_k = u w_k` and `a_k = v_kᵀ u` (plus the
    norms `‖u_n‖` when normalising), so `∂L/∂u = Σ_k g_k ⊗ h_k` (plus a column scaling of `u`); the backward
    collects the K = 2·iters + 1 pairs `(g_k, h_k)` while it walks the iterations back on `(M, D)` and `(M, N)`
    tensors, then writes `∂L/∂u` with one batched product `(M, D, K) @ (M, K, N)`.
    Small tensors are float32 (float64 stays float64); products with `u` run in `u`'s dtype, outside autocast.
    """

    @staticmethod
    def forward(ctx, u: torch.Tensor, iters: int, lam: float, normalize: bool):
        ctx.set_materialize_grads(False)  # an unused output (often the couplings) gets no zero gradient to add
        work_dtype = torch.promote_types(u.dtype, torch.float32)
        num_children = u.shape[2]
        with _autocast_off(u.device):
            inv = _child_norms(u, work_dtype).clamp_min(_EPS).reciprocal() if normalize else None
            c = torch.full((u.shape[0], num_children), 1. / num_children, dtype=work_dtype, device=u.device)
            b = None  # b = 0 before the first iteration
            per_iter = []
            for _ in range(iters):
                w = c * inv if normalize else c
                s = _contract_children(u, w).to(work_dtype)
                s_norm = torch.linalg.vector_norm(s, dim=1, keepdim=True)
                v = s / s_norm.clamp_min(_EPS)
                a_raw = torch.bmm(v.to(u.dtype).unsqueeze(1), u).squeeze(1).to(work_dtype)
                a = a_raw * inv if normalize else a_raw
                b = a if b is None else b + a
                c = torch.softmax(lam * b, dim=-1)
                per_iter += [w, s_norm, v, a_raw, c]
            w = c * inv if normalize else c
            s = _contract_children(u, w)
        # `inv` is unused without normalisation; `w` stands in for it so the saved list keeps one layout
        ctx.save_for_backward(u, inv if normalize else w, w, *per_iter)
        ctx.iters, ctx.lam, ctx.normalize = iters, lam, normalize
        return s, c.to(u.dtype)

    @staticmethod
    def backward(ctx, grad_s: Optional[torch.Tensor], grad_c: Optional[torch.Tensor]):
        u, inv, w_final, *per_iter = ctx.saved_tensors
        iters, lam, normalize = ctx.iters, ctx.lam, ctx.normalize
        work_dtype = torch.promote_types(u.dtype, torch.float32)
        uniform = torch.full_like(w_final, 1. / u.shape[2])  # c_0
        with _autocast_off(u.device):
            # an expanded gradient would send bmm down a per-matrix path: make it contiguous
            g_s = grad_s.to(work_dtype).contiguous() if grad_s is not None \
                else torch.zeros_like(u[:, :, 0], dtype=work_dtype)
            g_c = grad_c.to(work_dtype) if grad_c is not None else None
            left, right = [g_s], [w_final]  # dL/du = sum of left_k ⊗ right_k (+ the norm term)
            g_inv = None
            if grad_s is not None and (iters > 0 or normalize):  # with neither, the final couplings are constant
                g_w = torch.bmm(g_s.to(u.dtype).unsqueeze(1), u).squeeze(1).to(work_dtype)
                if normalize:
                    g_inv = g_w * (per_iter[-1] if iters > 0 else uniform)
                    g_w = g_w * inv
                g_c = g_w if g_c is None else g_c + g_w
            g_b = None  # dL/db_{k+1}, carried down the iterations
            for k in range(iters - 1, -1, -1):
                w, s_norm, v, a_raw, c_next = per_iter[5 * k:5 * k + 5]
                # c_{k+1} = softmax(λ b_{k+1}); b_{k+1} = b_k + a_k
                if g_c is not None:
                    g_soft = lam * torch.ops.aten._softmax_backward_data(g_c, c_next, 1, work_dtype)
                    g_b = g_soft if g_b is None else g_b + g_soft
                if g_b is None:
                    continue  # nothing upstream depends on the couplings
                g_a_raw = g_b * inv if normalize else g_b
                if normalize:
                    g_inv = g_b * a_raw if g_inv is None else g_inv + g_b * a_raw
                # a_raw_k = v_kᵀ u
                left.append(v)
                right.append(g_a_raw)
                g_v = _contract_children(u, g_a_raw).to(work_dtype)
                # v_k = s_k / max(‖s_k‖, eps): the projection applies only where the norm is above the floor
                safe_norm = s_norm.clamp_min(_EPS)
                v_proj = v * (s_norm > _EPS).to(work_dtype)
                g_s_k = (g_v - v_proj * (v * g_v).sum(1, keepdim=True)) / safe_norm
                # s_k = u w_k with w_k = c_k (· inv); c_0 is the constant 1/N
                left.append(g_s_k)
                right.append(w)
                g_c = None
                if k > 0 or normalize:
                    g_w = torch.bmm(g_s_k.to(u.dtype).unsqueeze(1), u).squeeze(1).to(work_dtype)
                    if normalize:
                        g_inv = g_inv + g_w * (per_iter[5 * k - 1] if k > 0 else uniform)
                        g_w = g_w * inv
                    g_c = g_w
            # stacked along dim 1, each (M, D) / (M, N) is one contiguous block per matrix: a cheap copy
            lhs = torch.stack(left, dim=1).to(u.dtype).transpose(1, 2)  # (M, D, K)
            rhs = torch.stack(right, dim=1).to(u.dtype)  # (M, K, N)
            grad_u = torch.bmm(lhs, rhs)
            if normalize and g_inv is not None:
                # inv_n = 1 / max(‖u_n‖, eps): d inv_n / d u_n = -inv_n³ u_n where ‖u_n‖ > eps; added in place, so no
                # second map-sized tensor is allocated
                coef = -g_inv * inv.pow(3) * (inv < 1. / _EPS).to(work_dtype)
                grad_u.addcmul_(u, coef.to(u.dtype).unsqueeze(1))
        return grad_u, None, None, None


@torch.jit.unused
def _route_fused(u: torch.Tensor, iters: int, lam: float, normalize: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    if u.is_cuda and os.environ.get('TIMM_ROUTING_TRITON', '0') == '1':  # opt-in fused kernels (routing_triton.py)
        from .routing_triton import route_triton, triton_routing_enabled
        if triton_routing_enabled(u):
            return route_triton(u, iters, lam, normalize)
    return _RoutingFunction.apply(u, iters, lam, normalize)


def _route_channels_first(
        u: torch.Tensor, iters: int, lam: float, normalize: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Routes children laid out `(M, D, N)`; returns `s` `(M, D)` and `c` `(M, N)` in `u`'s dtype."""
    if torch.jit.is_scripting():
        s, c = _route_reference(u, iters, lam, normalize)
        return s.to(u.dtype), c.to(u.dtype)
    return _route_fused(u, iters, lam, normalize)


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
    lead = u.shape[:-2]
    num_children, dim = u.shape[-2], u.shape[-1]
    s, c = _route_channels_first(u.transpose(-1, -2).reshape(-1, dim, num_children), iters, lam, normalize)
    return s.reshape(list(lead) + [dim]), c.reshape(list(lead) + [num_children])


def dynamic_routing(
        u: torch.Tensor,
        iters: int = 1,
        lam: float = 1.0,
        normalize: bool = False,
        activation: Union[None, str, Callable[[torch.Tensor], torch.Tensor]] = None,
        softmax_over: str = 'children',
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Vector-normed dynamic routing (Algorithm 1) of N children into one parent per leading index.

    `softmax_over='parents'` is Sabour et al.'s original routing instead (the CapsNet baseline): `u` is then
    `(..., J, N, D)`, the votes of N children for J parents; the softmax runs over the J parents (Formula 2), the
    proposal inside the loop is the activated parent (squash in Sabour) and `iters` counts, as Sabour's r does, the
    parents computed (r - 1 agreement updates; r = 3 in their experiments).

    Args:
        u: Children, `(..., N, D)`.
        iters: Routing iterations `r` (>= 0).
        lam: λ of Formula 5 (>= 0).
        normalize: Normalise the children to unit length first (Algorithm 1 line 1). With `normalize=False` and
            `lam=0` the result is exactly the average of the children.
        activation: Line 11: `None` (identity), `'squash'`, `'norm'` or a callable.
        softmax_over: 'children' (this paper, Formula 3) or 'parents' (Sabour et al., Formula 2).

    Returns:
        `(v, c)`: the parent `(..., D)` and the coupling coefficients `(..., N)` (softmax over children: they sum to 1
        over N), or with `softmax_over='parents'` the parents `(..., J, D)` and couplings `(..., J, N)` summing to 1
        over J.

    Raises:
        ValueError / TypeError: bad iterations, λ, activation or a `u` with fewer than 2 dims or no children.
    """
    _check_routing_args(iters, lam)
    act = create_routing_act(activation)
    if not isinstance(u, torch.Tensor):
        raise TypeError(f'u must be a tensor, got {type(u).__name__}.')
    if u.dim() < 2 or u.shape[-2] == 0:
        raise ValueError(f'u must be (..., N, D) with N >= 1 children, got shape {tuple(u.shape)}.')
    if softmax_over == 'parents':
        if u.dim() < 3 or iters < 1:
            raise ValueError(
                f"softmax_over='parents' needs votes (..., J, N, D) and iters >= 1, got shape {tuple(u.shape)}, "
                f"iters={iters}.")
        if activation not in (None, 'identity', 'squash', 'norm'):
            raise ValueError(
                f"softmax_over='parents' takes activation None, 'identity', 'squash' or 'norm', got {activation!r}.")
        return route_over_parents(u, iters, lam, normalize, activation or 'identity')
    if softmax_over != 'children':
        raise ValueError(f"softmax_over must be 'children' or 'parents', got {softmax_over!r}.")
    s, c = route_by_agreement(u, iters=iters, lam=lam, normalize=normalize)
    return act(s), c


def route_over_parents(
        u: torch.Tensor, iters: int = 3, lam: float = 1.0, normalize: bool = False, activation: str = 'squash',
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sabour et al.'s routing of votes `(..., J, N, D)`: softmax over the J parents, `iters` parents computed.

    The activation ('squash', 'norm' or 'identity') is applied to the proposals and to the result, as in Sabour's
    Procedure 1. Plain autograd; works under TorchScript. `dynamic_routing(..., softmax_over='parents')` calls it.

    Returns:
        Parents `(..., J, D)` and couplings `(..., J, N)`, both in `u`'s dtype.
    """
    dtype = u.dtype
    u = u.to(torch.promote_types(dtype, torch.float32))
    if normalize:
        u = vector_norm(u)
    b = torch.zeros(u.shape[:-1], dtype=u.dtype, device=u.device)
    c, v = b, u.select(-2, 0)  # placeholders for TorchScript; iters >= 1 overwrites both
    for r in range(iters):
        c = torch.softmax(lam * b, dim=-2)
        v = (c.unsqueeze(-1) * u).sum(-2)
        if activation == 'squash':
            v = squash(v)
        elif activation == 'norm':
            v = vector_norm(v)
        if r < iters - 1:
            b = b + (u * v.unsqueeze(-2)).sum(-1)
    return v.to(dtype), c.to(dtype)


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
            f'RoutingPool2d: capsule_dim={capsule_dim} does not divide the {C} input channels '
            f'of a map of shape {x.shape}.')
    groups = C // capsule_dim
    # (B, C, H, W) -> (B*G, D, H*W), a view: the children of each group are its spatial positions
    s, c = _route_channels_first(x.reshape(B * groups, capsule_dim, H * W), iters, lam, normalize)
    s = s.reshape(B, groups, capsule_dim)
    return s, c.reshape(B, groups, H, W)


class RoutingPool2d(nn.Module):
    """Global pooling by dynamic routing, a drop-in for timm's `SelectAdaptivePool2d`.

    `(B, C, H, W) -> (B, C)` (or `(B, C, 1, 1)` with `flatten=False`; `(B, H, W, C) -> (B, C)` or `(B, 1, 1, C)` with
    `input_fmt='NHWC'`): the channels are cut into
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
        input_fmt: 'NCHW', or 'NHWC' for channels-last feature maps (timm's Swin, MaxViT-style stages, Sequencer):
            the same capsules of consecutive channels, read from the last dimension.
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
        if input_fmt not in ('NCHW', 'NHWC'):
            raise ValueError(f"RoutingPool2d input_fmt must be 'NCHW' or 'NHWC', got {input_fmt!r}.")
        self.pool_type = 'routing'
        self.capsule_dim = capsule_dim
        self.iters = iters
        self.lam = float(lam)
        self.normalize = bool(normalize)
        self.activation = activation if activation is None or isinstance(activation, str) else 'custom'
        self.act = create_routing_act(activation)
        self.flatten = flatten
        self.input_fmt = input_fmt

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
        if self.input_fmt == 'NHWC':
            x = x.permute(0, 3, 1, 2)
        s, c = routing_pool2d(x, self.capsule_dim, self.iters, self.lam, self.normalize)
        v = self.act(s).flatten(1)
        if not self.flatten:  # keep the input's layout, as timm's pools do
            v = v.unsqueeze(1).unsqueeze(1) if self.input_fmt == 'NHWC' else v.unsqueeze(-1).unsqueeze(-1)
        return v, c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.route(x)[0]

    def extra_repr(self) -> str:
        return (
            f'pool_type={self.pool_type}, capsule_dim={self.capsule_dim}, iters={self.iters}, lam={self.lam}, '
            f'normalize={self.normalize}, activation={self.activation}, flatten={self.flatten}'
            + ('' if self.input_fmt == 'NCHW' else f', input_fmt={self.input_fmt}'))
