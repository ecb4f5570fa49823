#!/usr/bin/env python3
""" Paired comparison of training runs from their results/ folders: a baseline against a candidate, seed by seed

    python scripts/compare_runs.py --baseline results/resnet56.cpu_cifar10jpeg \
        --candidate results/resnet56_routing.cpu_cifar10jpeg
    python scripts/compare_runs.py --baseline results/resnet32.cpu_cifar10jpeg{,/seed1,/seed2} \
        --candidate results/resnet32_routing.cpu_cifar10jpeg{,/seed1,/seed2}

The n-th baseline folder is paired with the n-th candidate folder (runs of one seed, the same schedule). A folder holds
what `python -m timm_routing.train_capsnet` writes (`summary.csv`, with train.py's columns) and, where the run was
evaluated, the `eval_test.json` and `eval_validation.json` of `python -m timm_routing.evaluate`. Per pair it prints:
the test and validation top-1 of the evaluations and the candidate's margin; in how many of the epochs from the first
learning-rate drop on (and from the last, where the schedule has two or more) the candidate's validation top-1 of
`summary.csv` was above, level with and below the baseline's, and the mean difference; the first and the final epoch's
training loss. With several pairs it adds the mean ± sample standard deviation over seeds of each side's test and
validation top-1, and the mean over seeds of each side's first-epoch training loss.
These are the statistics docs/results.md quotes for its paired CIFAR ResNets.
"""
import argparse
import csv
import json
import statistics
import sys
from pathlib import Path


def read_summary(run: Path) -> list:
    """The rows of `run/summary.csv` as dicts of floats; a clear error when the file is missing or has no epochs."""
    path = Path(run) / 'summary.csv'
    if not path.is_file():
        raise FileNotFoundError(f'{path} does not exist: {run} is not a training run folder')
    with open(path, newline='') as f:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    if not rows:
        raise ValueError(f'{path} has no epochs')
    missing = {'epoch', 'train_loss', 'eval_top1', 'lr'} - set(rows[0])
    if missing:
        raise ValueError(f'{path} lacks the column(s) {sorted(missing)}')
    return rows


def read_top1(run: Path, split: str):
    """top-1 of `run/eval_<split>.json`, or None where the run was not evaluated on that split."""
    path = Path(run) / f'eval_{split}.json'
    return json.loads(path.read_text())['top1'] if path.is_file() else None


def lr_drops(rows: list) -> list:
    """Indices of the first rows trained at a lowered learning rate (a step schedule's drops).

    The `lr` column holds the rate after the epoch's last scheduler update, the one the next epoch trains with (as in
    train.py's summary.csv), so a drop recorded in row i first trains row i + 1."""
    return [i + 1 for i in range(1, len(rows) - 1) if rows[i]['lr'] < rows[i - 1]['lr'] * (1 - 1e-6)]


def validation_margin(baseline: list, candidate: list, start: int) -> dict:
    """How the candidate's per-epoch validation top-1 compares with the baseline's from row `start` on."""
    diffs = [c['eval_top1'] - b['eval_top1'] for b, c in zip(baseline[start:], candidate[start:])]
    return dict(first_epoch=int(baseline[start]['epoch']), epochs=len(diffs), above=sum(d > 0 for d in diffs),
                level=sum(d == 0 for d in diffs), below=sum(d < 0 for d in diffs), mean=statistics.mean(diffs))


def compare_pair(baseline_run: Path, candidate_run: Path) -> dict:
    """The paired statistics of one seed; the two runs must have trained the same epochs with the same schedule."""
    baseline, candidate = read_summary(baseline_run), read_summary(candidate_run)
    if [r['epoch'] for r in baseline] != [r['epoch'] for r in candidate]:
        raise ValueError(f'{baseline_run} ({len(baseline)} epochs) and {candidate_run} ({len(candidate)} epochs) did '
                         f'not train the same epochs, so they are not a pair')
    drops = lr_drops(baseline)
    if drops != lr_drops(candidate):
        raise ValueError(f'{baseline_run} and {candidate_run} dropped the learning rate at different epochs')
    first_and_last = sorted({drops[0], drops[-1]}) if drops else []
    result = dict(baseline=str(baseline_run), candidate=str(candidate_run), epochs=len(baseline),
                  first_train_loss=(baseline[0]['train_loss'], candidate[0]['train_loss']),
                  train_loss=(baseline[-1]['train_loss'], candidate[-1]['train_loss']),
                  after_drops=[validation_margin(baseline, candidate, d) for d in first_and_last])
    for split in ('test', 'validation'):
        result[split] = (read_top1(baseline_run, split), read_top1(candidate_run, split))
    return result


def mean_first_train_loss(pairs: list) -> tuple:
    """Each side's first-epoch training loss, averaged over the pairs (seeds) of `compare_pair`: (baseline, candidate)."""
    return tuple(statistics.mean(p['first_train_loss'][i] for p in pairs) for i in (0, 1))


def _mean_sd(values: list) -> str:
    return f'{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}'


def format_report(pairs: list) -> str:
    """The report `main` prints: one block per pair, then the means over seeds of the evaluated splits."""
    lines = []
    for p in pairs:
        lines.append(f"{p['baseline']} (baseline) against {p['candidate']} (candidate), {p['epochs']} epochs:")
        for split in ('test', 'validation'):
            base, cand = p[split]
            if base is not None and cand is not None:
                lines.append(f'  {split} top-1: baseline {base:.2f}, candidate {cand:.2f} ({cand - base:+.2f})')
        for m in p['after_drops']:
            lines.append(f"  validation top-1 from epoch {m['first_epoch']} on ({m['epochs']} epochs): candidate above "
                         f"in {m['above']}, level in {m['level']}, below in {m['below']}; mean difference "
                         f"{m['mean']:+.2f}")
        lines.append(f"  first epoch's training loss: baseline {p['first_train_loss'][0]:.3f}, "
                     f"candidate {p['first_train_loss'][1]:.3f}")
        lines.append(f"  final training loss: baseline {p['train_loss'][0]:.3f}, candidate {p['train_loss'][1]:.3f}")
    if len(pairs) > 1:
        for split in ('test', 'validation'):
            if all(None not in p[split] for p in pairs):
                base, cand = ([p[split][i] for p in pairs] for i in (0, 1))
                lines.append(f'{split} top-1 over {len(pairs)} seeds (mean ± sample sd): baseline {_mean_sd(base)}, '
                             f'candidate {_mean_sd(cand)}')
        base, cand = mean_first_train_loss(pairs)
        lines.append(f"first epoch's training loss over {len(pairs)} seeds (mean): baseline {base:.3f}, "
                     f"candidate {cand:.3f}")
    return '\n'.join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--baseline', nargs='+', type=Path, required=True, help='run folders, one per seed')
    parser.add_argument('--candidate', nargs='+', type=Path, required=True, help='run folders, in the same seed order')
    args = parser.parse_args(argv)
    if len(args.baseline) != len(args.candidate):
        parser.error(f'{len(args.baseline)} baseline folder(s) but {len(args.candidate)} candidate folder(s): '
                     f'give one of each per seed, in the same order')
    print(format_report([compare_pair(b, c) for b, c in zip(args.baseline, args.candidate)]))
    return 0


if __name__ == '__main__':
    sys.exit(main())
