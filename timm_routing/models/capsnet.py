""" CapsNet family: ResNet-20 with class capsules by routing (Zhao & Huang §4.3) and Sabour et al.'s CapsNet

`capsnet_resnet20` (the paper's R-1-32, Fig. 2): ResNet-20 is the primary-capsule extractor; its average pooling and
fully connected layer are replaced by dynamic routing into `num_classes` class capsules with squash
(`ClassCapsuleHead`), followed by Sabour's reconstruction decoder. How the votes are formed: the final 64-channel map
holds, at each of its H·W positions, `64 / capsule_dim` child capsules of `capsule_dim` consecutive channels (the
grouping of the routing pooling head); each child votes for class j through a `16 x capsule_dim` matrix shared over
positions (a grouped 1x1 convolution, 10,240 parameters at 10 classes), and class j's capsule is the paper's routing
(softmax over the children, λ, squash) of all the votes for j. Sharing the matrices over positions is what keeps the
routing nearly free: Sabour's per-capsule matrices cost 1.5 M parameters at 28x28 and 5.9 M at 40x40. With the decoder
(class capsules masked to one class -> 512 -> 1024 -> pixels) the model has 2.53 M parameters at 40x40 and 2.21 M at
36x36, the paper's "about 2.5M" and "2.2M". `capsnet_resnet20_lam5` is R-5-32 (λ = 5), the paper's MultiMNIST
setting.

`capsnet` is the Table 4 baseline, Sabour et al. 2017: Conv 256@9x9, PrimaryCaps 32x8D @9x9 stride 2, DigitCaps
10x16D with 3 routing iterations and the softmax over parents, the same decoder (8.2 M parameters at 28x28, 13.4 M at
40x40).

Outputs: class scores are the capsule lengths, `(B, K)` in [0, 1); `forward_head(x, pre_logits=True)` and a model
without a classifier (`num_classes=0`) return the class capsules flattened, `(B, K·16)`; `route(x)` also returns the
coupling coefficients (for heatmaps); `forward_train(x, target)` returns lengths, capsules and the reconstruction
masked by the target classes, for `timm_routing.loss.CapsuleLoss`. The models read raw pixels in [0, 1] (cfg mean 0,
std 1, as Sabour), which is also the reconstruction target.

Training under timm's train.py: it calls `model(x)` and its own criterion only. In training mode `forward` therefore
attaches `recon_weight` x the reconstruction loss (decoder masked by the longest capsule, since train.py gives the
model no labels) to the lengths it returns (`attach_aux_loss`), so train.py's `loss.backward()` trains the decoder
too; the classification term is train.py's criterion on the lengths. Sabour's exact objective (margin loss,
reconstruction masked by the true label) is `CapsuleLoss` on `forward_train`, which `timm_routing.train_capsnet` uses.

Papers:
* `Exploring Dynamic Routing As A Pooling Layer` - ICCV 2019 workshop (SDL-CV)
* `Dynamic Routing Between Capsules` - https://arxiv.org/abs/1710.09829
"""
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn

from timm.layers import get_device_dtype, to_2tuple
from timm.models import generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from ..layers import (
    CapsuleDecoder, ClassCapsuleHead, DigitCapsules, PrimaryCapsules, attach_aux_loss, class_mask, squash,
)
from ..loss import multi_hot, reconstruction_loss
from ._base import StemStagesNet
from ._cfg import mnist_variant_cfg
from ._pretrained import build_routing_model, shipped
from .resnet_cifar import CifarResNet

__all__ = ['CapsNetResNet', 'CapsNet']

CAPSULE_POOL_TYPES = ('capsule', '')


def _check_pool(global_pool: str) -> str:
    if global_pool not in CAPSULE_POOL_TYPES:
        raise ValueError(
            f"CapsNet models take global_pool 'capsule' (class capsules) or '' (no head), got {global_pool!r}.")
    return global_pool


def _capsule_lengths(capsules: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(capsules, dim=-1)


class _CapsuleOutputMixin:
    """Class-capsule outputs shared by both CapsNet models: `head` (capsules), `decoder`, `global_pool`."""

    def _init_capsule_outputs(self, num_classes: int, num_capsules: Optional[int], img_size, recon_weight: float):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f'num_classes must be an int >= 0, got {num_classes!r}.')
        if num_capsules is None:
            num_capsules = num_classes or 10
        if num_classes and num_capsules != num_classes:
            raise ValueError(f'num_capsules={num_capsules} differs from num_classes={num_classes}.')
        if recon_weight < 0:
            raise ValueError(f'recon_weight must be >= 0, got {recon_weight}.')
        self.num_classes = num_classes
        self.num_capsules = num_capsules
        self.img_size = to_2tuple(img_size)
        self.recon_weight = recon_weight

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == '':
            return x
        capsules = self.head(x)
        if pre_logits or self.num_classes == 0:
            return capsules.flatten(1)
        return _capsule_lengths(capsules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images = x
        x = self.forward_features(x)
        if self.global_pool == '':
            return x
        capsules = self.head(x)
        if self.num_classes == 0:
            return capsules.flatten(1)
        lengths = _capsule_lengths(capsules)
        if not torch.jit.is_scripting() and self.training and self.decoder is not None and self.recon_weight > 0:
            lengths = self._attach_reconstruction_loss(lengths, capsules, images)
        return lengths

    @torch.jit.unused
    def _attach_reconstruction_loss(
            self, lengths: torch.Tensor, capsules: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """The lengths, carrying `recon_weight` x the reconstruction loss of the longest capsule into backward."""
        recon = self.decoder(capsules, class_mask(lengths.detach()))
        return attach_aux_loss(lengths, reconstruction_loss(recon, images, self.recon_weight))

    @torch.jit.ignore
    def route(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Class capsules `(B, K, D)` and their coupling coefficients for the images `x`."""
        return self.head.route(self.forward_features(x))

    @torch.jit.ignore
    def forward_train(self, x: torch.Tensor, target: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """Lengths `(B, K)`, capsules `(B, K, D)` and, with a decoder, the reconstruction `(B, C, H, W)` of the
        capsules of `target` (indices `(B,)`, `(B, n)` or a multi-hot; the longest capsule without a target)."""
        if self.global_pool == '' or self.num_classes == 0:
            raise ValueError('forward_train needs the class capsules: num_classes > 0 and global_pool="capsule".')
        capsules = self.head(self.forward_features(x))
        lengths = _capsule_lengths(capsules)
        out = dict(lengths=lengths, capsules=capsules)
        if self.decoder is not None:
            mask = class_mask(lengths.detach()) if target is None else \
                multi_hot(target, self.num_classes, lengths.dtype)
            out['reconstruction'] = self.decoder(capsules, mask)
        return out

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        """`num_classes` class capsules (new votes, or transformation matrices, and decoder input layer if it
        changes; 0 keeps the capsules and returns them flattened); `global_pool=None` keeps the head, '' removes
        it."""
        if global_pool is not None:
            self.global_pool = _check_pool(global_pool)
        if num_classes and num_classes != self.num_capsules:
            dd = get_device_dtype(self)
            self.head = self._make_head(num_classes, **dd).train(self.training)
            if self.decoder is not None:
                self.decoder.fc1 = nn.Linear(
                    num_classes * self.class_capsule_dim, self.decoder.fc1.out_features, **dd).train(self.training)
            self.num_capsules = num_classes
        self.num_classes = num_classes
        self.head_hidden_size = self.num_capsules * self.class_capsule_dim


class CapsNetResNet(_CapsuleOutputMixin, StemStagesNet):
    """CIFAR ResNet primary-capsule extractor, class capsules by routing and Sabour's decoder (paper Fig. 2).

    Args:
        depth: ResNet depth (6n + 2); 20 in the paper.
        widths: Filters of the three stages.
        num_classes: Class capsules whose lengths are the output; 0 returns the capsules flattened.
        in_chans: Input channels.
        img_size: Input size; the decoder reconstructs images of this size.
        global_pool: 'capsule' or '' (the unpooled feature map).
        capsule_dim: Neurons per child capsule, the y of R-x-y; must divide the last stage's width.
        class_capsule_dim: Neurons per class capsule.
        routing_iters: Routing iterations.
        routing_lam: λ of the routing softmax, the x of R-x-y.
        routing_normalize: Normalise the votes before routing.
        decoder: Build the reconstruction decoder.
        recon_weight: Weight of the reconstruction loss attached in training mode (0 disables it).
        num_capsules: Class capsules kept when `num_classes=0` (default 10).
        drop_path_rate: Stochastic depth of the backbone.
    """

    def __init__(
            self,
            depth: int = 20,
            widths: tuple = (16, 32, 64),
            num_classes: int = 10,
            in_chans: int = 1,
            img_size: Union[int, Tuple[int, int]] = 40,
            global_pool: str = 'capsule',
            capsule_dim: int = 32,
            class_capsule_dim: int = 16,
            routing_iters: int = 1,
            routing_lam: float = 1.0,
            routing_normalize: bool = False,
            decoder: bool = True,
            recon_weight: float = 0.0005,
            num_capsules: Optional[int] = None,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            output_stride: int = 4,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        if drop_rate:
            raise ValueError(f'CapsNetResNet has no dropout before its capsules; drop_rate must be 0, got {drop_rate}.')
        self._init_capsule_outputs(num_classes, num_capsules, img_size, recon_weight)
        backbone = CifarResNet(
            depth, widths, num_classes=0, in_chans=in_chans, global_pool='', drop_path_rate=drop_path_rate,
            output_stride=output_stride, **dd)
        self.in_chans = in_chans
        self.grad_checkpointing = False
        self.stem, self.stages, self.feature_info = backbone.stem, backbone.stages, backbone.feature_info
        self.num_features = widths[-1]
        self.global_pool = _check_pool(global_pool)
        self.class_capsule_dim = class_capsule_dim
        self._head_args = dict(
            capsule_dim=capsule_dim, class_capsule_dim=class_capsule_dim, iters=routing_iters, lam=routing_lam,
            normalize=routing_normalize, activation='squash')
        self.head = self._make_head(self.num_capsules, **dd)
        self.head_hidden_size = self.num_capsules * class_capsule_dim
        self.decoder = CapsuleDecoder(
            self.num_capsules, class_capsule_dim, self.img_size, in_chans, **dd) if decoder else None

    def _make_head(self, num_classes: int, device=None, dtype=None) -> ClassCapsuleHead:
        return ClassCapsuleHead(self.num_features, num_classes, device=device, dtype=dtype, **self._head_args)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r'^stem',
            blocks=r'^stages\.(\d+)' if coarse else r'^stages\.(\d+)\.(\d+)',
        )

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ):
        """Drops the stages after the last one asked for, the capsule head and the decoder."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:max_index + 1]
        self.num_features = self.feature_info[max_index]['num_chs']
        if prune_head or max_index < len(self.feature_info) - 1:
            self.global_pool = ''
            self.decoder = None
            self.head = nn.Identity()
            self.num_classes = 0
            self.head_hidden_size = self.num_features
        return take_indices


class CapsNet(_CapsuleOutputMixin, nn.Module):
    """Sabour et al. 2017 CapsNet: Conv1, PrimaryCaps, DigitCaps (routing over parents) and the decoder.

    Args:
        num_classes: Digit capsules; 0 returns the capsules flattened.
        in_chans: Input channels.
        img_size: Input size; fixes the number of primary capsules and the decoder output.
        global_pool: 'capsule' or '' (the PrimaryCaps map, unsquashed).
        conv_chs: Filters of Conv1.
        primary_types: Primary capsule types (32).
        primary_dim: Neurons per primary capsule (8).
        class_capsule_dim: Neurons per digit capsule (16).
        routing_iters: Sabour's r (3).
        decoder: Build the reconstruction decoder.
        recon_weight: Weight of the reconstruction loss attached in training mode.
        num_capsules: Digit capsules kept when `num_classes=0` (default 10).
    """

    def __init__(
            self,
            num_classes: int = 10,
            in_chans: int = 1,
            img_size: Union[int, Tuple[int, int]] = 28,
            global_pool: str = 'capsule',
            conv_chs: int = 256,
            primary_types: int = 32,
            primary_dim: int = 8,
            class_capsule_dim: int = 16,
            routing_iters: int = 3,
            decoder: bool = True,
            recon_weight: float = 0.0005,
            num_capsules: Optional[int] = None,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self._init_capsule_outputs(num_classes, num_capsules, img_size, recon_weight)
        h, w = self.img_size
        if min(h, w) < 25:
            raise ValueError(f'CapsNet needs inputs of at least 25x25 (two 9x9 convolutions), got {self.img_size}.')
        self.in_chans = in_chans
        self.global_pool = _check_pool(global_pool)
        self.stem = nn.Sequential()
        self.stem.add_module('conv', nn.Conv2d(in_chans, conv_chs, 9, **dd))
        self.stem.add_module('act', nn.ReLU(inplace=True))
        self.primary = PrimaryCapsules(conv_chs, primary_types, primary_dim, 9, 2, **dd)
        self.primary_size = ((h - 8 - 9) // 2 + 1, (w - 8 - 9) // 2 + 1)
        self.num_children = primary_types * self.primary_size[0] * self.primary_size[1]
        self.primary_dim = primary_dim
        self.num_features = primary_types * primary_dim
        self.feature_info = [
            dict(num_chs=conv_chs, reduction=1, module='stem'),
            dict(num_chs=self.num_features, reduction=2, module='primary.conv'),
        ]
        self.class_capsule_dim = class_capsule_dim
        self.routing_iters = routing_iters
        self.head = self._make_head(self.num_capsules, **dd)
        self.head_hidden_size = self.num_capsules * class_capsule_dim
        self.decoder = CapsuleDecoder(
            self.num_capsules, class_capsule_dim, self.img_size, in_chans, **dd) if decoder else None

    def _make_head(self, num_classes: int, device=None, dtype=None) -> nn.Module:
        return _PrimaryToDigit(
            self.primary.capsule_types, self.primary_dim,
            DigitCapsules(self.num_children, self.primary_dim, num_classes, self.class_capsule_dim,
                          self.routing_iters, device=device, dtype=dtype))

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r'^stem', blocks=r'^primary')

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        if enable:
            raise RuntimeError('CapsNet has two layers; gradient checkpointing is not supported.')

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """The maps of Conv1 (level 0) and of the PrimaryCaps convolution (level 1); see timm's API."""
        if output_fmt != 'NCHW':
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}.")
        take_indices, _ = feature_take_indices(2, indices)
        first = self.stem(x)
        second = self.primary.conv(first)
        intermediates = [f for i, f in enumerate((first, second)) if i in take_indices]
        if intermediates_only:
            return intermediates
        return second, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ):
        """Drops the head and decoder (and PrimaryCaps when only Conv1 is kept)."""
        take_indices, max_index = feature_take_indices(2, indices)
        if max_index == 0:
            self.primary.conv = nn.Identity()
            self.num_features = self.feature_info[0]['num_chs']
        if prune_head or max_index == 0:
            self.global_pool = ''
            self.decoder = None
            self.head = nn.Identity()
            self.num_classes = 0
            self.head_hidden_size = self.num_features
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The PrimaryCaps convolution's map `(B, 32·8, H', W')`, before the capsules are squashed."""
        return self.primary.conv(self.stem(x))


class _PrimaryToDigit(nn.Module):
    """Squashes the primary capsules of a PrimaryCaps map, then routes them into the digit capsules."""

    def __init__(self, capsule_types: int, capsule_dim: int, digits: DigitCapsules):
        super().__init__()
        self.capsule_types, self.capsule_dim = capsule_types, capsule_dim
        self.digits = digits

    def _children(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        x = x.view(B, self.capsule_types, self.capsule_dim, H * W).transpose(2, 3)
        return squash(x.reshape(B, -1, self.capsule_dim))

    def route(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.digits.route(self._children(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.digits(self._children(x))


def _adapt_decoder_channels(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Pretrained grey reconstructions for a model with more input channels: the decoder's output layer is repeated
    per channel (timm adapts the first convolution the same way)."""
    decoder = getattr(model, 'decoder', None)
    weight = state_dict.get('decoder.fc3.weight')
    if decoder is None or weight is None or weight.shape == decoder.fc3.weight.shape:
        return state_dict
    pixels = weight.shape[0]
    if decoder.fc3.weight.shape[0] % pixels or decoder.fc3.weight.shape[1:] != weight.shape[1:]:
        raise ValueError(
            f'decoder.fc3 of the checkpoint ({tuple(weight.shape)}) cannot be adapted to the model\'s '
            f'{tuple(decoder.fc3.weight.shape)}: the image size differs.')
    repeats = decoder.fc3.weight.shape[0] // pixels
    state_dict = dict(state_dict)
    state_dict['decoder.fc3.weight'] = weight.repeat(repeats, 1)
    state_dict['decoder.fc3.bias'] = state_dict['decoder.fc3.bias'].repeat(repeats)
    return state_dict


def _create_capsnet(model_cls: type, variant: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    feature_cfg = dict(out_indices=(0, 1, 2), flatten_sequential=True) if model_cls is CapsNetResNet else \
        dict(out_indices=(0, 1), feature_cls='getter')  # two levels: Conv1 and PrimaryCaps
    return build_routing_model(
        model_cls, variant, pretrained, feature_cfg=feature_cfg, filter_fn=_adapt_decoder_channels, **kwargs)


def _cfg(url: str = '', img_size: int = 40, **kwargs: Any) -> Dict[str, Any]:
    """MNIST-variant cfg: grey images of `img_size`, raw pixels (mean 0, std 1), fixed size (the decoder)."""
    pool = -(-img_size // 4)
    return mnist_variant_cfg(img_size, url, **{
        'pool_size': (pool, pool), 'fixed_input_size': True, 'first_conv': 'stem.conv',
        'classifier': ('head.votes', 'decoder.fc1'), 'paper_ids': 'arXiv:1710.09829',
        'paper_name': 'Dynamic Routing Between Capsules', **kwargs})


default_cfgs = generate_default_cfgs({
    'capsnet_resnet20': _cfg(img_size=40),
    'capsnet_resnet20_lam5': _cfg(img_size=36),
    'capsnet': _cfg(img_size=28, pool_size=(6, 6), classifier=('head.digits', 'decoder.fc1')),
    # Sabour's affNIST experiment: 40x40 inputs (13.5 M parameters); weights are not shipped (54 MB)
    'capsnet.mnist_shift': _cfg(img_size=40, pool_size=(12, 12), classifier=('head.digits', 'decoder.fc1')),
    # weights trained here (python -m timm_routing.train_capsnet; gpu_: on one H200), results/<name>/ the evidence
    **shipped({
        'capsnet_resnet20.cpu_mnist_shift': _cfg(img_size=40),
        # the default of capsnet_resnet20_lam5 (the first with weights): gpu_multimnist trained on
        'capsnet_resnet20_lam5.cpu_ft_multimnist': _cfg(img_size=36),
        'capsnet_resnet20_lam5.gpu_multimnist': _cfg(img_size=36),
    }),
})


@register_model
def capsnet_resnet20(pretrained: bool = False, **kwargs: Any) -> CapsNetResNet:
    """ResNet-20 + class capsules by routing (R-1-32: λ = 1, capsules of 32) + decoder, Zhao & Huang §4.3."""
    model_args = dict(depth=20, capsule_dim=32, routing_lam=1.0)
    return _create_capsnet(CapsNetResNet, 'capsnet_resnet20', pretrained, **dict(model_args, **kwargs))


@register_model
def capsnet_resnet20_lam5(pretrained: bool = False, **kwargs: Any) -> CapsNetResNet:
    """R-5-32 (λ = 5), the paper's MultiMNIST setting (36x36 input by default)."""
    model_args = dict(depth=20, capsule_dim=32, routing_lam=5.0, img_size=36)
    return _create_capsnet(CapsNetResNet, 'capsnet_resnet20_lam5', pretrained, **dict(model_args, **kwargs))


@register_model
def capsnet(pretrained: bool = False, **kwargs: Any) -> CapsNet:
    """Sabour et al. 2017 CapsNet, the baseline of Zhao & Huang Table 4 (8.2 M parameters at 28x28)."""
    return _create_capsnet(CapsNet, 'capsnet', pretrained, **kwargs)
