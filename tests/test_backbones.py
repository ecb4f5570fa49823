"""Routing heads on timm backbones: add_routing_head on any timm CNN and the registered <backbone>_routing models."""
import copy
import io
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import timm

from timm_routing.layers import RoutingPool2d
from timm_routing.models import add_routing_head
from timm_routing.models.backbones import _find_global_pool

SMALL_BACKBONES = ['resnet10t', 'convnext_atto', 'efficientnet_b0', 'mobilenetv3_small_050']


@pytest.mark.parametrize('name', SMALL_BACKBONES)
def test_lambda_zero_head_keeps_the_model_function(name):
    # at λ = 0 routing is average pooling, so the routed model must compute exactly what timm's model computes:
    # the pooling was swapped in place and everything after it (norm, conv head, dropout, classifier) kept
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=7).eval()
    x = torch.randn(2, 3, 64, 64)
    expected = model(x)
    expected_pre = model.forward_head(model.forward_features(x), pre_logits=True)
    add_routing_head(model, capsule_dim=16, lam=0.0)
    assert isinstance(_find_global_pool(model)[2], RoutingPool2d)
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.forward_head(model.forward_features(x), pre_logits=True), expected_pre,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name', SMALL_BACKBONES)
def test_routing_changes_pooling_and_reset_keeps_it(name):
    model = add_routing_head(timm.create_model(name, num_classes=7), capsule_dim=16, iters=2, lam=5.0).eval()
    pool = _find_global_pool(model)[2]
    x = torch.randn(2, 3, 64, 64)
    feats = model.forward_features(x)
    routed, couplings = pool.route(feats)
    assert couplings.shape[:2] == (2, model.num_features // 16)
    assert model(x).shape == (2, 7)
    model.reset_classifier(3)
    assert isinstance(_find_global_pool(model)[2], RoutingPool2d) and model(x).shape == (2, 3)
    model.reset_classifier(3, 'avg')
    assert not isinstance(_find_global_pool(model)[2], RoutingPool2d)
    model.reset_classifier(4, 'routing')
    pool = _find_global_pool(model)[2]
    assert isinstance(pool, RoutingPool2d) and (pool.iters, pool.lam) == (2, 5.0)
    assert model(x).shape == (2, 4)
    model.reset_classifier(0, '')
    assert model(x).ndim == 4


def _tiny_swin(**kwargs):
    # timm's Swin pools channels-last (B, H, W, C) maps; one block per stage keeps it small
    return timm.create_model('swin_tiny_patch4_window7_224', embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1),
                             img_size=64, window_size=2, **kwargs)


def test_channels_last_backbone():
    torch.manual_seed(0)
    model = _tiny_swin(num_classes=7).eval()
    x = torch.randn(2, 3, 64, 64)
    expected = model(x)
    add_routing_head(model, lam=0.0)
    pool = _find_global_pool(model)[2]
    assert isinstance(pool, RoutingPool2d) and pool.input_fmt == 'NHWC'
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)  # λ = 0: still average pooling
    model.reset_classifier(3, 'routing')
    feats = model.forward_features(x)  # (2, 2, 2, 256)
    _, couplings = _find_global_pool(model)[2].route(feats)
    assert couplings.shape == (2, 256 // 16, 2, 2) and model(x).shape == (2, 3)


def test_bad_inputs():
    with pytest.raises(ValueError, match='capsule_dim=24 does not divide the 512 feature channels'):
        add_routing_head(timm.create_model('resnet10t'), capsule_dim=24)
    with pytest.raises(ValueError, match='VisionTransformer has 0 global pooling layers'):
        add_routing_head(timm.create_model('vit_tiny_patch16_224', img_size=32, patch_size=8))
    with pytest.raises(TypeError, match='not a timm classifier'):
        add_routing_head(torch.nn.Conv2d(3, 8, 3))
    with pytest.raises(ValueError, match="Unknown routing activation 'gelu'"):
        add_routing_head(timm.create_model('resnet10t'), activation='gelu')


@pytest.mark.parametrize('name, kwargs', [('resnet10t', dict(capsule_dim=24)), ('vit_tiny_patch16_224', {})])
def test_refused_model_is_left_as_it_was(name, kwargs):
    model = timm.create_model(name, img_size=32) if name.startswith('vit') else timm.create_model(name)
    cls, modules = type(model), [type(m) for m in model.modules()]
    with pytest.raises(ValueError):
        add_routing_head(model, **kwargs)
    assert type(model) is cls and not hasattr(model, 'routing_args')
    assert [type(m) for m in model.modules()] == modules


def test_routed_model_copies_and_pickles():
    model = add_routing_head(timm.create_model('resnet10t', num_classes=5), lam=3.0).eval()
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(copy.deepcopy(model)(x), model(x))
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    torch.testing.assert_close(torch.load(buffer, weights_only=False)(x), model(x))


@pytest.mark.parametrize('name, backbone', [
    ('resnet50_routing', 'resnet50'), ('convnext_tiny_routing', 'convnext_tiny'),
    ('efficientnet_b0_routing', 'efficientnet_b0'),
])
def test_registered_backbone_cfgs_are_timms(name, backbone):
    model = timm.create_model(name)
    cfg, timm_cfg = model.pretrained_cfg, timm.models.get_pretrained_cfg(backbone)
    assert cfg['hf_hub_id'] == timm_cfg.hf_hub_id and cfg['architecture'] == name
    assert cfg['mean'] == timm_cfg.mean and cfg['classifier'] == timm_cfg.classifier
    assert isinstance(_find_global_pool(model)[2], RoutingPool2d)
    assert _find_global_pool(timm.create_model(name, global_pool='avg'))[2].pool_type == 'avg'


@pytest.mark.parametrize('num_classes', [1000, 10])
def test_pretrained_backbone_from_a_local_checkpoint(tmp_path, num_classes):
    # stands in for timm's ImageNet weights on the Hub: a saved resnet50, loaded through the pretrained cfg
    torch.manual_seed(0)
    source = timm.create_model('resnet50')
    path = tmp_path / 'resnet50.safetensors'
    save_file(source.state_dict(), str(path))
    model = timm.create_model(
        'resnet50_routing', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), num_classes=num_classes,
        routing_lam=2.0)
    src = source.state_dict()
    for key, value in model.state_dict().items():
        if key.startswith('fc.'):
            continue
        torch.testing.assert_close(value, src[key], msg=key)
    assert model.fc.out_features == num_classes
    assert not torch.equal(model.fc.weight[:10], src['fc.weight'][:10])  # a fresh head, not the ImageNet classifier
    assert model.global_pool.lam == 2.0


def test_features_only_backbone():
    model = timm.create_model('resnet50_routing', features_only=True, out_indices=(2, 3, 4))
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [512, 1024, 2048]


def test_backbone_sweep_script(capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / 'scripts'))
    import backbone_sweep
    assert backbone_sweep.main(['resnet10t', 'vit_tiny_patch16_224']) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].split()[:3] == ['resnet10t', 'ok', 'NCHW,']
    assert rows[1].split()[:2] == ['vit_tiny_patch16_224', 'refused'] and '0 global pooling layers' in rows[1]
    assert backbone_sweep.main(['no_such_model']) == 1  # anything but a ValueError from add_routing_head is a bug
    assert capsys.readouterr().out.split()[:2] == ['no_such_model', 'FAILED']
