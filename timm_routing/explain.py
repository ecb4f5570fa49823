""" Coupling-coefficient heatmaps: where a routing pool looks (paper §4.2, Table 3)

The coupling coefficients `c` of a routing pooling head weigh the spatial positions of each channel group; they sum
to 1 over the positions. `coupling_maps` returns them per image and group, upsampled to the input size;
`heatmaps` reduces them to one map per image (the mean over groups, or one group); `overlay` and `save_grid` render
them as in the paper's Table 3 (images on the top row, heatmaps below).
"""
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from .layers import ClassCapsuleHead, RoutingPool2d

__all__ = [
    'find_routing_pool', 'coupling_maps', 'heatmaps', 'overlay', 'save_grid', 'grad_cam', 'deletion_insertion',
    'curve_area',
]


def find_routing_pool(model: nn.Module) -> nn.Module:
    """The model's routing layer: its routing pool (`RoutingPool2d`) or its class capsules (`ClassCapsuleHead`).

    Raises:
        ValueError: the model has no routing layer, or more than one.
    """
    pools = [m for m in model.modules() if isinstance(m, (RoutingPool2d, ClassCapsuleHead))]
    if len(pools) != 1:
        raise ValueError(
            f'{type(model).__name__} has {len(pools)} routing layers; heatmaps need exactly one '
            f"(create the model with global_pool='routing', or use a capsnet_resnet model).")
    return pools[0]


@torch.no_grad()
def coupling_maps(model: nn.Module, x: torch.Tensor, upsample: bool = True) -> torch.Tensor:
    """Coupling coefficients of the routing layer for a batch, `(B, G, H, W)`.

    For a routing pool, G is its channel groups; for class capsules (`capsnet_resnet20`) G is the classes, and map k
    is how much each position contributes to class capsule k (its capsule types summed).

    Args:
        model: A timm model with a routing pooling head or class capsules (`forward_features` feeds it).
        x: Normalised input batch `(B, C, H, W)`.
        upsample: Resize the maps bilinearly to the input's H x W (else the feature map's size).
    """
    layer = find_routing_pool(model)
    _, couplings = layer.route(model.forward_features(x))
    couplings = couplings.float()
    if couplings.dim() == 5:  # class capsules: (B, K, T, H, W)
        couplings = couplings.sum(2)
    if upsample:
        couplings = F.interpolate(couplings, size=x.shape[-2:], mode='bilinear', align_corners=False)
    return couplings


def heatmaps(maps: torch.Tensor, group: Union[None, int, torch.Tensor] = None) -> torch.Tensor:
    """One `(B, H, W)` map per image in [0, 1]: the mean over the channel groups, group `group`, or with a `(B,)`
    tensor each image's own group (e.g. its predicted class for class capsules); each map is scaled by its own range
    (a constant map becomes 0)."""
    if isinstance(group, torch.Tensor):
        if group.shape != maps.shape[:1] or group.min() < 0 or group.max() >= maps.shape[1]:
            raise ValueError(f'group must hold one index in [0, {maps.shape[1]}) per image, got {group.tolist()}.')
        heat = maps[torch.arange(len(maps)), group]
    elif group is not None:
        if not 0 <= group < maps.shape[1]:
            raise ValueError(f'group {group} out of range: the maps have {maps.shape[1]} groups.')
        heat = maps[:, group]
    else:
        heat = maps.mean(1)
    low = heat.amin((1, 2), keepdim=True)
    span = heat.amax((1, 2), keepdim=True) - low
    return torch.where(span > 0, (heat - low) / span.clamp_min(1e-12), torch.zeros_like(heat))


def _jet(values: np.ndarray) -> np.ndarray:
    """Jet colour map of values in [0, 1] -> uint8 RGB."""
    v = np.clip(values, 0., 1.)[..., None]
    rgb = np.clip(1.5 - np.abs(4. * v - np.array([3., 2., 1.])), 0., 1.)
    return (rgb * 255).astype(np.uint8)


def overlay(image: Union[Image.Image, np.ndarray], heat: Union[torch.Tensor, np.ndarray], alpha: float = 0.5,
            scale: int = 1) -> Image.Image:
    """The image blended with the jet-coloured heatmap (both at the heatmap's size, enlarged `scale` times)."""
    heat = heat.detach().cpu().numpy() if isinstance(heat, torch.Tensor) else np.asarray(heat)
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image).squeeze())
    img = img.convert('RGB').resize((heat.shape[1], heat.shape[0]), Image.BILINEAR)
    blended = (1 - alpha) * np.asarray(img, dtype=np.float32) + alpha * _jet(heat).astype(np.float32)
    out = Image.fromarray(blended.clip(0, 255).astype(np.uint8))
    return out.resize((out.width * scale, out.height * scale), Image.NEAREST) if scale > 1 else out


def save_grid(images: Sequence[Union[Image.Image, np.ndarray]], heats: torch.Tensor, path: Union[str, Path],
              scale: int = 4, alpha: float = 0.6) -> Path:
    """Writes a PNG like the paper's Table 3: the images on the top row, their heatmap overlays below."""
    if len(images) != len(heats):
        raise ValueError(f'{len(images)} images but {len(heats)} heatmaps.')
    h, w = heats.shape[-2:]
    tile_h, tile_w = h * scale, w * scale
    grid = Image.new('RGB', (tile_w * len(images), tile_h * 2), 'white')
    for i, (image, heat) in enumerate(zip(images, heats)):
        img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image).squeeze())
        grid.paste(img.convert('RGB').resize((tile_w, tile_h), Image.NEAREST), (i * tile_w, 0))
        grid.paste(overlay(img, heat, alpha=alpha).resize((tile_w, tile_h), Image.NEAREST), (i * tile_w, tile_h))
    path = Path(path)
    grid.save(path)
    return path


def grad_cam(model: nn.Module, x: torch.Tensor, target: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017) on the model's last feature map, `(B, H, W)` upsampled to the input, in [0, 1].

    The map is `ReLU(Σ_k α_k A_k)` with `α_k` the spatial mean of `∂y_target / ∂A_k`, `A = forward_features(x)`;
    `target` defaults to the predicted class.
    """
    model.eval()
    with torch.enable_grad():
        feats = model.forward_features(x).detach().requires_grad_(True)
        logits = model.forward_head(feats)
        if target is None:
            target = logits.argmax(1)
        score = logits.gather(1, target.view(-1, 1)).sum()
        grads, = torch.autograd.grad(score, feats)
    cam = torch.relu((grads.mean((2, 3), keepdim=True) * feats).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode='bilinear', align_corners=False)[:, 0]
    return heatmaps(cam.unsqueeze(1).detach())


@torch.no_grad()
def deletion_insertion(model: nn.Module, x: torch.Tensor, heat: torch.Tensor, target: torch.Tensor,
                       baseline: Optional[torch.Tensor] = None, steps: int = 16):
    """Deletion and insertion curves (Petsiuk et al. 2018) of saliency maps.

    Pixels are ranked by `heat` (hottest first). Deletion replaces the top fraction `k / steps` of them by `baseline`
    and records the target's probability; insertion starts from `baseline` and puts the top fraction back. A faithful
    map makes the deletion curve fall fast (low area) and the insertion curve rise fast (high area).

    Args:
        x: Normalised inputs `(B, C, H, W)`.
        heat: Saliency `(B, H, W)`.
        target: Class per image `(B,)`.
        baseline: Image the removed pixels take (default: zeros, the dataset mean after normalisation).
        steps: Fractions 0, 1/steps, ..., 1.

    Returns:
        `(deletion, insertion)`: probabilities `(steps + 1, B)`; their trapezoid areas are `curve_area(...)`.
    """
    model.eval()
    baseline = torch.zeros_like(x) if baseline is None else baseline
    b, _, h, w = x.shape
    order = heat.reshape(b, -1).argsort(dim=1, descending=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(h * w, device=x.device).expand(b, -1))
    rank = rank.reshape(b, 1, h, w)
    deletion, insertion = [], []
    for k in range(steps + 1):
        top = rank < round(k / steps * h * w)  # the hottest fraction k / steps
        for curve, image in ((deletion, torch.where(top, baseline, x)), (insertion, torch.where(top, x, baseline))):
            curve.append(model(image).softmax(1).gather(1, target.view(-1, 1))[:, 0])
    return torch.stack(deletion), torch.stack(insertion)


def curve_area(curve: torch.Tensor) -> torch.Tensor:
    """Trapezoid area under curves sampled at evenly spaced fractions 0..1, `(steps + 1, B) -> (B,)`."""
    steps = curve.shape[0] - 1
    return (curve[1:] + curve[:-1]).sum(0) / (2 * steps)
