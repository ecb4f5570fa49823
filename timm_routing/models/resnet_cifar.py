""" CIFAR ResNets (He et al. 2016, §4.2) with average or dynamic-routing pooling

ResNet-20/32/44/56 as He et al. designed them for CIFAR-10: a 3x3 convolution of 16 filters, then three stages of n
basic blocks each (16, 32 and 64 filters on 32x32, 16x16 and 8x8 maps, depth 6n + 2), global pooling and a linear
classifier. Shortcuts are option A of the paper: identity, with the map subsampled by 2 and the new channels filled
with zeros where the stage widens, so shortcuts add no parameters (0.27 / 0.46 / 0.66 / 0.85 M parameters at 10
classes, as in He et al. Table 6 and Zhao & Huang Table 2).

`resnet<depth>` pools by averaging; `resnet<depth>_routing` replaces the average pooling by dynamic routing
(`RoutingPool2d`: λ = 5 as in Zhao & Huang Table 2, children normalised to unit length as Algorithm 1 prints it and
as the CIFAR-10 ablation in `docs/results.md` chose; capsules of 16, one iteration). The routing settings are model
kwargs (`routing_capsule_dim`, `routing_iters`, `routing_lam`, `routing_normalize`, `routing_activation`), and
`global_pool` switches any of these models between 'avg', 'max', 'avgmax', 'catavgmax', 'routing' and '' (timm
train.py's `--gp`).

Papers:
* `Deep Residual Learning for Image Recognition` - https://arxiv.org/abs/1512.03385
* `Exploring Dynamic Routing As A Pooling Layer` - ICCV 2019 workshop (SDL-CV)
"""
from functools import partial
from typing import Any, Dict, Optional, Type

import torch
import torch.nn as nn
import torch.nn.functional as F

from timm.layers import DropBlock2d, DropPath, calculate_drop_path_rates
from timm.models import generate_default_cfgs, register_model

from ..layers import resolve_routing_args
from ._base import StemStagesNet
from ._pretrained import build_routing_model, keep_default_tag, shipped
from ._cfg import cifar10_cfg, mnist_variant_cfg

__all__ = ['CifarResNet']


class PadShortcut(nn.Module):
    """Option A shortcut of He et al.: identity, subsampled by `stride`, zero-padded to `out_chs` channels."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1):
        super().__init__()
        if out_chs < in_chs:
            raise ValueError(f'PadShortcut cannot reduce channels ({in_chs} -> {out_chs}).')
        self.stride = stride
        self.pad_chs = out_chs - in_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, ::self.stride, ::self.stride]
        if self.pad_chs > 0:
            x = F.pad(x, (0, 0, 0, 0, 0, self.pad_chs))
        return x


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and ReLU, and an option-A identity shortcut."""

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            stride: int = 1,
            norm_layer: Type[nn.Module] = nn.BatchNorm2d,
            drop_block: Optional[nn.Module] = None,
            drop_path: float = 0.,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False, **dd)
        self.bn1 = norm_layer(out_chs, **dd)
        self.drop_block = drop_block if drop_block is not None else nn.Identity()
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=False, **dd)
        self.bn2 = norm_layer(out_chs, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.shortcut = PadShortcut(in_chs, out_chs, stride)
        self.act2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.drop_block(x)
        x = self.act1(x)
        x = self.conv2(x)
        x = self.bn2(x)
        x = self.drop_path(x) + shortcut
        return self.act2(x)


class CifarResNet(StemStagesNet):
    """He et al. CIFAR ResNet (depth 6n + 2) with a selectable pooling head, routing included.

    Args:
        depth: 20, 32, 44, 56, ... (6n + 2).
        widths: Filters of the three stages.
        num_classes: Classifier outputs; 0 for none.
        in_chans: Input channels.
        global_pool: 'avg', 'max', 'avgmax', 'catavgmax', 'routing' or '' (no pooling).
        routing_capsule_dim: Neurons per capsule of the routing pool (must divide the last stage's width).
        routing_iters: Routing iterations.
        routing_lam: λ of the routing softmax.
        routing_normalize: Normalise the children to unit length before routing (Algorithm 1 line 1); on by default,
            chosen by the CIFAR-10 ablation of `docs/results.md`.
        routing_activation: Activation of the routed capsules: None, 'squash' or 'norm'.
        drop_rate: Dropout before the classifier.
        drop_path_rate: Stochastic depth, linearly increasing over the blocks.
        drop_block_rate: DropBlock in the last two stages (a quarter of the rate, block 5, in the second).
        bn_momentum: BatchNorm momentum (PyTorch convention); default 0.1.
        bn_eps: BatchNorm epsilon; default 1e-5.
        output_stride: Only 4, the native stride.
    """

    def __init__(
            self,
            depth: int = 20,
            widths: tuple = (16, 32, 64),
            num_classes: int = 10,
            in_chans: int = 3,
            global_pool: str = 'avg',
            routing_capsule_dim: int = 16,
            routing_iters: int = 1,
            routing_lam: float = 5.0,
            routing_normalize: bool = True,
            routing_activation: Optional[str] = None,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            drop_block_rate: float = 0.,
            bn_momentum: Optional[float] = None,
            bn_eps: Optional[float] = None,
            output_stride: int = 4,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f'CIFAR ResNet depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, ...), got {depth!r}.')
        if output_stride != 4:
            raise ValueError(f'CifarResNet supports output_stride=4 only, got {output_stride}.')
        routing_args = resolve_routing_args(
            routing_capsule_dim, routing_iters, routing_lam, routing_normalize, routing_activation)
        bn_kwargs = {k: v for k, v in dict(momentum=bn_momentum, eps=bn_eps).items() if v is not None}
        norm_layer = partial(nn.BatchNorm2d, **bn_kwargs)
        blocks_per_stage = (depth - 2) // 6
        self.in_chans = in_chans
        self.grad_checkpointing = False

        self.stem = nn.Sequential()
        self.stem.add_module('conv', nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False, **dd))
        self.stem.add_module('bn', norm_layer(widths[0], **dd))
        self.stem.add_module('act', nn.ReLU(inplace=True))

        dpr = calculate_drop_path_rates(drop_path_rate, [blocks_per_stage] * 3, stagewise=True)
        drop_blocks = [
            None,
            DropBlock2d(drop_block_rate * 0.25, block_size=5) if drop_block_rate else None,
            DropBlock2d(drop_block_rate, block_size=3) if drop_block_rate else None,
        ]
        prev_chs = widths[0]
        reduction = 1
        stages = []
        self.feature_info = []
        for stage_idx, (width, block_dprs, drop_block) in enumerate(zip(widths, dpr, drop_blocks)):
            stride = 1 if stage_idx == 0 else 2
            reduction *= stride
            blocks = []
            for block_idx in range(blocks_per_stage):
                blocks.append(BasicBlock(
                    prev_chs, width, stride=stride if block_idx == 0 else 1, norm_layer=norm_layer,
                    drop_block=drop_block, drop_path=block_dprs[block_idx], **dd,
                ))
                prev_chs = width
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=width, reduction=reduction, module=f'stages.{stage_idx}'))
        self.stages = nn.Sequential(*stages)

        self._init_head(prev_chs, num_classes, global_pool, routing_args, drop_rate, **dd)
        self.init_weights()

    def init_weights(self):
        """He et al. initialisation: Kaiming normal (fan out) convolutions, unit-gain batch norm."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def _create_resnet_cifar(variant: str, pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    return build_routing_model(
        CifarResNet, variant, pretrained,
        feature_cfg=dict(out_indices=(0, 1, 2), flatten_sequential=True),
        **kwargs,
    )


def _cfg(url: str = '', **kwargs: Any) -> Dict[str, Any]:
    return cifar10_cfg(
        url=url, pool_size=(8, 8), first_conv='stem.conv', classifier='head.fc',
        paper_ids='arXiv:1512.03385', paper_name='Deep Residual Learning for Image Recognition', **kwargs,
    )


default_cfgs = generate_default_cfgs({
    'resnet20': _cfg(),
    'resnet32': _cfg(),
    'resnet44': _cfg(),
    'resnet56': _cfg(),
    'resnet20_routing': _cfg(),
    'resnet32_routing': _cfg(),
    'resnet44_routing': _cfg(),
    'resnet56_routing': _cfg(),
    # weights trained here (python -m timm_routing.train_capsnet; gpu_: on one H200, cpu_: on 2 CPU cores),
    # results/<name>/ the evidence
    **shipped({
        # CIFAR-10 JPEG-q75 approximation (../shared/data), He et al.'s schedule shortened to 100 epochs
        'resnet20.gpu_cifar10jpeg': _cfg(),
        'resnet20_routing.cpu_cifar10jpeg': _cfg(),
        # He et al.'s full schedule (182 epochs, lr drops at 91 and 136): started on one H200, finished on 2 CPU cores
        'resnet20.he182_cifar10jpeg': _cfg(),
        'resnet20_routing.he182_cifar10jpeg': _cfg(),
        # the same recipe shortened to 60 epochs (lr drops at 30 and 45), both heads on 2 CPU cores
        'resnet32.cpu_cifar10jpeg': _cfg(),
        'resnet32_routing.cpu_cifar10jpeg': _cfg(),
        # the same recipe shortened to 50 epochs (lr drops at 25 and 38), both heads on 2 CPU cores
        'resnet44.cpu_cifar10jpeg': _cfg(),
        'resnet44_routing.cpu_cifar10jpeg': _cfg(),
        # the 50-epoch recipe again, in bfloat16 autocast with channels-last, both heads on 2 CPU cores
        'resnet56.cpu_cifar10jpeg': _cfg(),
        'resnet56_routing.cpu_cifar10jpeg': _cfg(),
        # the Table 4 baseline of the CapsNet experiments: expanded MNIST, 40x40 grey, raw pixels
        'resnet20.cpu_mnist_shift': mnist_variant_cfg(
            40, pool_size=(10, 10), first_conv='stem.conv', classifier='head.fc', paper_ids='arXiv:1512.03385',
            paper_name='Deep Residual Learning for Image Recognition'),
    }),
})
# resnet20 defaults to its CIFAR-10 weights, not to its grey expanded-MNIST tag
keep_default_tag(default_cfgs, 'resnet20', 'gpu_cifar10jpeg')


@register_model
def resnet20(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-20 for CIFAR (0.27M parameters), average pooling."""
    return _create_resnet_cifar('resnet20', pretrained=pretrained, **dict(dict(depth=20), **kwargs))


@register_model
def resnet32(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-32 for CIFAR (0.46M parameters), average pooling."""
    return _create_resnet_cifar('resnet32', pretrained=pretrained, **dict(dict(depth=32), **kwargs))


@register_model
def resnet44(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-44 for CIFAR (0.66M parameters), average pooling."""
    return _create_resnet_cifar('resnet44', pretrained=pretrained, **dict(dict(depth=44), **kwargs))


@register_model
def resnet56(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-56 for CIFAR (0.85M parameters), average pooling."""
    return _create_resnet_cifar('resnet56', pretrained=pretrained, **dict(dict(depth=56), **kwargs))


@register_model
def resnet20_routing(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-20 for CIFAR with a dynamic-routing pooling head (λ = 5, normalised children)."""
    model_args = dict(depth=20, global_pool='routing')
    return _create_resnet_cifar('resnet20_routing', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def resnet32_routing(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-32 for CIFAR with a dynamic-routing pooling head (λ = 5, normalised children)."""
    model_args = dict(depth=32, global_pool='routing')
    return _create_resnet_cifar('resnet32_routing', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def resnet44_routing(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-44 for CIFAR with a dynamic-routing pooling head (λ = 5, normalised children)."""
    model_args = dict(depth=44, global_pool='routing')
    return _create_resnet_cifar('resnet44_routing', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def resnet56_routing(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-56 for CIFAR with a dynamic-routing pooling head (λ = 5, normalised children)."""
    model_args = dict(depth=56, global_pool='routing')
    return _create_resnet_cifar('resnet56_routing', pretrained=pretrained, **dict(model_args, **kwargs))
