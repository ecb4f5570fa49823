""" Routing heads on timm backbones

`add_routing_head(model)` puts dynamic-routing pooling into any timm classifier that pools with timm's
`SelectAdaptivePool2d` (ResNets, EfficientNets, ConvNeXts and most CNNs; channels-last ones such as Swin too), in place
of that pooling layer, so the model's own classifier semantics stay: a ConvNeXt keeps its norm after the pooling, an
EfficientNet its dropout, every model its classifier name, `reset_classifier`, `forward_head(pre_logits=True)` and
features API. Models that pool tokens rather than a feature map (ViT, LeViT, RepViT, EfficientFormer) have no such
layer and are refused with a ValueError.

The model's class becomes a subclass that also accepts `'routing'` in `reset_classifier` and keeps the routing pool
when `global_pool` is None (timm's own classes would rebuild a `SelectAdaptivePool2d`, which knows no routing).

Registered models: `resnet50_routing`, `convnext_tiny_routing`, `efficientnet_b0_routing`. Their pretrained cfgs are
timm's own default ImageNet cfgs of the backbone (the same Hub ids), so `pretrained=True` loads timm's ImageNet
backbone weights, and the classifier is then re-initialised: the routed features differ from the averaged ones the
ImageNet classifier was trained on. With `train.py --model resnet50_routing --pretrained --device-modules
timm_routing --num-classes N` this fine-tunes from ImageNet.
"""
from typing import Any, Dict, Optional, Tuple

import torch.nn as nn

import timm
from timm.layers import SelectAdaptivePool2d
from timm.models import generate_default_cfgs, get_pretrained_cfg, register_model
from timm.models._builder import resolve_pretrained_cfg

from ..layers import RoutingPool2d, resolve_routing_args

__all__ = ['add_routing_head', 'RoutingHeadMixin']

_ROUTING_KWARGS = ('capsule_dim', 'iters', 'lam', 'normalize', 'activation')


def _find_global_pool(model: nn.Module) -> Tuple[nn.Module, str, nn.Module]:
    pools = [
        (name, module) for name, module in model.named_modules()
        if isinstance(module, (SelectAdaptivePool2d, RoutingPool2d))
    ]
    if len(pools) != 1:
        raise ValueError(
            f'{type(model).__name__} has {len(pools)} global pooling layers ({[n for n, _ in pools]}); a routing head '
            f'replaces exactly one SelectAdaptivePool2d.')
    name, pool = pools[0]
    parent_name, _, attr = name.rpartition('.')
    return model.get_submodule(parent_name), attr, pool


def _pool_flattens(pool: nn.Module) -> bool:
    if isinstance(pool, RoutingPool2d):
        return pool.flatten
    return isinstance(pool.flatten, nn.Flatten) or getattr(getattr(pool, 'pool', None), 'flatten', False) is True


def _pool_input_fmt(pool: nn.Module) -> str:
    """'NHWC' for a pooling layer over channels-last maps: timm's fast pools reduce dims (1, 2) there."""
    if isinstance(pool, RoutingPool2d):
        return pool.input_fmt
    return 'NHWC' if tuple(getattr(getattr(pool, 'pool', None), 'dim', (2, 3))) == (1, 2) else 'NCHW'


def _routing_pool_for(model: nn.Module, routing_args: Dict[str, Any]) -> Tuple[nn.Module, str, RoutingPool2d]:
    """The routing pool to put in place of `model`'s global pooling (same flattening, input format and train mode),
    with the parent module and attribute it goes to. Changes nothing; raises ValueError where the model has no single
    pooling layer or `capsule_dim` does not divide its features."""
    parent, attr, pool = _find_global_pool(model)
    routing_pool = RoutingPool2d(**routing_args, flatten=_pool_flattens(pool), input_fmt=_pool_input_fmt(pool))
    routing_pool.check_channels(getattr(model, 'num_features'))
    routing_pool.train(pool.training)
    return parent, attr, routing_pool


class RoutingHeadMixin:
    """Makes `reset_classifier` of a timm model understand `'routing'` (mixed into the model's own class)."""

    def _set_routing_pool(self):
        parent, attr, routing_pool = _routing_pool_for(self, self.routing_args)
        setattr(parent, attr, routing_pool)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None, **kwargs):
        """timm's `reset_classifier`, with `'routing'` among the pool types; None keeps the current pooling."""
        if global_pool is None:
            _, _, pool = _find_global_pool(self)
            global_pool = pool.pool_type
        routing = global_pool == 'routing'
        super().reset_classifier(num_classes, 'avg' if routing else global_pool, **kwargs)
        if routing:
            self._set_routing_pool()


_ROUTING_CLASSES: Dict[type, type] = {}


def _routing_class(cls: type) -> type:
    if issubclass(cls, RoutingHeadMixin):
        return cls
    if cls not in _ROUTING_CLASSES:
        name = f'{cls.__name__}Routing'
        new_cls = type(name, (RoutingHeadMixin, cls), {'__module__': __name__, '__doc__': cls.__doc__})
        globals()[name] = new_cls  # importable by name, so models pickle
        _ROUTING_CLASSES[cls] = new_cls
    return _ROUTING_CLASSES[cls]


def add_routing_head(
        model: nn.Module,
        capsule_dim: int = 16,
        iters: int = 1,
        lam: float = 1.0,
        normalize: bool = False,
        activation: Optional[str] = None,
) -> nn.Module:
    """Replaces the global pooling of a timm classifier by `RoutingPool2d`, in place.

    Args:
        model: A timm model with one `SelectAdaptivePool2d` head pooling and `reset_classifier`.
        capsule_dim, iters, lam, normalize, activation: The routing settings (see `RoutingPool2d`); `capsule_dim`
            must divide `model.num_features`.

    Returns:
        The same model, whose class now also accepts `reset_classifier(n, 'routing')`.

    Raises:
        ValueError: a model without exactly one global pooling layer, or a capsule size that does not divide its
            features.
        TypeError: a model without timm's `reset_classifier` / `num_features`.
    """
    if not hasattr(model, 'reset_classifier') or not hasattr(model, 'num_features'):
        raise TypeError(f'{type(model).__name__} is not a timm classifier (no reset_classifier / num_features).')
    routing_args = resolve_routing_args(capsule_dim, iters, lam, normalize, activation)
    parent, attr, routing_pool = _routing_pool_for(model, routing_args)  # before any change: a refused model stays
    model.routing_args = routing_args
    model.__class__ = _routing_class(type(model))
    setattr(parent, attr, routing_pool)
    return model


def _create_routing_backbone(variant: str, backbone: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    routing_kwargs = {k: kwargs.pop(f'routing_{k}') for k in _ROUTING_KWARGS if f'routing_{k}' in kwargs}
    global_pool = kwargs.pop('global_pool', 'routing')
    features_only = kwargs.get('features_only', False)
    # this model's cfg (timm's ImageNet cfg of the backbone under this model's name) decides the weights to load
    pretrained_cfg = resolve_pretrained_cfg(
        variant, pretrained_cfg=kwargs.pop('pretrained_cfg', None),
        pretrained_cfg_overlay=kwargs.pop('pretrained_cfg_overlay', None))
    model = timm.create_model(
        backbone, pretrained=pretrained, pretrained_cfg=pretrained_cfg,
        global_pool='avg' if global_pool == 'routing' else global_pool, **kwargs)
    if features_only:
        return model  # no head to route into
    model.routing_args = resolve_routing_args(**routing_kwargs)
    model.__class__ = _routing_class(type(model))
    # a fresh classifier: the routed features differ from the averaged ones the ImageNet classifier was trained on
    model.reset_classifier(model.num_classes, global_pool)
    return model


def _backbone_cfg(backbone: str) -> Dict[str, Any]:
    cfg = get_pretrained_cfg(backbone).to_dict()
    cfg.pop('architecture', None)
    cfg.pop('tag', None)
    return cfg


_BACKBONES = {
    'resnet50': 'resnet50.a1_in1k',
    'convnext_tiny': 'convnext_tiny.in12k_ft_in1k',
    'efficientnet_b0': 'efficientnet_b0.ra_in1k',
}

default_cfgs = generate_default_cfgs({
    f'{backbone}_routing.{tagged.split(".", 1)[1]}': _backbone_cfg(tagged) for backbone, tagged in _BACKBONES.items()
})


@register_model
def resnet50_routing(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """timm's ResNet-50 with a routing head (capsules of 16, one iteration, λ = 1 unless set by kwargs)."""
    return _create_routing_backbone('resnet50_routing', 'resnet50', pretrained=pretrained, **kwargs)


@register_model
def convnext_tiny_routing(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """timm's ConvNeXt-T with a routing head in place of its average pooling (before its head norm)."""
    return _create_routing_backbone('convnext_tiny_routing', 'convnext_tiny', pretrained=pretrained, **kwargs)


@register_model
def efficientnet_b0_routing(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """timm's EfficientNet-B0 with a routing head."""
    return _create_routing_backbone('efficientnet_b0_routing', 'efficientnet_b0', pretrained=pretrained, **kwargs)
