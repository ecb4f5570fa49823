""" The `timm-routing` command (also `python -m timm_routing`)

* `models`: builds every model the package registers, runs a forward pass at its default input size and prints name,
  parameters, GMACs, pooling and routing settings (the default command).
* `demo`: offline, classifies the bundled Fashion-MNIST sample images with a shipped zoo model and writes
  coupling-coefficient heatmaps as PNGs.
* `explain MODEL IMAGE...`: predictions and heatmaps for your images.
* `eval MODEL --data <folder or .npz>`: top-1 / top-5.
* `list`: registered models, their tags with weights, parameters and measured test accuracy.
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

import timm

from .layers import ClassCapsuleHead, DigitCapsules, RoutingPool2d
from .models import routing_model_names
from .models.backbones import _find_global_pool

__all__ = ['describe_model', 'main']


def _routing_settings(model: torch.nn.Module) -> str:
    pools = [m for m in model.modules() if isinstance(m, (RoutingPool2d, ClassCapsuleHead))]
    if not pools:
        if any(isinstance(m, DigitCapsules) for m in model.modules()):
            return f'Sabour routing, softmax over parents, r={model.routing_iters}'
        return '-'
    p = pools[0]
    return f'capsule_dim={p.capsule_dim} iters={p.iters} lam={p.lam:g} normalize={p.normalize} act={p.activation}'


def _pool_type(model: torch.nn.Module) -> str:
    if hasattr(model, 'forward_train'):  # the CapsNet family: class capsules instead of a pooling layer
        return model.global_pool
    return _find_global_pool(model)[2].pool_type


def describe_model(name: str) -> Dict[str, Any]:
    """Builds `name`, runs one forward pass at its default input size and returns its summary row.

    GMACs count the convolutions and linear layers (`torch.utils.flop_counter`, multiply-adds = FLOPs / 2); the
    routing's element-wise work (a few multiply-adds per feature-map element and iteration) is not included.
    """
    model = timm.create_model(name).eval()
    input_size = model.pretrained_cfg['input_size']
    x = torch.randn(1, *input_size)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        out = model(x)
    if not torch.isfinite(out).all():
        raise RuntimeError(f'{name}: non-finite output on a random input')
    return dict(
        name=name,
        params_m=sum(p.numel() for p in model.parameters()) / 1e6,
        gmacs=counter.get_total_flops() / 2e9,
        input_size='x'.join(str(s) for s in input_size),
        global_pool=_pool_type(model),
        output=tuple(out.shape),
        routing=_routing_settings(model),
    )


def _print_table(rows: List[Dict[str, Any]]) -> None:
    header = f"{'model':<24} {'params (M)':>10} {'GMACs':>8} {'input':>10} {'pool':>8}  routing"
    print(header)
    print('-' * len(header))
    for r in rows:
        print(
            f"{r['name']:<24} {r['params_m']:>10.3f} {r['gmacs']:>8.4f} {r['input_size']:>10} {r['global_pool']:>8}  "
            f"{r['routing']}")


def _cmd_models(args: argparse.Namespace) -> int:
    names = args.models or routing_model_names()
    unknown = [n for n in names if n not in timm.list_models()]
    if unknown:
        raise CliError(f'unknown model(s): {", ".join(unknown)}')
    _print_table([describe_model(n) for n in names])
    return 0


class CliError(Exception):
    """An error reported as one line, without a traceback."""


ASSETS = Path(__file__).resolve().parent / 'assets'
DEMO_MODEL = 'convnet4_routing.cpu_fmnist'


def _create(name: str, pretrained: bool = True) -> torch.nn.Module:
    arch = name.split('.')[0]
    if arch not in timm.list_models(arch):
        raise CliError(f"unknown model '{name}' (see `timm-routing list`)")
    if pretrained and name not in timm.list_pretrained(arch + '*'):
        with_weights = timm.list_pretrained(arch + '.*')
        raise CliError(f"model '{name}' has no pretrained weights"
                       + (f" (tags with weights: {', '.join(with_weights)})" if with_weights else ''))
    try:
        return timm.create_model(name, pretrained=pretrained).eval()
    except (OSError, ValueError) as e:
        raise CliError(f"cannot load the weights of '{name}': {e}") from e


def _read_image(path: str, mode: str) -> Image.Image:
    try:
        with Image.open(path) as img:
            return img.convert(mode)
    except (OSError, ValueError) as e:
        raise CliError(f'cannot read image {path}: {e}') from e


def _explain(model_name: str, paths: List[str], out_dir: Path, group: Optional[int]) -> List[Dict[str, Any]]:
    from timm.data import create_transform, resolve_data_config
    from .explain import coupling_maps, heatmaps, overlay, save_grid
    model = _create(model_name)
    cfg = model.pretrained_cfg
    mode = 'L' if model.in_chans == 1 else 'RGB'
    images = [_read_image(p, mode) for p in paths]
    transform = create_transform(**resolve_data_config(model=model))
    x = torch.stack([transform(img) for img in images])
    capsules = hasattr(model, 'forward_train')  # CapsNet family: scores are capsule lengths, maps are per class
    with torch.no_grad():
        scores = model(x)
        probs = scores if capsules else scores.softmax(-1)
    try:
        if capsules and group is None:  # each image's map of its predicted class
            group = scores.argmax(-1)
        heat = heatmaps(coupling_maps(model, x), group=group)
    except ValueError as e:
        raise CliError(str(e)) from e
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = cfg.get('label_names') or [str(i) for i in range(model.num_classes)]
    rows = []
    for path, img, p, h in zip(paths, images, probs, heat):
        top = p.topk(min(3, len(p)))
        target = out_dir / f'{Path(path).stem}_heatmap.png'
        overlay(img, h, alpha=0.6, scale=4).save(target)
        rows.append(dict(image=path, heatmap=str(target),
                         top=[(labels[int(i)], float(v)) for v, i in zip(top.values, top.indices)]))
    rows.append(dict(grid=str(save_grid(images, heat, out_dir / 'grid.png'))))
    return rows


def _print_predictions(rows: List[Dict[str, Any]]) -> None:
    for r in rows[:-1]:
        preds = ', '.join(f'{name} {p:.2f}' for name, p in r['top'])
        print(f"{Path(r['image']).name:<28} {preds:<52} -> {r['heatmap']}")
    print(f"heatmaps of all images: {rows[-1]['grid']}")


def _cmd_demo(args: argparse.Namespace) -> int:
    paths = sorted(str(p) for p in (ASSETS / 'fashion_mnist').glob('*.png'))
    print(f'{DEMO_MODEL}: predictions and coupling-coefficient heatmaps of {len(paths)} Fashion-MNIST test images')
    rows = _explain(DEMO_MODEL, paths, Path(args.out), group=None)
    _print_predictions(rows)
    from .data import class_folder_names  # the file names carry the label as the export writes class folders
    correct = sum(
        Path(r['image']).stem.split('_', 1)[1] == class_folder_names([r['top'][0][0]])[0][3:] for r in rows[:-1])
    print(f'{correct}/{len(paths)} top-1 correct')
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    _print_predictions(_explain(args.model, args.images, Path(args.out), args.group))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_arrays, load_split
    model = _create(args.model)
    data = Path(args.data)
    if data.suffix == '.npz':
        try:
            images, labels = load_split(data, args.split)
        except (OSError, ValueError) as e:
            raise CliError(str(e)) from e
    elif data.is_dir():
        folder = data / args.split if (data / args.split).is_dir() else data
        files = sorted(p for p in folder.rglob('*') if p.suffix.lower() in ('.png', '.jpg', '.jpeg', '.bmp'))
        classes = sorted({p.parent.name for p in files})
        if not files:
            raise CliError(f'no images under {folder}')
        mode = 'L' if model.in_chans == 1 else 'RGB'
        arrays = [np.asarray(_read_image(str(p), mode)) for p in files]
        images = np.stack([a[..., None] if a.ndim == 2 else a for a in arrays])
        # labels: the sorted class folders, as timm's ImageFolder and `python -m timm_routing.data` order them
        labels = np.array([classes.index(p.parent.name) for p in files])
    else:
        raise CliError(f'--data {data} is neither a .npz file nor a folder')
    result = evaluate_arrays(model, images, labels, progress=True)
    print(f"{args.model}: top-1 {result['top1']:.2f}%, top-5 {result['top5']:.2f}% on {result['n']} images of {data}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    results = Path(__file__).resolve().parent.parent / 'results'
    print(f"{'model':<24} {'params (M)':>10}  tags with weights (test top-1)")
    for name in routing_model_names():
        params = sum(p.numel() for p in timm.create_model(name, pretrained=False).parameters()) / 1e6
        tags = []
        for tag in timm.list_pretrained(name + '.*'):
            evidence = results / tag / 'eval_test.json'
            acc = f" ({json.loads(evidence.read_text())['top1']:.2f}%)" if evidence.is_file() else ''
            tags.append(tag.split('.', 1)[1] + acc)
        print(f"{name:<24} {params:>10.3f}  {', '.join(tags) or '-'}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='timm-routing', description=__doc__.split('\n\n')[0].strip())
    sub = parser.add_subparsers(dest='command')
    p_models = sub.add_parser('models', help='build every registered model, run a forward pass, print a summary')
    p_models.add_argument('models', nargs='*', help='model names (default: every model of the package)')
    p_models.set_defaults(func=_cmd_models)
    p_demo = sub.add_parser('demo', help='offline demo: predictions and heatmaps of bundled images')
    p_demo.add_argument('--out', default='timm-routing-demo', help='folder for the heatmap PNGs')
    p_demo.set_defaults(func=_cmd_demo)
    p_explain = sub.add_parser('explain', help='predictions and coupling-coefficient heatmaps of images')
    p_explain.add_argument('model', help='a routing model with weights, e.g. convnet4_routing.cpu_fmnist')
    p_explain.add_argument('images', nargs='+')
    p_explain.add_argument('--out', default='timm-routing-heatmaps')
    p_explain.add_argument('--group', type=int, default=None,
                           help='one capsule group, or for a CapsNet model one class (default: mean of the groups; '
                                'for a CapsNet model the predicted class)')
    p_explain.set_defaults(func=_cmd_explain)
    p_eval = sub.add_parser('eval', help='top-1 / top-5 on an image folder or a dataset .npz')
    p_eval.add_argument('model')
    p_eval.add_argument('--data', required=True, help='ImageFolder (class sub-folders) or .npz')
    p_eval.add_argument('--split', default='test', help="split of a .npz, or sub-folder of a folder ('test')")
    p_eval.set_defaults(func=_cmd_eval)
    p_list = sub.add_parser('list', help='registered models, tags with weights, measured accuracy')
    p_list.set_defaults(func=_cmd_list)
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(['models'])
    try:
        return args.func(args)
    except CliError as e:
        print(f'timm-routing: {e}', file=sys.stderr)
        return 2
