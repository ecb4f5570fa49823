""" Class capsules, primary capsules, the reconstruction decoder and the auxiliary-loss hook of the CapsNet family

* `ClassCapsuleHead` (Zhao & Huang §4.3, Fig. 2): a feature map -> `num_classes` class capsules by the paper's routing
  (softmax over children, λ, squash). The children are capsules of `capsule_dim` consecutive channels at every
  position of the map, as in the pooling head; each casts one vote per class through a matrix shared over positions
  (a grouped 1x1 convolution), so the routing adds `in_chs * num_classes * class_capsule_dim` parameters
  (10,240 on ResNet-20's 64 channels) where Sabour's per-capsule matrices would add millions. Class j's parent is the
  routed sum of the votes for j: the pooling head's routing with the votes as children.
* `PrimaryCapsules`, `DigitCapsules`: Sabour et al.'s layers (convolutional capsules; a matrix per child capsule and
  class, routing with the softmax over parents).
* `CapsuleDecoder`: Sabour's reconstruction network, class capsules masked to one class -> 512 -> 1024 -> pixels.
* `attach_aux_loss`: makes `loss.backward()` on anything computed from a tensor also back-propagate an auxiliary
  loss, which is how a reconstruction loss trains under timm's train.py (it only calls `model(x)` and its criterion).
"""
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from timm.layers import register_notrace_function

from .routing import _check_routing_args, create_routing_act, route_by_agreement, route_over_parents, squash

__all__ = ['ClassCapsuleHead', 'PrimaryCapsules', 'DigitCapsules', 'CapsuleDecoder', 'attach_aux_loss', 'class_mask']


class _AttachAuxLoss(torch.autograd.Function):
    """Identity on `x`; the backward also sends a gradient of 1 into the scalar `aux_loss`."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, aux_loss: torch.Tensor):
        ctx.aux_shape, ctx.aux_dtype = aux_loss.shape, aux_loss.dtype
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_x: torch.Tensor):
        return grad_x, torch.ones(ctx.aux_shape, dtype=ctx.aux_dtype, device=grad_x.device)


@register_notrace_function
def attach_aux_loss(x: torch.Tensor, aux_loss: torch.Tensor) -> torch.Tensor:
    """Returns `x` unchanged; a backward pass through it also adds `aux_loss` (a scalar) to the minimised objective.

    The gradient reaching `aux_loss` is 1 whatever loss is built on `x`, so `criterion(attach_aux_loss(x, a), t)`
    trains like `criterion(x, t) + a` (the value reported by the criterion leaves `a` out).
    """
    if aux_loss.dim() != 0:
        raise ValueError(f'aux_loss must be a scalar, got shape {tuple(aux_loss.shape)}.')
    if torch.jit.is_scripting() or not (torch.is_grad_enabled() and aux_loss.requires_grad):
        return x
    return _AttachAuxLoss.apply(x, aux_loss)


@register_notrace_function
def class_mask(lengths: torch.Tensor, target: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One-hot `(B, K)` mask of the capsules to reconstruct: `target` (labels `(B,)`) or else the longest capsule."""
    if target is None:
        target = lengths.argmax(-1)
    if target.dim() != 1 or target.shape[0] != lengths.shape[0]:
        raise ValueError(f'target must be ({lengths.shape[0]},) class indices, got shape {tuple(target.shape)}.')
    return F.one_hot(target.long(), lengths.shape[-1]).to(lengths.dtype)


class ClassCapsuleHead(nn.Module):
    """Routes a `(B, C, H, W)` map into `num_classes` class capsules `(B, num_classes, class_capsule_dim)`.

    Args:
        in_chs: Channels C of the map; `capsule_dim` must divide it.
        num_classes: Class capsules K.
        capsule_dim: Neurons per child capsule (the y of the paper's R-x-y): the map holds `C / capsule_dim`
            capsules at each of its H·W positions.
        class_capsule_dim: Neurons per class capsule (16 as in Sabour's DigitCaps).
        iters: Routing iterations of Algorithm 1.
        lam: λ of the routing softmax (the x of R-x-y).
        normalize: Normalise the votes to unit length before routing.
        activation: Activation of the class capsules; 'squash' so that lengths are class probabilities.
    """

    def __init__(
            self,
            in_chs: int,
            num_classes: int,
            capsule_dim: int = 32,
            class_capsule_dim: int = 16,
            iters: int = 1,
            lam: float = 1.0,
            normalize: bool = False,
            activation: Union[None, str] = 'squash',
            device=None,
            dtype=None,
    ):
        super().__init__()
        for name, value in (('in_chs', in_chs), ('num_classes', num_classes), ('capsule_dim', capsule_dim),
                            ('class_capsule_dim', class_capsule_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'ClassCapsuleHead: {name} must be a positive int, got {value!r}.')
        if in_chs % capsule_dim:
            raise ValueError(
                f'ClassCapsuleHead: capsule_dim={capsule_dim} does not divide the {in_chs} input channels.')
        _check_routing_args(iters, lam)
        self.in_chs, self.num_classes = in_chs, num_classes
        self.capsule_dim, self.class_capsule_dim = capsule_dim, class_capsule_dim
        self.capsule_types = in_chs // capsule_dim
        self.iters, self.lam, self.normalize, self.activation = iters, lam, normalize, activation
        # one (class_capsule_dim x capsule_dim) matrix per capsule type and class, shared over positions
        self.votes = nn.Conv2d(
            in_chs, self.capsule_types * num_classes * class_capsule_dim, 1, groups=self.capsule_types, bias=False,
            device=device, dtype=dtype)
        self.act = create_routing_act(activation)

    def route(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns the class capsules `(B, K, D)` and the couplings `(B, K, T, H, W)` (T capsule types per position);
        for each class they sum to 1 over the T·H·W children."""
        B, _, H, W = x.shape
        T, K, D = self.capsule_types, self.num_classes, self.class_capsule_dim
        u = self.votes(x).view(B, T, K, D, H * W).permute(0, 2, 1, 4, 3).reshape(B, K, T * H * W, D)
        # dynamic_routing's two steps, with the activation as a module so that the head scripts
        s, c = route_by_agreement(u, self.iters, self.lam, self.normalize)
        return self.act(s), c.view(B, K, T, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.route(x)[0]

    def extra_repr(self) -> str:
        return (f'capsule_dim={self.capsule_dim}, class_capsule_dim={self.class_capsule_dim}, iters={self.iters}, '
                f'lam={self.lam}, normalize={self.normalize}, activation={self.activation!r}')


class PrimaryCapsules(nn.Module):
    """Sabour's PrimaryCaps: a convolution to `capsule_types * capsule_dim` channels, squashed per capsule.

    Returns `(B, N, capsule_dim)` with N = capsule_types · H' · W', capsules ordered type-major.
    """

    def __init__(
            self, in_chs: int, capsule_types: int = 32, capsule_dim: int = 8, kernel_size: int = 9, stride: int = 2,
            device=None, dtype=None):
        super().__init__()
        self.capsule_types, self.capsule_dim = capsule_types, capsule_dim
        self.conv = nn.Conv2d(
            in_chs, capsule_types * capsule_dim, kernel_size, stride=stride, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        B, _, H, W = x.shape
        x = x.view(B, self.capsule_types, self.capsule_dim, H * W).transpose(2, 3)
        return squash(x.reshape(B, -1, self.capsule_dim))


class DigitCapsules(nn.Module):
    """Sabour's DigitCaps: a `(out_dim x in_dim)` matrix per child capsule and class, routing over parents.

    Args:
        num_children: Child capsules N (fixed by the input size: 32·6·6 = 1152 at 28x28).
        in_dim: Neurons per child capsule.
        num_classes: Parent capsules.
        out_dim: Neurons per parent capsule.
        iters: Sabour's r, parents computed (3 in the paper).
    """

    def __init__(
            self, num_children: int, in_dim: int, num_classes: int, out_dim: int = 16, iters: int = 3,
            device=None, dtype=None):
        super().__init__()
        _check_routing_args(iters, 1.0)
        if iters < 1:
            raise ValueError(f'DigitCapsules: iters must be >= 1, got {iters}.')
        self.num_children, self.num_classes, self.iters = num_children, num_classes, iters
        self.weight = nn.Parameter(torch.empty(num_classes, num_children, out_dim, in_dim, device=device, dtype=dtype))
        nn.init.normal_(self.weight, std=0.01)

    def route(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns the parents `(B, K, out_dim)` and the couplings `(B, K, N)` (summing to 1 over K)."""
        return route_digit_capsules(x, self.weight, self.iters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.route(x)[0]


@register_notrace_function
def route_digit_capsules(x: torch.Tensor, weight: torch.Tensor, iters: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Votes `W_kn x_n` of the child capsules `x` `(B, N, in_dim)` for each class k, routed over the parents."""
    if x.shape[1] != weight.shape[1]:
        raise ValueError(
            f'DigitCapsules expects {weight.shape[1]} child capsules, got {x.shape[1]} '
            f'(the input image size differs from the one the model was built for).')
    u = torch.einsum('knoi,bni->bkno', weight, x)
    return route_over_parents(u, iters, 1.0, False, 'squash')


class CapsuleDecoder(nn.Module):
    """Sabour's reconstruction network: masked class capsules `(B, K, D)` -> 512 -> 1024 -> `(B, C, H, W)` in [0, 1]."""

    def __init__(
            self, num_classes: int, capsule_dim: int, img_size: Tuple[int, int], in_chans: int = 1,
            hidden: Tuple[int, int] = (512, 1024), device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.out_shape = (in_chans, int(img_size[0]), int(img_size[1]))
        self.fc1 = nn.Linear(num_classes * capsule_dim, hidden[0], **dd)
        self.act1 = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden[0], hidden[1], **dd)
        self.act2 = nn.ReLU(inplace=True)
        self.fc3 = nn.Linear(hidden[1], in_chans * self.out_shape[1] * self.out_shape[2], **dd)

    def forward(self, capsules: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = (capsules * mask.unsqueeze(-1)).flatten(1)
        x = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.sigmoid(self.fc3(x)).view(-1, *self.out_shape)
