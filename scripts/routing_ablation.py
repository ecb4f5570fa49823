#!/usr/bin/env python3
""" Routing ablation on a validation split: λ, iterations, child normalisation and capsule size, one at a time

    python scripts/routing_ablation.py --npz ../shared/data/fashion_mnist.npz --model convnet4_routing \
        --epochs 6 --out results/ablation_convnet4_fmnist

Every configuration trains the same model with `python -m timm_routing.train_capsnet --dataset plain` (same data,
seed, optimiser and schedule) on the training split minus `--val-size` held-out images and is scored on those
held-out images only: the test split is never read. The grid varies one setting at a time around the registered
defaults (`--base`), since a full factorial grid does not fit a CPU budget: λ over the paper's values (0 is average
pooling), 1-3 iterations, children normalised or not, capsules of 16/32/64 neurons. Writes `<out>/<config>/` (the
training run), `<out>/ablation.json` and `<out>/ablation.md`; a configuration whose run exists is not trained again.
"""
import argparse
import csv
import json
import sys
from pathlib import Path

from timm_routing.train_capsnet import main as train_main

GRID = {
    'lam': [0.0, 0.5, 1.0, 5.0],
    'iters': [1, 2, 3],
    'normalize': [False, True],
    'capsule_dim': [16, 32, 64],
}


def configurations(base: dict) -> list:
    """The base configuration, then each other value of each setting with the rest at the base."""
    configs = [dict(base)]
    for key, values in GRID.items():
        configs += [dict(base, **{key: v}) for v in values if v != base[key]]
    return configs


def config_name(config: dict, seed: int = 0) -> str:
    name = f"lam{config['lam']:g}_it{config['iters']}_{'norm' if config['normalize'] else 'raw'}_c{config['capsule_dim']}"
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
    parser.add_argument('--base', type=parse_config, default=parse_config('0.5,1,true,16'), metavar='LAM,ITERS,NORM,CAP')
    parser.add_argument('--also', type=parse_config, nargs='*', default=[], metavar='LAM,ITERS,NORM,CAP[,SEED]',
                        help='further runs after the one-at-a-time grid: another setting swept, or a configuration '
                             'repeated with another seed')
    parser.add_argument('--epochs', type=int, default=6)
    parser.add_argument('--pad', type=int, default=2)
    parser.add_argument('--val-size', type=int, default=5000)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--limit', type=int, default=None, help='first N training/validation images (tests)')
    parser.add_argument('--out', required=True)
    args = parser.parse_args(argv)
    base = {k: v for k, v in args.base.items() if k != 'seed'}
    out = Path(args.out)
    rows = []
    runs = [(config, args.seed) for config in configurations(base)]
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
            train_main(cmd)
        summary = list(csv.DictReader((run / 'summary.csv').open()))
        rows.append(dict(config, seed=seed, name=config_name(config, seed), last_top1=float(summary[-1]['eval_top1']),
                         best_top1=max(float(r['eval_top1']) for r in summary), epochs=len(summary)))
    (out / 'ablation.json').write_text(json.dumps(dict(model=args.model, npz=args.npz, base=base, rows=rows,
                                                       command=' '.join(sys.argv)), indent=1))
    lines = [f'Validation top-1 (%) of `{args.model}` after {args.epochs} epochs (`{" ".join(sys.argv)}`):', '',
             '| λ | iterations | children | capsule | seed | last epoch | best epoch |', '|---|---|---|---|---|---|---|']
    for r in rows:
        lines.append(f"| {r['lam']:g} | {r['iters']} | {'normalised' if r['normalize'] else 'raw'} | "
                     f"{r['capsule_dim']} | {r['seed']} | {r['last_top1']:.2f} | {r['best_top1']:.2f} |")
    (out / 'ablation.md').write_text('\n'.join(lines) + '\n')
    print('\n'.join(lines))
    return 0


if __name__ == '__main__':
    sys.exit(main())
