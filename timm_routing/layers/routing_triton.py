""" A fused Triton kernel for the routing of `route_by_agreement`: one launch forward, one backward

The PyTorch path (`_RoutingFunction` in `routing.py`) runs Algorithm 1 as a dozen batched matrix products and
element-wise ops per call; on a GPU, with small feature maps (ResNet-20's 8x8, ImageNet's 7x7), those launches cost
more than their arithmetic. Here one Triton program routes one row (the `D x N` children of one capsule group of one
image) entirely in registers: forward writes `s` and `c` and saves nothing but the input; backward recomputes the
iterations it needs and accumulates `∂L/∂u` in registers, one write. The math is the PyTorch backward's, term for term
(see `_RoutingFunction`), so the two agree to float32 rounding.

Status: checked against the PyTorch path in Triton's interpreter (`TRITON_INTERPRET=1`, on CPU tensors, Triton 3.6 and
3.8) by `tests/test_routing_triton.py`, and compiled, on CUDA tensors, by the same test's CUDA case on an NVIDIA H200
(Triton 3.6, `docs/benchmarks-gpu-h200-triton-cuda-check.txt`), where it was also timed (docs/benchmarks.md). One GPU
and one Triton release have checked it, and the backward once compiled under one release and not another, so it is
opt-in: set `TIMM_ROUTING_TRITON=1` to route CUDA tensors through it (rows of at most `MAX_TILE` children x neurons;
larger ones and everything else take the PyTorch path).
"""
import os
from typing import Tuple

import torch
import triton
import triton.language as tl

from .routing import _EPS

__all__ = ['route_triton', 'triton_routing_enabled', 'MAX_TILE']

MAX_TILE = 16384  # BLOCK_D * BLOCK_N elements held by one program


def triton_routing_enabled(u: torch.Tensor) -> bool:
    """Whether `route_by_agreement` sends `u` `(M, D, N)` to the Triton kernel: opted in, CUDA, a float dtype the
    kernel reads, a row that fits one program."""
    return (os.environ.get('TIMM_ROUTING_TRITON', '0') == '1' and u.is_cuda
            and u.dtype in (torch.float32, torch.float16, torch.bfloat16)
            and triton.next_power_of_2(u.shape[1]) * triton.next_power_of_2(u.shape[2]) <= MAX_TILE)


@triton.jit
def _load_row(u_ptr, row, D, N, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask = (offs_d[:, None] < D) & (offs_n[None, :] < N)
    u = tl.load(u_ptr + row * D * N + offs_d[:, None] * N + offs_n[None, :], mask=mask, other=0.).to(tl.float32)
    return u, offs_d, offs_n, mask


@triton.jit
def _inverse_norms(u, valid_n, NORMALIZE: tl.constexpr, eps):
    """1 / max(‖u_n‖, eps) per child when normalising, else 1; 0 for padding."""
    if NORMALIZE:
        inv = 1. / tl.maximum(tl.sqrt(tl.sum(u * u, axis=0)), eps)
    else:
        inv = tl.full(valid_n.shape, 1., tl.float32)
    return tl.where(valid_n, inv, 0.)


@triton.jit
def _iteration(u, c, b, inv, valid_n, lam, eps):
    """One routing iteration from couplings `c` and logits `b`: returns w, ‖s‖, v, a_raw, the new b and c."""
    w = c * inv
    s = tl.sum(u * w[None, :], axis=1)
    s_norm = tl.sqrt(tl.sum(s * s, axis=0))
    v = s / tl.maximum(s_norm, eps)
    a_raw = tl.sum(u * v[:, None], axis=0)
    b = b + a_raw * inv
    logits = tl.where(valid_n, lam * b, float('-inf'))
    e = tl.exp(logits - tl.max(logits, axis=0))
    e = tl.where(valid_n, e, 0.)
    return w, s_norm, v, a_raw, b, e / tl.sum(e, axis=0)


@triton.jit
def _routing_fwd_kernel(u_ptr, s_ptr, c_ptr, D, N, lam, eps, ITERS: tl.constexpr, NORMALIZE: tl.constexpr,
                        BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    row = tl.program_id(0)
    u, offs_d, offs_n, mask = _load_row(u_ptr, row, D, N, BLOCK_D, BLOCK_N)
    valid_n = offs_n < N
    inv = _inverse_norms(u, valid_n, NORMALIZE, eps)
    c = tl.where(valid_n, 1. / N, 0.)
    b = tl.zeros((BLOCK_N,), tl.float32)
    for _ in tl.static_range(ITERS):
        w, s_norm, v, a_raw, b, c = _iteration(u, c, b, inv, valid_n, lam, eps)
    s = tl.sum(u * (c * inv)[None, :], axis=1)
    tl.store(s_ptr + row * D + offs_d, s.to(s_ptr.dtype.element_ty), mask=offs_d < D)
    tl.store(c_ptr + row * N + offs_n, c.to(c_ptr.dtype.element_ty), mask=valid_n)


@triton.jit
def _routing_bwd_kernel(u_ptr, gs_ptr, gc_ptr, gu_ptr, D, N, lam, eps, ITERS: tl.constexpr, NORMALIZE: tl.constexpr,
                        BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    row = tl.program_id(0)
    u, offs_d, offs_n, mask = _load_row(u_ptr, row, D, N, BLOCK_D, BLOCK_N)
    valid_n = offs_n < N
    valid_d = offs_d < D
    inv = _inverse_norms(u, valid_n, NORMALIZE, eps)
    uniform = tl.where(valid_n, 1. / N, 0.)
    g_s = tl.load(gs_ptr + row * D + offs_d, mask=valid_d, other=0.).to(tl.float32)
    g_c = tl.load(gc_ptr + row * N + offs_n, mask=valid_n, other=0.).to(tl.float32)
    # the final couplings c_R (recomputed)
    c = uniform
    b = tl.zeros((BLOCK_N,), tl.float32)
    for _ in tl.static_range(ITERS):
        w, s_norm, v, a_raw, b, c = _iteration(u, c, b, inv, valid_n, lam, eps)
    # s = u w_R, w_R = c_R · inv
    grad_u = g_s[:, None] * (c * inv)[None, :]
    g_w = tl.sum(u * g_s[:, None], axis=0)
    g_inv = g_w * c
    if NORMALIZE:
        g_w = g_w * inv
    g_c = g_c + g_w
    g_b = tl.zeros((BLOCK_N,), tl.float32)
    # k counts down as the loop variable itself: a name assigned from constexpr arithmetic becomes a runtime
    # tensor in Triton 3.6, which static_range refuses (seen on the H200's Triton 3.6.0; 3.8 keeps it constexpr)
    for k in tl.static_range(ITERS - 1, -1, -1):
        # recompute iteration k: c_k, b_k -> w_k, ‖s_k‖, v_k, a_raw_k, c_{k+1}
        c_k = uniform
        b = tl.zeros((BLOCK_N,), tl.float32)
        for _ in tl.static_range(k):
            w, s_norm, v, a_raw, b, c_k = _iteration(u, c_k, b, inv, valid_n, lam, eps)
        w, s_norm, v, a_raw, b, c_next = _iteration(u, c_k, b, inv, valid_n, lam, eps)
        # c_{k+1} = softmax(λ b_{k+1}), b_{k+1} = b_k + a_raw_k · inv
        g_b = g_b + lam * c_next * (g_c - tl.sum(g_c * c_next, axis=0))
        g_a_raw = g_b * inv
        if NORMALIZE:
            g_inv = g_inv + g_b * a_raw
        # a_raw_k = v_kᵀ u
        grad_u += v[:, None] * g_a_raw[None, :]
        g_v = tl.sum(u * g_a_raw[None, :], axis=1)
        # v_k = s_k / max(‖s_k‖, eps): the projection applies only where the norm is above the floor
        v_proj = tl.where(s_norm > eps, v, 0.)
        g_s_k = (g_v - v_proj * tl.sum(v * g_v, axis=0)) / tl.maximum(s_norm, eps)
        # s_k = u w_k
        grad_u += g_s_k[:, None] * w[None, :]
        g_w = tl.sum(u * g_s_k[:, None], axis=0)
        g_inv = g_inv + g_w * c_k
        if NORMALIZE:
            g_w = g_w * inv
        g_c = g_w
    if NORMALIZE:
        # inv_n = 1 / max(‖u_n‖, eps): d inv_n / d u_n = -inv_n³ u_n where ‖u_n‖ > eps
        coef = tl.where(inv < 1. / eps, -g_inv * inv * inv * inv, 0.)
        grad_u += u * coef[None, :]
    tl.store(gu_ptr + row * D * N + offs_d[:, None] * N + offs_n[None, :], grad_u.to(gu_ptr.dtype.element_ty),
             mask=mask)


def _launch_args(u: torch.Tensor):
    rows, dim, num_children = u.shape
    block_d, block_n = triton.next_power_of_2(dim), triton.next_power_of_2(num_children)
    num_warps = 1 if block_d * block_n <= 2048 else 4
    return (rows,), dict(BLOCK_D=block_d, BLOCK_N=block_n, num_warps=num_warps)


class _TritonRoutingFunction(torch.autograd.Function):
    """Algorithm 1 on children `(M, D, N)` with the fused kernels; saves only `u`."""

    @staticmethod
    def forward(ctx, u: torch.Tensor, iters: int, lam: float, normalize: bool):
        u = u.contiguous()
        rows, dim, num_children = u.shape
        s = torch.empty((rows, dim), dtype=u.dtype, device=u.device)
        c = torch.empty((rows, num_children), dtype=u.dtype, device=u.device)
        grid, meta = _launch_args(u)
        _routing_fwd_kernel[grid](u, s, c, dim, num_children, float(lam), _EPS, ITERS=iters, NORMALIZE=normalize,
                                  **meta)
        ctx.save_for_backward(u)
        ctx.iters, ctx.lam, ctx.normalize = iters, lam, normalize
        return s, c

    @staticmethod
    def backward(ctx, grad_s, grad_c):
        u, = ctx.saved_tensors
        rows, dim, num_children = u.shape
        grad_s = torch.zeros((rows, dim), dtype=u.dtype, device=u.device) if grad_s is None else grad_s.contiguous()
        grad_c = torch.zeros((rows, num_children), dtype=u.dtype, device=u.device) if grad_c is None \
            else grad_c.contiguous()
        grad_u = torch.empty_like(u)
        grid, meta = _launch_args(u)
        _routing_bwd_kernel[grid](u, grad_s, grad_c, grad_u, dim, num_children, float(ctx.lam), _EPS,
                                  ITERS=ctx.iters, NORMALIZE=ctx.normalize, **meta)
        return grad_u, None, None, None


def route_triton(u: torch.Tensor, iters: int, lam: float, normalize: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """`_route_channels_first` through the fused kernels: children `(M, D, N)` -> `s` `(M, D)`, `c` `(M, N)`, in
    `u`'s dtype (float32 inside). Needs a CUDA tensor, or a CPU tensor under `TRITON_INTERPRET=1`."""
    rows, dim, num_children = u.shape
    if triton.next_power_of_2(dim) * triton.next_power_of_2(num_children) > MAX_TILE:
        raise ValueError(f'route_triton: a row of {dim} x {num_children} children exceeds one program '
                         f'({MAX_TILE} elements after padding to powers of 2); use the PyTorch path.')
    return _TritonRoutingFunction.apply(u, iters, lam, normalize)
