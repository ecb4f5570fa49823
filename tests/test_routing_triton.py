"""The fused Triton routing kernels against the PyTorch path (`_RoutingFunction`): in Triton's interpreter on CPU
tensors (`TRITON_INTERPRET=1`, set before triton compiles anything, hence the subprocess), and compiled on CUDA
tensors where a GPU is present (skipped otherwise). Speed is `scripts/benchmark_heads.py`'s business
(`TIMM_ROUTING_TRITON=1`)."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

triton = pytest.importorskip('triton')

_CHECK = textwrap.dedent('''
    import itertools, os, sys
    device = sys.argv[1]
    if device == 'cpu':
        os.environ['TRITON_INTERPRET'] = '1'
    import torch
    from timm_routing.layers.routing import _RoutingFunction
    from timm_routing.layers.routing_triton import route_triton
    torch.manual_seed(0)
    cases = 0

    def close_grads(grad, ref):
        # the dead child's gradient holds inv = 1 / eps = 1e12 terms that cancel in float32: relative agreement there
        torch.testing.assert_close(grad[:, :, 2:], ref[:, :, 2:], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(grad[:, :, :2], ref[:, :, :2], rtol=1e-3, atol=1e-4)

    for iters, normalize, lam, (rows, dim, n) in itertools.product(
            (0, 1, 2, 3), (False, True), (0., 0.5, 5.), ((3, 16, 64), (5, 6, 10), (2, 3, 49))):
        u = torch.randn(rows, dim, n, device=device).relu_()
        u[-1, :, 1] = 0  # a dead child: the epsilon floor of the norms
        u[0, :, :] = 0 if rows > 3 else u[0]  # a dead row: s = 0, the projection of v is switched off
        ref, fused = u.clone().requires_grad_(), u.clone().requires_grad_()
        s_ref, c_ref = _RoutingFunction.apply(ref, iters, lam, normalize)
        s, c = route_triton(fused, iters, lam, normalize)
        torch.testing.assert_close(s, s_ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(c, c_ref, rtol=1e-4, atol=1e-6)
        g_s, g_c = torch.randn_like(s), torch.randn_like(c)
        torch.autograd.backward((s_ref, c_ref), (g_s, g_c))
        torch.autograd.backward((s, c), (g_s, g_c))
        close_grads(fused.grad, ref.grad)
        # only the parent used (the pooling head): the couplings get no gradient
        ref.grad = fused.grad = None
        _RoutingFunction.apply(ref, iters, lam, normalize)[0].mul(g_s).sum().backward()
        route_triton(fused, iters, lam, normalize)[0].mul(g_s).sum().backward()
        close_grads(fused.grad, ref.grad)
        cases += 1
    u = torch.randn(4, 16, 49, device=device).relu_().half()
    s, c = route_triton(u, 2, 5., False)
    s_ref, c_ref = _RoutingFunction.apply(u.float(), 2, 5., False)
    assert s.dtype == c.dtype == torch.float16
    torch.testing.assert_close(s.float(), s_ref, rtol=2e-3, atol=2e-3)
    try:
        route_triton(torch.zeros(1, 128, 256, device=device), 1, 1., False)
    except ValueError as e:
        assert '128 x 256' in str(e)
    else:
        raise AssertionError('an oversized row must raise')
    print('cases', cases)
''')


@pytest.mark.parametrize('device', [
    'cpu', pytest.param('cuda', marks=pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device'))])
def test_fused_kernels_match_the_pytorch_routing(device):
    env = dict(os.environ)
    if device == 'cpu':
        env['TRITON_INTERPRET'] = '1'  # the interpreter; on CUDA the kernels are compiled
    proc = subprocess.run([sys.executable, '-c', _CHECK, device], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'cases 72' in proc.stdout


def test_cpu_tensors_keep_the_pytorch_path_when_opted_in(monkeypatch):
    from timm_routing.layers.routing import route_by_agreement
    from timm_routing.layers.routing_triton import triton_routing_enabled
    monkeypatch.setenv('TIMM_ROUTING_TRITON', '1')
    u = torch.randn(2, 3, 5, 4)
    assert not triton_routing_enabled(u.reshape(6, 4, 5))
    s, c = route_by_agreement(u, iters=2, lam=1.)
    assert s.shape == (2, 3, 4) and torch.allclose(c.sum(-1), torch.ones(2, 3))
