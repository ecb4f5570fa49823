"""torch.compile without graph breaks, and ONNX export checked with onnxruntime."""
import pytest
import torch

import timm

from timm_routing.layers import RoutingPool2d

ROUTING_CASES = [
    ('resnet20_routing', {}, (3, 32, 32)),
    ('convnet4_routing', dict(routing_iters=3, routing_normalize=True, routing_activation='squash'), (1, 28, 28)),
    ('resnet50_routing', {}, (3, 64, 64)),
    ('capsnet_resnet20', {}, (1, 40, 40)),
]


@pytest.mark.parametrize('name, kwargs, input_size', ROUTING_CASES)
def test_compile_has_no_graph_breaks(name, kwargs, input_size):
    model = timm.create_model(name, in_chans=input_size[0], **kwargs).train()
    x = torch.randn(2, *input_size)
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.parametrize('backend', ['aot_eager', 'inductor'])  # inductor: the generated C++ kernels of CPU users
@pytest.mark.parametrize('normalize', [False, True])
def test_compiled_forward_backward_matches_eager(normalize, backend):
    torch._dynamo.reset()
    pool = RoutingPool2d(16, iters=2, lam=5.0, normalize=normalize, activation='squash')
    compiled = torch.compile(pool.route, backend=backend, fullgraph=True)
    x = torch.randn(3, 32, 6, 6)
    outs = []
    for fn in (pool.route, compiled):
        xi = x.clone().requires_grad_(True)
        v, c = fn(xi)
        (v.square().sum() + c.square().sum()).backward()
        outs.append((v, c, xi.grad))
    for eager, comp in zip(*outs):
        torch.testing.assert_close(comp, eager, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('dynamo', [False, True], ids=['torchscript_exporter', 'dynamo_exporter'])
@pytest.mark.parametrize('name, kwargs, input_size', ROUTING_CASES[:2])
def test_onnx_export_matches_pytorch(name, kwargs, input_size, dynamo, tmp_path):
    ort = pytest.importorskip('onnxruntime', reason='onnxruntime is a test extra: pip install -e .[test]')
    pytest.importorskip('onnx', reason='onnx is a test extra: pip install -e .[test]')
    if dynamo:
        pytest.importorskip('onnxscript', reason='the dynamo exporter needs onnxscript: pip install -e .[test]')
    model = timm.create_model(name, in_chans=input_size[0], **kwargs).eval()
    x = torch.randn(3, *input_size)
    path = tmp_path / f'{name}.onnx'
    export_kwargs = dict(dynamo=True) if dynamo else dict(dynamo=False, dynamic_axes={'input': {0: 'batch'}})
    torch.onnx.export(model, (x,), str(path), input_names=['input'], output_names=['output'], **export_kwargs)
    session = ort.InferenceSession(str(path))
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out), model(x), rtol=1e-4, atol=1e-4)
