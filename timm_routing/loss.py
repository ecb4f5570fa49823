""" Losses of the CapsNet family (Sabour et al. 2017, §3 and §4.1)

* `margin_loss`: `L_k = T_k max(0, m⁺ - ‖v_k‖)² + λ (1 - T_k) max(0, ‖v_k‖ - m⁻)²`, summed over classes and averaged
  over the batch, with m⁺ = 0.9, m⁻ = 0.1, λ = 0.5. Targets are class indices `(B,)` or, for several objects per
  image (MultiMNIST), index pairs `(B, 2)` or a multi-hot `(B, K)`.
* `reconstruction_loss`: the sum of squared pixel errors per image, averaged over the batch, times 0.0005.
* `MarginLoss`: `margin_loss` as a criterion `(output, target)`, so timm's `ClassificationTask(model,
  criterion=MarginLoss())` trains the capsule lengths a CapsNet model returns.
* `CapsuleLoss`: both, on the dict of `forward_train(x, target)`.
"""
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from timm.layers import register_notrace_function

__all__ = ['margin_loss', 'reconstruction_loss', 'multi_hot', 'MarginLoss', 'CapsuleLoss']


def multi_hot(target: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """`(B,)` indices, `(B, n)` index tuples or a `(B, K)` multi-hot -> a `(B, K)` 0/1 tensor."""
    if target.dim() == 2 and target.shape[1] == num_classes and target.dtype.is_floating_point:
        return target.to(dtype)
    if target.dtype.is_floating_point:
        raise TypeError(f'Class-index targets must be integers, got {target.dtype} of shape {tuple(target.shape)}.')
    if target.dim() == 1:
        target = target[:, None]
    if target.dim() != 2:
        raise ValueError(f'target must be (B,), (B, n) indices or a (B, K) multi-hot, got shape {tuple(target.shape)}.')
    if target.numel() and (target.min() < 0 or target.max() >= num_classes):
        raise ValueError(f'target holds class indices outside [0, {num_classes}).')
    return F.one_hot(target.long(), num_classes).amax(1).to(dtype)


def margin_loss(
        lengths: torch.Tensor,
        target: torch.Tensor,
        m_pos: float = 0.9,
        m_neg: float = 0.1,
        down_weight: float = 0.5,
) -> torch.Tensor:
    """Sabour's margin loss of class-capsule lengths `(B, K)` (see the module docstring)."""
    if lengths.dim() != 2:
        raise ValueError(f'lengths must be (B, K), got shape {tuple(lengths.shape)}.')
    t = multi_hot(target, lengths.shape[1], torch.float32)
    lengths = lengths.float()
    present = t * F.relu(m_pos - lengths).pow(2)
    absent = down_weight * (1. - t) * F.relu(lengths - m_neg).pow(2)
    return (present + absent).sum(1).mean()


@register_notrace_function
def reconstruction_loss(reconstruction: torch.Tensor, images: torch.Tensor, weight: float = 0.0005) -> torch.Tensor:
    """`weight` times the per-image sum of squared errors, averaged over the batch."""
    if reconstruction.shape != images.shape:
        raise ValueError(
            f'reconstruction {tuple(reconstruction.shape)} and images {tuple(images.shape)} differ in shape.')
    return weight * (reconstruction.float() - images.float()).pow(2).flatten(1).sum(1).mean()


class MarginLoss(nn.Module):
    """Margin loss as a `(output, target)` criterion on class-capsule lengths."""

    def __init__(self, m_pos: float = 0.9, m_neg: float = 0.1, down_weight: float = 0.5):
        super().__init__()
        self.m_pos, self.m_neg, self.down_weight = m_pos, m_neg, down_weight

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return margin_loss(output, target, self.m_pos, self.m_neg, self.down_weight)


class CapsuleLoss(nn.Module):
    """Margin loss plus masked reconstruction loss, on the output dict of a CapsNet model's `forward_train`.

    Args:
        recon_weight: Weight of the summed squared reconstruction error (0.0005 in Sabour et al.; 0 to drop it).
    """

    def __init__(self, recon_weight: float = 0.0005, m_pos: float = 0.9, m_neg: float = 0.1, down_weight: float = 0.5):
        super().__init__()
        if recon_weight < 0:
            raise ValueError(f'recon_weight must be >= 0, got {recon_weight}.')
        self.margin = MarginLoss(m_pos, m_neg, down_weight)
        self.recon_weight = recon_weight

    def forward(
            self, output: Dict[str, torch.Tensor], target: torch.Tensor, images: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:
        """Returns `loss` (the total), `margin` and `reconstruction` (0 without a reconstruction)."""
        margin = self.margin(output['lengths'], target)
        recon = output.get('reconstruction')
        if recon is None or self.recon_weight == 0:
            recon_loss = margin.new_zeros(())
        else:
            if images is None:
                raise ValueError('CapsuleLoss needs the input images to score the reconstruction.')
            recon_loss = reconstruction_loss(recon, images, self.recon_weight)
        return dict(loss=margin + recon_loss, margin=margin, reconstruction=recon_loss)
