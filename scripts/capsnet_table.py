#!/usr/bin/env python3
""" Zhao & Huang Table 4 (and Sabour's MultiMNIST number) from our own evaluations

    python scripts/capsnet_table.py --npz ../shared/data/mnist.npz --evaluate [TAG ...]  # results/<tag>/eval_*.json
    python scripts/capsnet_table.py                                              # prints the table from the JSONs

`--evaluate` runs `python -m timm_routing.evaluate` (through its `main`, so each JSON records the exact command) on
the validation and test splits of every model of the table: the expanded-MNIST models on expanded MNIST, MNIST
centred in 40x40 and the affNIST-like set (affine maps of the test digits, and of the held-out validation digits: the
set to choose a recipe on without looking at the test), the MultiMNIST model on MultiMNIST. A model whose weights are
not shipped (the 13.5 M-parameter CapsNet baseline) is evaluated from its training run with `--checkpoint NAME=FILE`;
`--device cuda` runs the evaluations on a GPU (each JSON names the device).
"""
import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import timm
import yaml

import timm_routing  # noqa: F401  registers the models
from timm_routing.evaluate import main as evaluate_main

ROOT = Path(__file__).resolve().parent.parent

EXPANDED = ('capsnet_resnet20.cpu_mnist_shift', 'resnet20.cpu_mnist_shift', 'capsnet.gpu_mnist_shift',
            'capsnet.cpu_mnist_shift')
MULTI = ('capsnet_resnet20_lam5.gpu_multimnist', 'capsnet_resnet20_lam5.cpu_ft_multimnist')
# (file stem, split, variant, limit); the first-1000 rows are what tests/test_zoo.py recomputes
EXPANDED_EVALS = (
    ('validation', 'validation', 'mnist_shift', None), ('test', 'test', 'mnist_shift', None),
    ('test_mnist', 'test', 'mnist_centred', None), ('test_affnist_like', 'test', 'affnist_like', None),
    ('test_first1000', 'test', 'mnist_shift', 1000), ('validation_affnist_like', 'validation', 'affnist_like', None),
)
MULTI_EVALS = (
    ('validation', 'validation', 'multimnist', None), ('test', 'test', 'multimnist', None),
    ('test_first1000', 'test', 'multimnist', 1000),
)
PAPER = {  # error %: expanded MNIST, affNIST; params
    'CapsNet (Sabour et al. 2017, as quoted in Zhao & Huang Table 4)': ('0.77', '21', '13.4 M'),
    'R-1-32 (Zhao & Huang Table 4)': ('1.70', '5.12', '2.5 M'),
}


# results folder -> the model evaluated: the CapsNet baseline's weights do not ship, its 40x40 cfg is a weightless tag
# (gpu_mnist_shift: capsnet_resnet20's 20-epoch recipe on an H200; cpu_mnist_shift: the earlier 2-epoch CPU run)
MODEL_OF = {'capsnet.gpu_mnist_shift': 'capsnet.mnist_shift', 'capsnet.cpu_mnist_shift': 'capsnet.mnist_shift'}


def evaluate_all(npz: str, checkpoints: dict, tags=None, device: str = 'cpu') -> None:
    for tag in tags or EXPANDED + MULTI:
        checkpoint = checkpoints.get(tag)
        if checkpoint is None and tag not in timm.list_pretrained():
            print(f'{tag}: no shipped weights and no --checkpoint; skipped', file=sys.stderr)
            continue
        out_dir = ROOT / 'results' / tag
        out_dir.mkdir(parents=True, exist_ok=True)
        for stem, split, variant, limit in (MULTI_EVALS if tag in MULTI else EXPANDED_EVALS):
            argv = ['--model', MODEL_OF.get(tag, tag), '--npz', npz, '--split', split, '--variant', variant,
                    '--out', os.path.relpath(out_dir / f'eval_{stem}.json')]
            if limit:
                argv += ['--limit', str(limit)]
            if checkpoint:
                argv += ['--checkpoint', checkpoint]
            if device != 'cpu':  # the JSON records the device either way; the command names it only off the CPU
                argv += ['--device', device]
            evaluate_main(argv)


def _load(tag: str, stem: str, run: str = ''):
    path = ROOT / 'results' / tag / run / f'eval_{stem}.json'
    return json.loads(path.read_text()) if path.exists() else None


def _epochs(tag: str, run: str = '') -> str:
    summary = ROOT / 'results' / tag / run / 'summary.csv'
    return f'{len(summary.read_text().strip().splitlines()) - 1} epochs' if summary.exists() else '?'


def _run_args(tag: str, run: str = '') -> dict:
    """The recorded `args.yaml` of a tag's run (or of its further seed `run`); empty where there is none."""
    args_file = ROOT / 'results' / tag / run / 'args.yaml'
    return yaml.safe_load(args_file.read_text()) if args_file.exists() else {}


def _precision(tag: str, run: str = '') -> str:
    """'; bfloat16 autocast' for a run trained with `--amp --amp-dtype bfloat16` (its args.yaml), else ''."""
    run_args = _run_args(tag, run)
    return f"; {run_args.get('amp_dtype')} autocast" if run_args.get('amp') else ''


def _started_from(tag: str) -> str:
    """' continuing `<model>.<tag>`' where the tag's run started from another tag's weights (`--pretrained`)."""
    run_args = _run_args(tag)
    model = run_args.get('model') or ''
    return f' continuing `{model}`' if run_args.get('pretrained') and '.' in model else ''


def _other_seeds(tag: str):
    """The further seeds of a tag's recipe: `results/<tag>/seed*/` folders with a test evaluation (weights not
    shipped; their JSONs name the checkpoint they measured), e.g. `seed2`, or `seed0_20ep` for a longer schedule."""
    return sorted(d.name for d in (ROOT / 'results' / tag).glob('seed*') if (d / 'eval_test.json').exists())


def table() -> str:
    lines = ['| model | params (M) | expanded MNIST error (%) | MNIST centred error (%) | affNIST-like error (%) '
             '| affNIST-like validation error (%) |', '|---|---|---|---|---|---|']
    stems = ('test', 'test_mnist', 'test_affnist_like', 'validation_affnist_like')
    for tag in EXPANDED:
        runs = [''] + _other_seeds(tag)  # the shipped run, then the further seeds
        errors = {run: [100 - e['top1'] if (e := _load(tag, s, run)) else None for s in stems] for run in runs}
        if errors[''][0] is None:
            continue
        params = sum(p.numel() for p in timm.create_model(MODEL_OF.get(tag, tag)).parameters()) / 1e6
        schedules = {}  # the shipped run's schedule first, each with its seeds (e.g. `seed0_20ep` for 20 epochs)
        for run in runs:
            schedules.setdefault(_epochs(tag, run), []).append(run)
        for epochs, group in schedules.items():
            for run in group:
                unshipped = '; weights not shipped' if run or tag in MODEL_OF else ''
                label = f"`{tag}`{f', `{run}`' if run else ''} (ours, {epochs}{_precision(tag, run)}{unshipped})"
                cells = ['-' if v is None else f'{v:.2f}' for v in errors[run]]
                lines.append(f'| {label} | {params:.2f} | ' + ' | '.join(cells) + ' |')
            if len(group) < 2:
                continue
            cells = []
            for i in range(len(stems)):
                values = [errors[run][i] for run in group if errors[run][i] is not None]
                cells.append(f'{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}' if len(values) > 1
                             else '-')
            lines.append(f'| `{tag}`, mean ± sd of {len(group)} seeds ({epochs}) | {params:.2f} | '
                         + ' | '.join(cells) + ' |')
    for name, (mnist, aff, params) in PAPER.items():
        lines.append(f'| {name} | {params} | {mnist} | - | {aff} (real affNIST) | - |')
    lines += ['', '| model | params (M) | MultiMNIST error (%) |', '|---|---|---|']
    for tag in MULTI:
        test = _load(tag, 'test')
        if test is not None:
            params = sum(p.numel() for p in timm.create_model(tag).parameters()) / 1e6
            lines.append(f"| `{tag}` (ours, {_epochs(tag)}{_started_from(tag)}) | {params:.2f} | "
                         f"{100 - test['top1']:.2f} |")
    lines += ['| CapsNet (Sabour et al. 2017; 11.36 M is `capsnet` at 36x36 counted here) | 11.36 | 5.2 |',
              '| Zhao & Huang §4.3 (λ = 5) | 2.2 | 5.2 |']
    return '\n'.join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--npz', default=os.path.relpath(ROOT.parent / 'shared' / 'data' / 'mnist.npz'),
                        help='genuine MNIST (default: the shared data beside the checkout, as a relative path)')
    parser.add_argument('--evaluate', nargs='*', default=None, metavar='TAG',
                        help='run the evaluations first (of the TAGs given, default all)')
    parser.add_argument('--checkpoint', action='append', default=[], metavar='TAG=FILE',
                        help='weights of a tag that does not ship, e.g. '
                             'capsnet.gpu_mnist_shift=<run>/model_last.safetensors')
    parser.add_argument('--device', default='cpu', help="run the evaluations on this torch device, e.g. 'cuda'")
    args = parser.parse_args(argv)
    checkpoints = dict(item.split('=', 1) for item in args.checkpoint)
    if args.evaluate is not None:
        evaluate_all(args.npz, checkpoints, args.evaluate, args.device)
    print(table())
    return 0


if __name__ == '__main__':
    sys.exit(main())
