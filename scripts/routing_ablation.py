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


def config_name(config: dict) -> str:
    return f"lam{config['lam']:g}_it{config['iters']}_{'norm' if config['normalize'] else 'raw'}_c{config['capsule_dim']}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--npz', required=True)
    parser.add_argument('--model', default='convnet4_routing')
    parser.add_argument('--base', nargs=4, default=['0.5', '1', 'false', '16'], metavar=('LAM', 'ITERS', 'NORM', 'CAP'))
    parser.add_argument('--epochs', type=int, default=6)
    parser.add_argument('--pad', type=int, default=2)
    parser.add_argument('--val-size', type=int, default=5000)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--limit', type=int, default=None, help='first N training/validation images (tests)')
    parser.add_argument('--out', required=True)
    args = parser.parse_args(argv)
    base = dict(lam=float(args.base[0]), iters=int(args.base[1]), normalize=args.base[2].lower() == 'true',
                capsule_dim=int(args.base[3]))
    out = Path(args.out)
    rows = []
    for config in configurations(base):
        run = out / config_name(config)
        if not (run / 'summary.csv').exists():
            kwargs = [f'routing_lam={config["lam"]}', f'routing_iters={config["iters"]}',
                      f'routing_normalize={str(config["normalize"]).lower()}',
                      f'routing_capsule_dim={config["capsule_dim"]}']
            cmd = ['--npz', args.npz, '--dataset', 'plain', '--pad', str(args.pad), '--model', args.model,
                   '--epochs', str(args.epochs), '--val-size', str(args.val_size), '--seed', str(args.seed),
                   '--device', args.device, '--log-interval', '0', '--output', str(run), '--model-kwargs', *kwargs]
            if args.limit:
                cmd += ['--limit', str(args.limit)]
            train_main(cmd)
        summary = list(csv.DictReader((run / 'summary.csv').open()))
        rows.append(dict(config, name=config_name(config), last_top1=float(summary[-1]['eval_top1']),
                         best_top1=max(float(r['eval_top1']) for r in summary), epochs=len(summary)))
    (out / 'ablation.json').write_text(json.dumps(dict(model=args.model, npz=args.npz, base=base, rows=rows,
                                                       command=' '.join(sys.argv)), indent=1))
    lines = [f'Validation top-1 (%) of `{args.model}` after {args.epochs} epochs (`{" ".join(sys.argv)}`):', '',
             '| λ | iterations | children | capsule | last epoch | best epoch |', '|---|---|---|---|---|---|']
    for r in rows:
        lines.append(f"| {r['lam']:g} | {r['iters']} | {'normalised' if r['normalize'] else 'raw'} | "
                     f"{r['capsule_dim']} | {r['last_top1']:.2f} | {r['best_top1']:.2f} |")
    (out / 'ablation.md').write_text('\n'.join(lines) + '\n')
    print('\n'.join(lines))
    return 0


if __name__ == '__main__':
    sys.exit(main())
