"""scripts/compare_runs.py: paired statistics of training runs, on made-up runs and on those docs/results.md quotes."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'scripts'))
import compare_runs  # noqa: E402


def _write_run(folder: Path, val_top1: list, train_loss, lrs: list, test=None, validation=None) -> Path:
    """A run folder as train_capsnet writes it: summary.csv (lr = the rate the next epoch trains with), eval JSONs.

    `train_loss` is one value for every epoch, or a list with one per epoch."""
    folder.mkdir(parents=True)
    losses = train_loss if isinstance(train_loss, list) else [train_loss] * len(val_top1)
    rows = ['epoch,train_loss,eval_loss,eval_top1,eval_top5,lr']
    rows += [f'{e},{loss},0.5,{top1},99.0,{lr}' for e, (loss, top1, lr) in enumerate(zip(losses, val_top1, lrs))]
    (folder / 'summary.csv').write_text('\n'.join(rows) + '\n')
    for split, top1 in (('test', test), ('validation', validation)):
        if top1 is not None:
            (folder / f'eval_{split}.json').write_text(json.dumps(dict(top1=top1, split=split)))
    return folder


# eight epochs, lr 0.1 for epochs 0-3, 0.01 for 4-5, 0.001 for 6-7: the drops are recorded in rows 3 and 5
LRS = [0.1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001, 0.001]


def test_counts_epochs_from_the_first_epoch_trained_at_each_lowered_rate(tmp_path):
    base = _write_run(tmp_path / 'avg', [50, 60, 70, 71, 80, 81, 82, 83], 0.2, LRS, test=80.0, validation=83.0)
    cand = _write_run(tmp_path / 'routing', [40, 70, 60, 90, 79, 81, 84, 85], [1.5] + [0.3] * 7, LRS, test=81.5,
                      validation=85.0)
    pair = compare_runs.compare_pair(base, cand)
    assert pair['epochs'] == 8 and pair['train_loss'] == (0.2, 0.3) and pair['first_train_loss'] == (0.2, 1.5)
    assert pair['test'] == (80.0, 81.5) and pair['validation'] == (83.0, 85.0)
    first, last = pair['after_drops']
    # epochs 4-7: -1, 0, +2, +2 (epoch 3, still at lr 0.1, is left out although its row records the drop)
    assert first == dict(first_epoch=4, epochs=4, above=2, level=1, below=1, mean=0.75)
    assert last == dict(first_epoch=6, epochs=2, above=2, level=0, below=0, mean=2.0)
    report = compare_runs.format_report([pair])
    assert 'test top-1: baseline 80.00, candidate 81.50 (+1.50)' in report
    assert 'from epoch 4 on (4 epochs): candidate above in 2, level in 1, below in 1; mean difference +0.75' in report
    assert "first epoch's training loss: baseline 0.200, candidate 1.500" in report
    assert 'final training loss: baseline 0.200, candidate 0.300' in report


def test_means_over_seeds_and_runs_without_evaluations(tmp_path):
    pairs = []
    for seed, (b, c) in enumerate([(80.0, 81.0), (82.0, 82.0), (84.0, 80.0)]):
        base = _write_run(tmp_path / f'avg{seed}', [1] * 8, 0.2, LRS, test=b, validation=b)
        cand = _write_run(tmp_path / f'routing{seed}', [1] * 8, [1.0 + seed] + [0.3] * 7, LRS, test=c)
        pairs.append(compare_runs.compare_pair(base, cand))
    report = compare_runs.format_report(pairs)
    assert 'test top-1 over 3 seeds (mean ± sample sd): baseline 82.00 ± 2.00, candidate 81.00 ± 1.00' in report
    assert "first epoch's training loss over 3 seeds (mean): baseline 0.200, candidate 2.000" in report
    assert 'validation top-1 over' not in report and 'validation top-1: baseline' not in report  # routing lacks it


def test_a_single_rate_schedule_has_no_drops(tmp_path):
    runs = [_write_run(tmp_path / n, [1, 2, 3], 0.1, [1e-3] * 3) for n in ('a', 'b')]
    assert compare_runs.compare_pair(*runs)['after_drops'] == []


def test_runs_that_are_not_a_pair_are_refused(tmp_path):
    base = _write_run(tmp_path / 'avg', [1] * 8, 0.2, LRS)
    shorter = _write_run(tmp_path / 'short', [1] * 7, 0.2, LRS[:7])
    other_schedule = _write_run(tmp_path / 'other', [1] * 8, 0.2, [0.1] * 5 + [0.01] * 3)
    with pytest.raises(ValueError, match='did not train the same epochs'):
        compare_runs.compare_pair(base, shorter)
    with pytest.raises(ValueError, match='different epochs'):
        compare_runs.compare_pair(base, other_schedule)
    with pytest.raises(FileNotFoundError, match='missing.*not a training run folder'):
        compare_runs.compare_pair(base, tmp_path / 'missing')
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'empty' / 'summary.csv').write_text('epoch,train_loss,eval_top1,lr\n')
    with pytest.raises(ValueError, match='has no epochs'):
        compare_runs.compare_pair(base, tmp_path / 'empty')


def test_command_line_needs_one_candidate_per_baseline(tmp_path, capsys):
    base = _write_run(tmp_path / 'avg', [1] * 8, 0.2, LRS)
    with pytest.raises(SystemExit):
        compare_runs.main(['--baseline', str(base), str(base), '--candidate', str(base)])
    assert '2 baseline folder(s) but 1 candidate folder(s)' in capsys.readouterr().err
    assert compare_runs.main(['--baseline', str(base), '--candidate', str(base)]) == 0
    assert 'mean difference +0.00' in capsys.readouterr().out


# paired runs whose statistics docs/results.md quotes: baseline, candidate, and the after-drop mean differences it
# quotes beside the final training losses (0: none, 1: from the first drop on, 2: that and "after the second drop")
DOCUMENTED_PAIRS = [
    ('resnet20.gpu_cifar10jpeg', 'resnet20_routing.cpu_cifar10jpeg', 0),
    ('resnet20.gpu_cifar10jpeg/seed2_cpu', 'resnet20_routing.cpu_cifar10jpeg/seed2', 1),
    ('resnet20.he182_cifar10jpeg', 'resnet20_routing.he182_cifar10jpeg', 2),
    ('resnet32.cpu_cifar10jpeg', 'resnet32_routing.cpu_cifar10jpeg', 1),
    ('resnet32.cpu_cifar10jpeg/seed1', 'resnet32_routing.cpu_cifar10jpeg/seed1', 1),
    ('resnet32.cpu_cifar10jpeg/seed2', 'resnet32_routing.cpu_cifar10jpeg/seed2', 1),
    ('resnet44.cpu_cifar10jpeg', 'resnet44_routing.cpu_cifar10jpeg', 1),
    ('resnet44.cpu_cifar10jpeg/seed1', 'resnet44_routing.cpu_cifar10jpeg/seed1', 2),
    ('resnet56.cpu_cifar10jpeg', 'resnet56_routing.cpu_cifar10jpeg', 1),
    ('resnet56.cpu_cifar10jpeg/seed1', 'resnet56_routing.cpu_cifar10jpeg/seed1', 2),
    ('resnet56.cpu_cifar10jpeg/seed2', 'resnet56_routing.cpu_cifar10jpeg/seed2', 2),
    ('resnet56.cpu_cifar10jpeg/warmup1', 'resnet56_routing.cpu_cifar10jpeg/warmup1', 2),
    ('resnet56.cpu_cifar10jpeg/warmup1_seed1', 'resnet56_routing.cpu_cifar10jpeg/warmup1_seed1', 2),
]


@pytest.mark.parametrize('baseline,candidate,quoted_means', DOCUMENTED_PAIRS)
def test_the_paired_statistics_in_the_docs_are_what_the_script_gives(baseline, candidate, quoted_means):
    docs = ' '.join((ROOT / 'docs' / 'results.md').read_text().split())  # paragraphs wrap anywhere
    pair = compare_runs.compare_pair(ROOT / 'results' / baseline, ROOT / 'results' / candidate)
    base_loss, cand_loss = pair['train_loss']
    assert f'{cand_loss:.3f} against {base_loss:.3f}' in docs
    for phrase, margin in zip(('mean difference', 'after the second drop'), pair['after_drops'][:quoted_means]):
        assert f"{phrase} {margin['mean']:+.2f}".replace('-', '−') in docs


# the paired runs whose first-epoch training losses docs/results.md averages per depth (the 100-epoch ResNet-20s and
# the 50- and 60-epoch deeper ones; the first epoch trains at lr 0.1 in all of them)
FIRST_EPOCH_PAIRS = {
    20: [('resnet20.gpu_cifar10jpeg', 'resnet20_routing.cpu_cifar10jpeg'),
         ('resnet20.gpu_cifar10jpeg/seed1_cpu', 'resnet20_routing.cpu_cifar10jpeg/seed1'),
         ('resnet20.gpu_cifar10jpeg/seed2_cpu', 'resnet20_routing.cpu_cifar10jpeg/seed2')],
    32: [(f'resnet32.cpu_cifar10jpeg{s}', f'resnet32_routing.cpu_cifar10jpeg{s}') for s in ('', '/seed1', '/seed2')],
    44: [(f'resnet44.cpu_cifar10jpeg{s}', f'resnet44_routing.cpu_cifar10jpeg{s}') for s in ('', '/seed1')],
    56: [(f'resnet56.cpu_cifar10jpeg{s}', f'resnet56_routing.cpu_cifar10jpeg{s}') for s in ('', '/seed1', '/seed2')],
}


@pytest.mark.parametrize('depth', FIRST_EPOCH_PAIRS)
def test_the_first_epoch_losses_in_the_docs_are_what_the_script_gives(depth):
    docs = ' '.join((ROOT / 'docs' / 'results.md').read_text().split())
    pairs = [compare_runs.compare_pair(ROOT / 'results' / b, ROOT / 'results' / c) for b, c in FIRST_EPOCH_PAIRS[depth]]
    base, cand = compare_runs.mean_first_train_loss(pairs)
    assert f'{base:.3f} against {cand:.3f} at {"depth " if depth == 20 else ""}{depth}' in docs
