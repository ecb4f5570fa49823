"""The model families as timm models: architecture, every pooling mode, the timm model API and train.py's kwargs."""
import pytest
import torch
import torch.nn as nn

import timm
from timm.data import resolve_data_config

import timm_routing
from timm_routing.layers import RoutingPool2d
from timm_routing.models import CIFAR10_CLASSES, routing_model_names

RESNETS = ['resnet20', 'resnet32', 'resnet44', 'resnet56']
ALL_MODELS = routing_model_names()
POOLS = ['avg', 'max', 'avgmax', 'catavgmax', 'routing', '']


def test_every_family_is_registered():
    expected = set(RESNETS) | {f'{n}_routing' for n in RESNETS} | {
        'convnet4_max', 'convnet4_avg', 'convnet4_routing', 'convnet4_routing_raw'}
    assert expected <= set(ALL_MODELS)


@pytest.mark.parametrize(
    'name, params_m', [('resnet20', 0.27), ('resnet32', 0.46), ('resnet44', 0.66), ('resnet56', 0.85)])
def test_resnet_parameter_counts_match_table2(name, params_m):
    for variant in (name, f'{name}_routing'):
        model = timm.create_model(variant, num_classes=10)
        assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == params_m


def test_resnet_depth_and_option_a_shortcuts():
    model = timm.create_model('resnet20')
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19  # + fc = 20 weighted layers; option A shortcuts have no convolution
    assert [s[0].conv1.stride for s in model.stages] == [(1, 1), (2, 2), (2, 2)]
    assert model.feature_info[-1]['num_chs'] == 64


def test_routing_head_adds_no_parameters_and_is_the_gp_switch():
    avg = timm.create_model('resnet20')
    routing = timm.create_model('resnet20_routing')
    assert avg.state_dict().keys() == routing.state_dict().keys()
    gp_routing = timm.create_model('resnet20', global_pool='routing')  # train.py --gp routing
    gp_routing.load_state_dict(routing.state_dict())
    x = torch.randn(2, 3, 32, 32)
    routing.eval(), gp_routing.eval()
    torch.testing.assert_close(gp_routing(x), routing(x))
    pool = routing.head.global_pool
    assert isinstance(pool, RoutingPool2d)
    assert (pool.capsule_dim, pool.iters, pool.lam, pool.normalize) == (16, 1, 5.0, True)
    conv_pool = timm.create_model('convnet4_routing', in_chans=3).head.global_pool
    assert (conv_pool.capsule_dim, conv_pool.lam) == (16, 0.5)


def test_convnet4_routing_raw_is_convnet4_routing_with_raw_children():
    raw = timm.create_model('convnet4_routing_raw').eval()
    assert raw.pretrained_cfg['input_size'] == (3, 32, 32)  # its only weights are the CIFAR-10 ones
    pool = raw.head.global_pool
    assert (pool.capsule_dim, pool.iters, pool.lam, pool.normalize) == (16, 1, 0.5, False)
    same = timm.create_model('convnet4_routing', in_chans=3, routing_normalize=False).eval()
    normalised = timm.create_model('convnet4_routing', in_chans=3).eval()
    same.load_state_dict(raw.state_dict())
    normalised.load_state_dict(raw.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(same(x), raw(x), rtol=0, atol=0)
        assert not torch.allclose(normalised(x), raw(x))


def test_routing_kwargs_reach_the_pool():
    model = timm.create_model(
        'resnet32_routing', routing_capsule_dim=32, routing_iters=3, routing_lam=10.0, routing_normalize=True,
        routing_activation='squash')
    pool = model.head.global_pool
    assert (pool.capsule_dim, pool.iters, pool.lam, pool.normalize, pool.activation) == (32, 3, 10.0, True, 'squash')
    assert model._model_args['routing_lam'] == 10.0


@pytest.mark.parametrize('name', ['resnet20', 'convnet4_avg'])
@pytest.mark.parametrize('pool', POOLS)
def test_every_global_pool(name, pool):
    model = timm.create_model(name, global_pool=pool, in_chans=3).eval()
    x = torch.randn(2, 3, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape == (2, model.num_features, 8, 8)
    pre = model.forward_head(feats, pre_logits=True)
    mult = 2 if pool == 'catavgmax' else 1
    assert model.head_hidden_size == model.num_features * mult
    if pool:
        assert pre.shape == (2, model.head_hidden_size)
        assert model(x).shape == (2, 10)
    else:
        assert pre.shape == (2, model.num_features, 8, 8)


@pytest.mark.parametrize('pool', ['avg', 'max', 'routing'])
def test_pooled_features_are_what_the_pool_computes(pool):
    model = timm.create_model(f'convnet4_{pool}', num_classes=0, in_chans=3).eval()
    x = torch.randn(3, 3, 32, 32)
    feats = model.forward_features(x)
    if pool == 'avg':
        expected = feats.mean((2, 3))
    elif pool == 'max':
        expected = feats.amax((2, 3))
    else:
        expected = RoutingPool2d(16, iters=1, lam=0.5, normalize=True)(feats)  # the ablation's winner
    torch.testing.assert_close(model(x), expected)


def test_reset_classifier_keeps_routing_and_switches_pooling():
    model = timm.create_model('resnet20_routing')
    model.reset_classifier(7)
    assert isinstance(model.head.global_pool, RoutingPool2d) and model.get_classifier().out_features == 7
    model.reset_classifier(5, 'avg')
    assert model.head.global_pool.pool_type == 'avg'
    model.reset_classifier(3, 'routing')
    assert isinstance(model.head.global_pool, RoutingPool2d) and model.head.global_pool.lam == 5.0
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    model.reset_classifier(0, '')
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 64, 8, 8)


def test_coupling_coefficients_of_a_model():
    model = timm.create_model('resnet20_routing').eval()
    x = torch.randn(2, 3, 32, 32)
    pooled, couplings = model.head.global_pool.route(model.forward_features(x))
    assert couplings.shape == (2, 4, 8, 8)
    torch.testing.assert_close(couplings.sum((-1, -2)), torch.ones(2, 4))
    torch.testing.assert_close(model.head.fc(pooled), model(x))


# Sabour's CapsNet uses unpadded 9x9 convolutions, so its maps shrink faster than their stride: tests/test_capsnet.py
@pytest.mark.parametrize('name', [n for n in ALL_MODELS if n != 'capsnet'])
def test_features_only_and_intermediates(name):
    model = timm.create_model(name, features_only=True, in_chans=3).eval()
    outs = model(torch.randn(1, 3, 32, 32))
    assert [o.shape[1] for o in outs] == model.feature_info.channels()
    assert [32 // o.shape[-1] for o in outs] == model.feature_info.reduction()
    full = timm.create_model(name, in_chans=3).eval()
    x = torch.randn(1, 3, 32, 32)
    final, inter = full.forward_intermediates(x)
    torch.testing.assert_close(final, full.forward_features(x))
    assert len(inter) == len(full.feature_info)


@pytest.mark.parametrize('name', ['convnet4_max', 'convnet4_avg', 'convnet4_routing', 'resnet20_routing'])
def test_grey_28x28_inputs(name):
    # Fashion-MNIST: in_chans=1, 28x28 -> a 7x7 map, 49 children per capsule
    model = timm.create_model(name, in_chans=1).eval()
    feats = model.forward_features(torch.randn(2, 1, 28, 28))
    assert feats.shape[-2:] == (7, 7)
    assert model.forward_head(feats).shape == (2, 10)


def test_pretrained_cfg():
    model = timm.create_model('resnet20_routing')
    cfg = model.pretrained_cfg
    assert cfg['input_size'] == (3, 32, 32) and cfg['crop_pct'] == 1.0 and cfg['num_classes'] == 10
    assert cfg['mean'] == pytest.approx((0.4914, 0.4822, 0.4465))
    assert cfg['std'] == pytest.approx((0.2470, 0.2435, 0.2616))
    assert tuple(cfg['label_names']) == CIFAR10_CLASSES
    data_cfg = resolve_data_config(model=model)
    assert data_cfg['input_size'] == (3, 32, 32) and data_cfg['crop_pct'] == 1.0


def test_resnet20_stays_a_cifar_net_beside_its_grey_mnist_tag():
    assert timm.create_model('resnet20').pretrained_cfg['input_size'] == (3, 32, 32)
    grey = timm.models.get_pretrained_cfg('resnet20.cpu_mnist_shift')
    assert grey.input_size == (1, 40, 40) and grey.mean == (0.,) and grey.file
    assert timm.create_model('resnet20.cpu_mnist_shift').stem.conv.in_channels == 1


def test_train_py_kwargs_are_accepted_and_applied(tmp_path):
    kwargs = dict(
        num_classes=100, in_chans=3, drop_rate=0.2, drop_path_rate=0.1, drop_block_rate=0.1, global_pool='routing',
        bn_momentum=0.01, bn_eps=1e-3, scriptable=True,
    )
    model = timm.create_model('resnet20', **kwargs)
    assert model.num_classes == 100 and model.head.drop.p == 0.2
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(m.momentum == 0.01 and m.eps == 1e-3 for m in bns)
    drop_paths = [m.drop_prob for m in model.modules() if type(m).__name__ == 'DropPath']
    assert drop_paths and max(drop_paths) == pytest.approx(0.1)
    assert any(type(m).__name__ == 'DropBlock2d' for m in model.modules())
    model.train()(torch.randn(2, 3, 32, 32)).sum().backward()
    # checkpoint_path: timm loads a saved state dict after building
    path = tmp_path / 'ckpt.pth'
    torch.save({'state_dict': model.state_dict()}, path)
    loaded = timm.create_model('resnet20', checkpoint_path=str(path), **kwargs)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v)


def test_convnet_rejects_kwargs_it_cannot_apply():
    with pytest.raises(ValueError, match='drop_path_rate=0.1'):
        timm.create_model('convnet4_avg', drop_path_rate=0.1)
    with pytest.raises(ValueError, match='bn_momentum=0.01'):
        timm.create_model('convnet4_avg', bn_momentum=0.01)
    model = timm.create_model('convnet4_routing', drop_block_rate=0.1, drop_rate=0.5, in_chans=3)
    assert model.head.drop.p == 0.5


@pytest.mark.parametrize('kwargs, match', [
    (dict(global_pool='mean'), "Unknown global_pool 'mean'"),
    (dict(routing_capsule_dim=24), 'capsule_dim=24 does not divide the 64 feature channels'),
    (dict(routing_iters=-1), 'iterations must be >= 0, got -1'),
    (dict(routing_lam=-1.0), 'lambda must be finite and >= 0, got -1.0'),
    (dict(routing_activation='softplus'), "Unknown routing activation 'softplus'"),
    (dict(depth=21), 'depth must be 6n \\+ 2'),
])
def test_bad_model_configuration(kwargs, match):
    with pytest.raises(ValueError, match=match):
        timm.create_model('resnet20_routing', **kwargs)


def test_unknown_kwarg_is_a_type_error():
    with pytest.raises(TypeError):
        timm.create_model('resnet20_routing', routing_lambda=5)


@pytest.mark.parametrize('name', ['resnet20_routing', 'convnet4_routing'])
def test_grad_checkpointing_same_output_and_grads(name):
    torch.manual_seed(0)
    model = timm.create_model(name, in_chans=3).train()
    x = torch.randn(2, 3, 32, 32)
    model.eval()  # batch-norm statistics fixed so both passes compute the same function
    model(x).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-6)


def test_group_matcher_groups_stem_and_stages():
    from timm.models._manipulate import group_parameters
    model = timm.create_model('resnet20_routing')
    groups = group_parameters(model, model.group_matcher(coarse=True))
    assert len(groups) >= 4  # stem, three stages, head


def test_package_reexports():
    assert timm_routing.RoutingPool2d is RoutingPool2d
    assert callable(timm_routing.dynamic_routing)
