#!/usr/bin/env python3
""" How sparse a routing head's couplings are: child lengths and the largest coupling per capsule group

    python scripts/coupling_stats.py --model resnet20_routing --npz ../shared/data/cifar10_jpeg_q75_approx.npz
    python scripts/coupling_stats.py --model resnet20_routing --model-kwargs routing_normalize=False \
        --weights raw.safetensors --npz ../shared/data/cifar10_jpeg_q75_approx.npz

Runs `--limit` test images, spread evenly over the test split (so that a file sorted by class, as the CIFAR-10 one is,
gives every class its share), through the model (timm's evaluation transform, as `timm_routing.evaluate`) and
routes its last feature map with the head's own settings, once with the children as they are and once normalised to
unit length, whatever the model was built with. Prints, per setting, the mean and median length of the children
(the C/D-channel vectors at each position) and the mean over groups of the largest coupling coefficient: 1/(H·W) is
uniform (average pooling), 1 one-hot (a "vector max"). Without `--weights` the model has its random initialisation
(`--seed`), which is what a training run starts from.
"""
import argparse
import sys

import numpy as np
import torch

import timm
from timm.data import create_transform, resolve_data_config
from timm.models import load_checkpoint
from timm.utils import ParseKwargs

import timm_routing  # noqa: F401  registers the models
from timm_routing.evaluate import load_split, model_inputs
from timm_routing.layers import RoutingPool2d
from timm_routing.layers.routing import routing_pool2d


def coupling_stats(model: torch.nn.Module, images: torch.Tensor) -> list:
    """Child lengths and mean largest coupling of `model`'s routing head on `images`, raw and normalised."""
    pool = next((m for m in model.modules() if isinstance(m, RoutingPool2d)), None)
    if pool is None:
        raise ValueError(f'{type(model).__name__} has no RoutingPool2d head to measure.')
    with torch.no_grad():
        features = model.forward_features(images)
    batch, channels, height, width = features.shape
    lengths = features.reshape(batch, channels // pool.capsule_dim, pool.capsule_dim, height * width).norm(dim=2)
    rows = []
    for normalize in (False, True):
        _, couplings = routing_pool2d(features, pool.capsule_dim, pool.iters, pool.lam, normalize)
        rows.append(dict(normalize=normalize, lam=pool.lam, iters=pool.iters, children=height * width,
                         length_mean=lengths.mean().item(), length_median=lengths.median().item(),
                         max_coupling=couplings.flatten(2).amax(-1).mean().item()))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', required=True, help='a registered model with a routing head (a tag loads weights)')
    parser.add_argument('--weights', default=None, help='a .safetensors / .pth state dict to load instead')
    parser.add_argument('--npz', required=True)
    parser.add_argument('--limit', type=int, default=256)
    parser.add_argument('--seed', type=int, default=0, help='initialisation seed when no weights are loaded')
    parser.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs,
                        help="as train.py's, e.g. routing_normalize=False routing_lam=1.0")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    model = timm.create_model(args.model, pretrained='.' in args.model and args.weights is None, **args.model_kwargs)
    model.eval()
    if args.weights:
        load_checkpoint(model, args.weights)
    transform = create_transform(**resolve_data_config(model=model))
    x, y = load_split(args.npz, 'test')
    picked = np.unique(np.linspace(0, len(x) - 1, min(args.limit, len(x))).round().astype(np.int64))
    images = model_inputs(x[picked], transform)
    source = args.weights or ('shipped weights' if '.' in args.model else f'initialisation, seed {args.seed}')
    print(f'{args.model} ({source}), {len(images)} test images of {args.npz} spread evenly over the split '
          f'({len(np.unique(y[picked]))} classes):')
    for r in coupling_stats(model, images):
        print(f"  children {'normalised' if r['normalize'] else 'raw'}: length mean {r['length_mean']:.2f}, median "
              f"{r['length_median']:.2f}; largest coupling (λ = {r['lam']:g}, {r['iters']} iteration(s)) mean "
              f"{r['max_coupling']:.3f} (uniform {1 / r['children']:.3f})")
    return 0


if __name__ == '__main__':
    sys.exit(main())
