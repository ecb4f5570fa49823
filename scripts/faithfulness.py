#!/usr/bin/env python3
""" How faithful are coupling-coefficient heatmaps? Deletion / insertion areas against Grad-CAM and random maps

    python scripts/faithfulness.py --model convnet4_routing.cpu_fmnist --npz ../shared/data/fashion_mnist.npz \
        --limit 1000 --steps 16

For the first `--limit` test images: the routing couplings (mean over capsule groups, upsampled), Grad-CAM on the
same model's last feature map, and seeded random maps as a control rank the pixels; deletion (hottest pixels replaced
by the dataset mean) should make the predicted class's probability fall fast, insertion (hottest pixels put back into
a mean image) rise fast. Prints a Markdown table of the mean areas (lower deletion, higher insertion = more faithful).
"""
import argparse
import sys

import torch

import timm
from timm.data import create_transform, resolve_data_config

import timm_routing  # noqa: F401
from timm_routing.evaluate import load_split, model_inputs
from timm_routing.explain import coupling_maps, curve_area, deletion_insertion, grad_cam, heatmaps


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', default='convnet4_routing.cpu_fmnist')
    parser.add_argument('--npz', required=True)
    parser.add_argument('--split', default='test')
    parser.add_argument('--limit', type=int, default=1000)
    parser.add_argument('--steps', type=int, default=16)
    parser.add_argument('--batch-size', type=int, default=250)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    model = timm.create_model(args.model, pretrained=True).eval()
    transform = create_transform(**resolve_data_config(model=model))
    images, _ = load_split(args.npz, args.split, limit=args.limit)
    generator = torch.Generator().manual_seed(args.seed)
    areas = {name: {'deletion': [], 'insertion': []} for name in ('routing couplings', 'Grad-CAM', 'random')}
    for start in range(0, len(images), args.batch_size):
        batch = images[start:start + args.batch_size]
        x = model_inputs(batch, transform)
        with torch.no_grad():
            target = model(x).argmax(1)
        maps = {
            'routing couplings': heatmaps(coupling_maps(model, x)),
            'Grad-CAM': grad_cam(model, x, target),
            'random': torch.rand(x.shape[0], *x.shape[-2:], generator=generator),
        }
        for name, heat in maps.items():
            deletion, insertion = deletion_insertion(model, x, heat, target, steps=args.steps)
            areas[name]['deletion'].append(curve_area(deletion))
            areas[name]['insertion'].append(curve_area(insertion))
    print(f'`{args.model}`, first {len(images)} {args.split} images, {args.steps} steps, predicted class, '
          f'removed pixels = dataset mean\n')
    print('| saliency | deletion area (lower is better) | insertion area (higher is better) |')
    print('|---|---|---|')
    for name, curves in areas.items():
        d, i = torch.cat(curves['deletion']), torch.cat(curves['insertion'])
        print(f'| {name} | {d.mean():.3f} ± {d.std():.3f} | {i.mean():.3f} ± {i.std():.3f} |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
