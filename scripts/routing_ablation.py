#!/usr/bin/env python3
""" Routing ablation on a validation split: λ, iterations, child normalisation and capsule size, one at a time

    python scripts/routing_ablation.py --npz ../shared/data/fashion_mnist.npz --model convnet4_routing \
        --epochs 6 --out results/ablation_convnet4_fmnist
    python scripts/routing_ablation.py --npz ../shared/data/cifar10_jpeg_q75_approx.npz --model resnet20_routing \
        --base 5,1,false,16 --vary normalize lam capsule_dim iters --epochs 12 --pad 4 \
        --train-args "--opt momentum --lr 0.1 --weight-decay 1e-4 --hflip 0.5" \
        --out results/ablation_resnet20_cifar10jpeg

Every configuration trains the same model with `python -m timm_routing.train_capsnet --dataset plain` (same data,
seed, optimiser and schedule) on the training split minus `--val-size` held-out images and is scored on those
held-out images only: the test split is never read. The grid varies one setting at a time around the registered
defaults (`--base`), since a full factorial grid does not fit a CPU budget: λ over the paper's values (0 is average
pooling), 1-3 iterations, children normalised or not, capsules of 16/32/64 neurons (`--vary` picks the settings and
their order); `--train-args` passes the training recipe (optimiser, learning rate, flips) to every run. Writes
`<out>/<config>/` (the training run), `<out>/ablation.json` and `<out>/ablation.md`; a configuration whose run exists
is not trained again.
"""
import argparse
import csv
import json
import shlex
import sys
from pathlib import Path

from timm_routing.train_capsnet import main as train_main

GRID = {
    'lam': [0.0, 0.5, 1.0, 5.0],
    'iters': [1, 2, 3],
    'normalize': [False, True],
    'capsule_dim': [16, 32, 64],
}


def configurations(base: dict, vary=tuple(GRID)) -> list:
    """The base configuration, then each other value of each setting in `vary` (in that order), the rest at the base."""
    configs = [dict(base)]
    for key in vary:
        configs += [dict(base, **{key: v}) for v in GRID[key] if v != base[key]]
    return configs


def config_name(config: dict, seed: int = 0) -> str:
    children = 'norm' if config['normalize'] else 'raw'
    name = f"lam{config['lam']:g}_it{config['iters']}_{children}_c{config['capsule_dim']}"
    return name + (f'_seed{seed}' if seed else '')


def parse_config(text: str) -> dict:
    """`LAM,ITERS,NORM,CAP[,SEED]` (e.g. `1,1,true,16` or `0.5,1,true,16,1`) -> a configuration (seed None: --seed)."""
    try:
        fields = text.split(',')
        if len(fields) not in (4, 5) or fields[2].lower() not in ('true', 'false'):
            raise ValueError(text)
        return dict(lam=float(fields[0]), iters=int(fields[1]), normalize=fields[2].lower() == 'true',
                    capsule_dim=int(fields[3]), seed=int(fields[4]) if len(fields) == 5 else None)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'expected LAM,ITERS,NORM,CAP[,SEED] such as 1,1,true,16 or 0.5,1,true,16,1, got {text!r}') from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--npz', required=True)
    parser.add_argument('--model', default='convnet4_routing')
    parser.add_argument('--base', type=parse_config, default=parse_config('0.5,1,true,16'),
                        metavar='LAM,ITERS,NORM,CAP')
    parser.add_argument('--vary', nargs='+', choices=list(GRID), default=list(GRID),
                        help='the settings varied around the base, in the order they run (default: all)')
    parser.add_argument('--also', type=parse_config, nargs='*', default=[], metavar='LAM,ITERS,NORM,CAP[,SEED]',
                        help='further runs after the one-at-a-time grid: another setting swept, or a configuration '
                             'repeated with another seed')
    parser.add_argument('--epochs', type=int, default=6)
    parser.add_argument('--pad', type=int, default=2)
    parser.add_argument('--val-size', type=int, default=5000)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--limit', type=int, default=None, help='first N training/validation images (tests)')
    parser.add_argument('--train-args', default='',
                        help='further train_capsnet arguments, one quoted string, the same for every run: the recipe '
                             "(e.g. '--opt momentum --lr 0.1 --weight-decay 1e-4 --hflip 0.5' for CIFAR ResNets)")
    parser.add_argument('--out', required=True)
    args = parser.parse_args(argv)
    base = {k: v for k, v in args.base.items() if k != 'seed'}
    out = Path(args.out)
    rows = []
    runs = [(config, args.seed) for config in configurations(base, args.vary)]
    runs += [({k: v for k, v in config.items() if k != 'seed'}, args.seed if config['seed'] is None else config['seed'])
             for config in args.also]
    for config, seed in runs:
        run = out / config_name(config, seed)
        if not (run / 'summary.csv').exists():
            kwargs = [f'routing_lam={config["lam"]}', f'routing_iters={config["iters"]}',
                      f'routing_normalize={str(config["normalize"]).lower()}',
                      f'routing_capsule_dim={config["capsule_dim"]}']
            cmd = ['--npz', args.npz, '--dataset', 'plain', '--pad', str(args.pad), '--model', args.model,
                   '--epochs', str(args.epochs), '--val-size', str(args.val_size), '--seed', str(seed),
                   '--device', args.device, '--log-interval', '0', '--output', str(run), '--model-kwargs', *kwargs]
            if args.limit:
                cmd += ['--limit', str(args.limit)]
            train_main(cmd + shlex.split(args.train_args))
        summary = list(csv.DictReader((run / 'summary.csv').open()))
        rows.append(dict(config, seed=seed, name=config_name(config, seed), last_top1=float(summary[-1]['eval_top1']),
                         best_top1=max(float(r['eval_top1']) for r in summary), epochs=len(summary)))
    (out / 'ablation.json').write_text(json.dumps(dict(model=args.model, npz=args.npz, base=base, rows=rows,
                                                       command=shlex.join(sys.argv)), indent=1))
    lines = [f'Validation top-1 (%) of `{args.model}` after {args.epochs} epochs (`{shlex.join(sys.argv)}`):', '',
             '| λ | iterations | children | capsule | seed | last epoch | best epoch |',
             '|---|---|---|---|---|---|---|']
    for r in rows:
        lines.append(f"| {r['lam']:g} | {r['iters']} | {'normalised' if r['normalize'] else 'raw'} | "
                     f"{r['capsule_dim']} | {r['seed']} | {r['last_top1']:.2f} | {r['best_top1']:.2f} |")
    (out / 'ablation.md').write_text('\n'.join(lines) + '\n')
    print('\n'.join(lines))
    return 0


if __name__ == '__main__':
    sys.exit(main())
