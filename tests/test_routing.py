"""The routing math (Algorithm 1) and RoutingPool2d, against a loop-by-loop reference."""
import math

import pytest
import torch
import torch.nn.functional as F

from timm_routing.layers import (
    RoutingPool2d, create_global_pool, dynamic_routing, resolve_routing_args, route_by_agreement, squash,
)


def reference_routing(u, iters, lam, normalize, activation=None):
    """Algorithm 1 written out for one parent at a time in float64, as the issue states it."""
    u = u.double()
    lead = u.shape[:-2]
    flat = u.reshape(-1, *u.shape[-2:])
    vs, cs = [], []
    for children in flat:
        n = children.shape[0]
        if normalize:
            children = torch.stack([x / x.norm() if x.norm() > 0 else x for x in children])
        b = [0.0] * n
        c = torch.softmax(lam * torch.tensor(b, dtype=torch.float64), 0)
        for _ in range(iters):
            s = sum(c[i] * children[i] for i in range(n))
            v = s / s.norm() if s.norm() > 0 else s
            b = [b[i] + float(children[i] @ v) for i in range(n)]
            c = torch.softmax(lam * torch.tensor(b, dtype=torch.float64), 0)
        s = sum(c[i] * children[i] for i in range(n))
        if activation == 'squash':
            s = s.norm() ** 2 / (1 + s.norm() ** 2) * s / s.norm()
        elif activation == 'norm':
            s = s / s.norm()
        vs.append(s)
        cs.append(c)
    return torch.stack(vs).reshape(*lead, -1), torch.stack(cs).reshape(*lead, -1)


@pytest.mark.parametrize('iters', [0, 1, 2, 3])
@pytest.mark.parametrize('lam', [0.0, 0.5, 5.0])
@pytest.mark.parametrize('normalize', [False, True])
@pytest.mark.parametrize('activation', [None, 'squash', 'norm'])
def test_matches_reference(iters, lam, normalize, activation):
    torch.manual_seed(0)
    u = torch.randn(2, 3, 7, 5, dtype=torch.float64)
    v, c = dynamic_routing(u, iters=iters, lam=lam, normalize=normalize, activation=activation)
    v_ref, c_ref = reference_routing(u, iters, lam, normalize, activation)
    assert v.shape == (2, 3, 5) and c.shape == (2, 3, 7)
    torch.testing.assert_close(v, v_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(c, c_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('iters', [0, 1, 3])
def test_lambda_zero_is_exactly_average_pooling(iters):
    torch.manual_seed(1)
    x = torch.randn(4, 32, 6, 5)
    pool = RoutingPool2d(capsule_dim=8, iters=iters, lam=0.0)
    out, c = pool.route(x)
    torch.testing.assert_close(out, F.adaptive_avg_pool2d(x, 1).flatten(1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(c, torch.full_like(c, 1 / 30))


def test_large_lambda_selects_most_agreeing_child():
    # three children near (1, 0) and one outlier: at large λ the parent is the unit child that agrees best with the
    # first proposal v = norm(mean of unit children), i.e. a "vector max", never the outlier
    u = torch.tensor([[1.0, 0.1], [1.0, -0.3], [0.9, 0.0], [-2.0, 3.0]])
    un = F.normalize(u, dim=-1)
    winner = int((un @ F.normalize(un.mean(0), dim=0)).argmax())
    assert winner != 3
    for iters in (1, 2, 3):
        v, c = dynamic_routing(u, iters=iters, lam=1e4, normalize=True)
        assert c[winner] > 1 - 1e-6
        torch.testing.assert_close(v, un[winner], rtol=1e-5, atol=1e-5)


def test_large_lambda_is_vector_max_without_normalize():
    # without normalisation the agreement u·v favours long children along the consensus: the largest projection wins
    u = torch.tensor([[[3.0, 0.0], [2.9, 0.2], [0.0, 5.0], [0.1, 0.1]]])
    winner = int((u[0] @ F.normalize(u[0].mean(0), dim=0)).argmax())
    v, c = dynamic_routing(u, iters=1, lam=1e4)
    assert winner == 2
    assert c[0, winner] > 1 - 1e-6
    torch.testing.assert_close(v[0], u[0, winner])


@pytest.mark.parametrize('normalize', [False, True])
def test_couplings_sum_to_one(normalize):
    torch.manual_seed(2)
    x = torch.randn(3, 48, 7, 7)
    _, c = RoutingPool2d(capsule_dim=16, iters=3, lam=5.0, normalize=normalize).route(x)
    assert c.shape == (3, 3, 7, 7)
    torch.testing.assert_close(c.sum((-1, -2)), torch.ones(3, 3))
    assert (c >= 0).all()


def test_invariant_to_order_of_children():
    torch.manual_seed(3)
    u = torch.randn(5, 20, 8)
    perm = torch.randperm(20)
    v, c = dynamic_routing(u, iters=3, lam=5.0, normalize=True, activation='squash')
    v_p, c_p = dynamic_routing(u[:, perm], iters=3, lam=5.0, normalize=True, activation='squash')
    torch.testing.assert_close(v, v_p, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c[:, perm], c_p, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('iters', [0, 1, 2, 3])
@pytest.mark.parametrize('normalize', [False, True])
@pytest.mark.parametrize('activation', [None, 'squash', 'norm'])
def test_gradcheck_float64(iters, normalize, activation):
    torch.manual_seed(4)
    u = torch.randn(2, 6, 4, dtype=torch.float64, requires_grad=True)
    # the parent, the couplings, and both at once (the hand-written backward sums their contributions)
    assert torch.autograd.gradcheck(
        lambda t: dynamic_routing(t, iters=iters, lam=2.0, normalize=normalize, activation=activation)[0], (u,))
    assert torch.autograd.gradcheck(
        lambda t: dynamic_routing(t, iters=iters, lam=2.0, normalize=normalize)[1], (u,))
    assert torch.autograd.gradcheck(
        lambda t: sum(
            o.sum() * w for o, w in zip(dynamic_routing(t, iters=iters, lam=2.0, normalize=normalize), (1., 3.))),
        (u,))


@pytest.mark.parametrize('iters', [0, 1, 3])
@pytest.mark.parametrize('normalize', [False, True])
def test_fused_backward_matches_plain_autograd(iters, normalize):
    from timm_routing.layers.routing import _route_reference
    torch.manual_seed(9)
    x = torch.randn(3, 32, 5, 5, dtype=torch.float64)
    x[0, :16] = 0.  # a dead capsule
    weights = torch.randn(3, 32, dtype=torch.float64), torch.randn(3, 2, 5, 5, dtype=torch.float64)
    grads = []
    for fused in (True, False):
        xi = x.clone().requires_grad_(True)
        if fused:
            s, c = RoutingPool2d(16, iters=iters, lam=3.0, normalize=normalize).route(xi)
        else:
            s, c = _route_reference(xi.reshape(6, 16, 25), iters, 3.0, normalize)
            s, c = s.reshape(3, 32), c.reshape(3, 2, 5, 5)
        ((s * weights[0]).sum() + (c * weights[1]).sum()).backward()
        grads.append(xi.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-10)


def test_pool_layout_matches_groups_of_consecutive_channels():
    torch.manual_seed(5)
    x = torch.randn(2, 12, 3, 4)
    pool = RoutingPool2d(capsule_dim=4, iters=2, lam=3.0, normalize=True, activation='squash')
    out, c = pool.route(x)
    assert out.shape == (2, 12) and c.shape == (2, 3, 3, 4)
    for g in range(3):
        children = x[:, g * 4:(g + 1) * 4].flatten(2).transpose(1, 2)  # (B, H*W, D)
        v_ref, c_ref = reference_routing(children, 2, 3.0, True, 'squash')
        torch.testing.assert_close(out[:, g * 4:(g + 1) * 4].double(), v_ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(c[:, g].flatten(1).double(), c_ref, rtol=1e-5, atol=1e-6)
    assert pool(x).shape == (2, 12)
    assert RoutingPool2d(capsule_dim=4, flatten=False)(x).shape == (2, 12, 1, 1)


def test_timm_pooling_interface():
    pool = RoutingPool2d(capsule_dim=16)
    assert pool.pool_type == 'routing' and pool.feat_mult() == 1 and not pool.is_identity()
    assert sum(p.numel() for p in pool.parameters()) == 0
    assert create_global_pool('', 64).is_identity()
    assert create_global_pool('catavgmax', 64).feat_mult() == 2


@pytest.mark.parametrize('normalize', [False, True])
@pytest.mark.parametrize('activation', [None, 'squash', 'norm'])
@pytest.mark.parametrize('lam', [1.0, 1e4])
def test_zero_capsules_finite_outputs_and_gradients(normalize, activation, lam):
    x = torch.zeros(2, 32, 4, 4)
    x[1, :16] = torch.relu(torch.randn(16, 4, 4))  # one live group beside dead ones
    x.requires_grad_(True)
    out, c = RoutingPool2d(16, iters=3, lam=lam, normalize=normalize, activation=activation).route(x)
    (out.sum() + c.pow(2).sum()).backward()
    assert torch.isfinite(out).all() and torch.isfinite(c).all() and torch.isfinite(x.grad).all()
    torch.testing.assert_close(out[0], torch.zeros(32))


@pytest.mark.parametrize('lam', [100.0, 1e4])
def test_huge_lambda_finite(lam):
    torch.manual_seed(6)
    x = (torch.randn(2, 64, 8, 8) * 50).requires_grad_(True)
    out, c = RoutingPool2d(16, iters=3, lam=lam, normalize=False).route(x)
    out.square().sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(c).all() and torch.isfinite(x.grad).all()


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_low_precision_inputs(dtype):
    torch.manual_seed(7)
    x = torch.randn(2, 64, 8, 8) * 300  # sums of squares overflow float16 if computed in it
    pool = RoutingPool2d(16, iters=3, lam=5.0, normalize=True, activation='squash')
    out, c = pool.route(x.to(dtype))
    ref, c_ref = pool.route(x.to(dtype).float())
    assert out.dtype == dtype and c.dtype == dtype
    assert torch.isfinite(out).all() and torch.isfinite(c).all()
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_autocast_forward_backward_finite(dtype):
    torch.manual_seed(8)
    conv = torch.nn.Conv2d(3, 64, 3, padding=1)
    pool = RoutingPool2d(16, iters=2, lam=1e4, normalize=True, activation='squash')
    x = torch.randn(2, 3, 8, 8) * 100
    with torch.autocast('cpu', dtype=dtype):
        feats = conv(x)
        out = pool(feats)
        assert feats.dtype == dtype and out.dtype == dtype
    out.float().sum().backward()
    assert torch.isfinite(out.float()).all()
    assert all(torch.isfinite(p.grad).all() for p in conv.parameters())


def test_squash_values():
    s = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    out = squash(s)
    torch.testing.assert_close(out[0], s[0] / 5 * 25 / 26)
    torch.testing.assert_close(out[1], torch.zeros(2))


def test_callable_activation():
    u = torch.randn(3, 5, 4)
    v, _ = dynamic_routing(u, activation=torch.tanh)
    v_id, _ = dynamic_routing(u)
    torch.testing.assert_close(v, torch.tanh(v_id))


@pytest.mark.parametrize('kwargs, match', [
    (dict(capsule_dim=5), 'capsule_dim=5 does not divide the 32'),
    (dict(capsule_dim=0), 'capsule_dim must be >= 1, got 0'),
    (dict(iters=-1), 'iterations must be >= 0, got -1'),
    (dict(lam=-0.5), 'lambda must be finite and >= 0, got -0.5'),
    (dict(lam=math.inf), 'lambda must be finite'),
    (dict(activation='relu'), "Unknown routing activation 'relu'"),
    (dict(input_fmt='NCL'), "input_fmt must be 'NCHW' or 'NHWC', got 'NCL'"),
])
def test_bad_configuration_raises_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pool = RoutingPool2d(**{'capsule_dim': 16, **kwargs})
        pool(torch.randn(1, 32, 4, 4))


@pytest.mark.parametrize('flatten', [True, False])
def test_channels_last_input_routes_the_same_capsules(flatten):
    torch.manual_seed(0)
    x = torch.randn(2, 32, 3, 5)
    nchw = RoutingPool2d(capsule_dim=8, iters=2, lam=3.0, normalize=True, flatten=flatten)
    nhwc = RoutingPool2d(capsule_dim=8, iters=2, lam=3.0, normalize=True, flatten=flatten, input_fmt='NHWC')
    expected, expected_c = nchw.route(x)
    out, couplings = nhwc.route(x.permute(0, 2, 3, 1))
    assert out.shape == ((2, 32) if flatten else (2, 1, 1, 32))  # the layout of timm's pools on NHWC maps
    torch.testing.assert_close(out.reshape(2, 32), expected.reshape(2, 32))
    torch.testing.assert_close(couplings, expected_c)


@pytest.mark.parametrize('kwargs', [dict(iters=1.5), dict(capsule_dim='16'), dict(lam='5'), dict(activation=3)])
def test_bad_types_raise_type_error(kwargs):
    with pytest.raises(TypeError):
        RoutingPool2d(**{'capsule_dim': 16, **kwargs})


def test_bad_inputs_of_dynamic_routing():
    with pytest.raises(ValueError, match=r'\(\.\.\., N, D\)'):
        dynamic_routing(torch.randn(5))
    with pytest.raises(ValueError, match='iterations must be >= 0, got -2'):
        dynamic_routing(torch.randn(2, 3, 4), iters=-2)
    with pytest.raises(ValueError, match='routing capsule_dim must be a positive int, got 0'):
        resolve_routing_args(capsule_dim=0)
    with pytest.raises(ValueError, match="Unknown global_pool 'mean'"):
        create_global_pool('mean', 64)
    with pytest.raises(ValueError, match='capsule_dim=24 does not divide the 64 feature channels'):
        create_global_pool('routing', 64, dict(capsule_dim=24))


def test_route_by_agreement_scripts():
    scripted = torch.jit.script(RoutingPool2d(8, iters=2, lam=3.0, normalize=True, activation='squash'))
    x = torch.randn(2, 16, 5, 5)
    torch.testing.assert_close(scripted(x), RoutingPool2d(8, iters=2, lam=3.0, normalize=True, activation='squash')(x))
    with pytest.raises(Exception, match='does not divide'):
        scripted(torch.randn(2, 12, 5, 5))


def test_child_norms_by_slabs_match_vector_norm(monkeypatch):
    from timm_routing.layers import routing
    monkeypatch.setattr(routing, '_SLAB_ELEMENTS', 50)  # 3 rows of 3 x 5 per slab: slabs and a short last one
    u = torch.randn(10, 3, 5, dtype=torch.float64) * 300
    expected = torch.linalg.vector_norm(u, dim=1)
    torch.testing.assert_close(routing._child_norms(u, torch.float64), expected)
    # half input: squared in float32, so lengths of 300 (squares beyond float16's range) stay finite
    half = routing._child_norms(u.half(), torch.float32)
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    torch.testing.assert_close(half, expected.float(), rtol=2e-3, atol=1e-2)
