""" The 4-conv network of Zhao & Huang, Table 1, with max, average or dynamic-routing pooling

Four 5x5 convolutions of 64 filters, each followed by ReLU, global pooling of the 64 channels into 64 neurons, then
the linear classifier. The paper does not say where the network downsamples; here the second and fourth
convolutions have stride 2 (all convolutions are zero-padded to keep the size otherwise), so a 32x32 input (CIFAR-10,
SVHN) ends in an 8x8 map and a 28x28 input (Fashion-MNIST) in a 7x7 map: the pooling layer under comparison is the
only pooling in the network, and each of its 4 capsules (16 neurons each, λ = 0.5, as the paper's Table 1) routes 64
(or 49) spatial children. There is no batch norm, as in the paper's description.

`convnet4_max`, `convnet4_avg` and `convnet4_routing` differ only in `global_pool`; `convnet4_routing_raw` is
`convnet4_routing` with raw children (not normalised to unit length), the setting the CIFAR-10 check preferred while
Fashion-MNIST's ablation chose normalised ones (docs/results.md). `in_chans` is 1 for Fashion-MNIST and 3 for CIFAR-10
and SVHN.

Paper: `Exploring Dynamic Routing As A Pooling Layer` (Zhao & Huang), ICCV 2019 workshop (SDL-CV), §4.1.
"""
from typing import Any, Dict, Optional

import torch
import torch.nn as nn

from timm.layers import DropBlock2d
from timm.models import generate_default_cfgs, register_model

from ..layers import resolve_routing_args
from ._base import StemStagesNet
from ._pretrained import build_routing_model, shipped
from ._cfg import cifar10_cfg, fashion_mnist_cfg

__all__ = ['ConvNet4']


def _conv_act(
        in_chs: int, out_chs: int, kernel_size: int, stride: int, drop_block: Optional[nn.Module], dd,
) -> nn.Sequential:
    layer = nn.Sequential()
    layer.add_module('conv', nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=kernel_size // 2, **dd))
    layer.add_module('act', nn.ReLU(inplace=True))
    if drop_block is not None:
        layer.add_module('drop_block', drop_block)
    return layer


class ConvNet4(StemStagesNet):
    """Four 5x5 convolutions with ReLU, global pooling (max, avg, routing, ...) and a linear classifier.

    Args:
        width: Filters of every convolution (64 in the paper).
        kernel_size: Convolution size (5 in the paper).
        strides: Stride of each of the four convolutions.
        num_classes: Classifier outputs; 0 for none.
        in_chans: 1 (Fashion-MNIST) or 3 (CIFAR-10, SVHN); any positive number works.
        global_pool: 'max', 'avg', 'avgmax', 'catavgmax', 'routing' or '' (no pooling).
        routing_capsule_dim: Neurons per capsule of the routing pool (must divide `width`).
        routing_iters: Routing iterations.
        routing_lam: λ of the routing softmax.
        routing_normalize: Normalise the children to unit length before routing (Algorithm 1 line 1).
        routing_activation: Activation of the routed capsules: None, 'squash' or 'norm'.
        drop_rate: Dropout before the classifier.
        drop_block_rate: DropBlock (block 3) after the last two convolutions.
        drop_path_rate: Must be 0 or None: the network has no residual branches to drop.
        bn_momentum: Must be None: the network has no batch norm.
        bn_eps: Must be None: the network has no batch norm.
    """

    def __init__(
            self,
            width: int = 64,
            kernel_size: int = 5,
            strides: tuple = (1, 2, 1, 2),
            num_classes: int = 10,
            in_chans: int = 3,
            global_pool: str = 'avg',
            routing_capsule_dim: int = 16,
            routing_iters: int = 1,
            routing_lam: float = 0.5,
            routing_normalize: bool = False,
            routing_activation: Optional[str] = None,
            drop_rate: float = 0.,
            drop_block_rate: float = 0.,
            drop_path_rate: Optional[float] = None,
            bn_momentum: Optional[float] = None,
            bn_eps: Optional[float] = None,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        if drop_path_rate:
            raise ValueError(f'ConvNet4 has no residual branches, drop_path_rate={drop_path_rate} cannot apply.')
        if bn_momentum is not None or bn_eps is not None:
            raise ValueError(
                f'ConvNet4 has no batch norm, bn_momentum={bn_momentum} / bn_eps={bn_eps} cannot apply.')
        if len(strides) != 4:
            raise ValueError(f'ConvNet4 takes 4 strides, got {strides!r}.')
        routing_args = resolve_routing_args(
            routing_capsule_dim, routing_iters, routing_lam, routing_normalize, routing_activation)
        self.in_chans = in_chans
        self.grad_checkpointing = False

        self.stem = _conv_act(in_chans, width, kernel_size, strides[0], None, dd)
        reduction = strides[0]
        stages = []
        self.feature_info = []
        for idx, stride in enumerate(strides[1:]):
            drop_block = DropBlock2d(drop_block_rate, block_size=3) if drop_block_rate and idx > 0 else None
            stages.append(_conv_act(width, width, kernel_size, stride, drop_block, dd))
            reduction *= stride
            self.feature_info.append(dict(num_chs=width, reduction=reduction, module=f'stages.{idx}'))
        self.stages = nn.Sequential(*stages)

        self._init_head(width, num_classes, global_pool, routing_args, drop_rate, **dd)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r'^stem', blocks=r'^stages\.(\d+)')


def _create_convnet(variant: str, pretrained: bool = False, **kwargs: Any) -> ConvNet4:
    return build_routing_model(
        ConvNet4, variant, pretrained,
        feature_cfg=dict(out_indices=(0, 1, 2), flatten_sequential=True),
        **kwargs,
    )


def _cfg(url: str = '', **kwargs: Any) -> Dict[str, Any]:
    return cifar10_cfg(
        url=url, pool_size=(8, 8), first_conv='stem.conv', classifier='head.fc',
        paper_name='Exploring Dynamic Routing As A Pooling Layer', **kwargs,
    )


def _fmnist_cfg(**kwargs: Any) -> Dict[str, Any]:
    return fashion_mnist_cfg(
        pool_size=(7, 7), first_conv='stem.conv', classifier='head.fc',
        paper_name='Exploring Dynamic Routing As A Pooling Layer', **kwargs,
    )


default_cfgs = generate_default_cfgs({
    'convnet4_max': _cfg(),
    'convnet4_avg': _cfg(),
    'convnet4_routing': _cfg(),
    'convnet4_routing_raw': _cfg(),
    # weights trained here (scripts/recipes/<name>.yaml or train_capsnet, see results/<name>/notes.md), results/<name>/
    # holds the evidence; the Fashion-MNIST tags come first, so they stay the default pretrained weights
    **shipped({
        'convnet4_max.cpu_fmnist': _fmnist_cfg(),
        'convnet4_avg.cpu_fmnist': _fmnist_cfg(),
        'convnet4_routing.cpu_fmnist': _fmnist_cfg(),
        'convnet4_max.cpu_cifar10jpeg': _cfg(),
        'convnet4_avg.cpu_cifar10jpeg': _cfg(),
        'convnet4_routing.cpu_cifar10jpeg': _cfg(),
        'convnet4_routing_raw.cpu_cifar10jpeg': _cfg(),
    }),
})


@register_model
def convnet4_max(pretrained: bool = False, **kwargs: Any) -> ConvNet4:
    """Table 1 4-conv network with global max pooling."""
    return _create_convnet('convnet4_max', pretrained=pretrained, **dict(dict(global_pool='max'), **kwargs))


@register_model
def convnet4_avg(pretrained: bool = False, **kwargs: Any) -> ConvNet4:
    """Table 1 4-conv network with global average pooling."""
    return _create_convnet('convnet4_avg', pretrained=pretrained, **dict(dict(global_pool='avg'), **kwargs))


@register_model
def convnet4_routing(pretrained: bool = False, **kwargs: Any) -> ConvNet4:
    """Table 1 4-conv network with dynamic-routing pooling: capsules of 16 neurons, λ = 0.5, one iteration, children
    normalised (Algorithm 1 line 1), the winners of the validation ablation in docs/results.md."""
    model_args = dict(global_pool='routing', routing_normalize=True)
    return _create_convnet('convnet4_routing', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def convnet4_routing_raw(pretrained: bool = False, **kwargs: Any) -> ConvNet4:
    """`convnet4_routing` with raw children (not normalised to unit length), so the child lengths weigh in the routing
    as max pooling's magnitudes do; λ = 0.5, capsules of 16 neurons, one iteration. The CIFAR-10 setting of
    docs/results.md (its ablation preferred raw children there, the Fashion-MNIST one normalised children)."""
    model_args = dict(global_pool='routing', routing_normalize=False)
    return _create_convnet('convnet4_routing_raw', pretrained=pretrained, **dict(model_args, **kwargs))
