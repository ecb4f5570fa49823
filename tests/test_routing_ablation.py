"""scripts/routing_ablation.py: the one-at-a-time grid, extra runs with their own seeds, the table, bad arguments."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / 'scripts'))
import routing_ablation  # noqa: E402


def test_grid_varies_one_setting_at_a_time():
    base = dict(lam=0.5, iters=1, normalize=True, capsule_dim=16)
    configs = routing_ablation.configurations(base)
    assert configs[0] == base and len(configs) == 1 + 3 + 2 + 1 + 2
    for config in configs[1:]:
        assert sum(config[k] != base[k] for k in base) == 1


def test_vary_picks_settings_and_their_order():
    base = dict(lam=5.0, iters=1, normalize=False, capsule_dim=16)
    configs = routing_ablation.configurations(base, ('normalize', 'capsule_dim'))
    assert configs == [base, dict(base, normalize=True), dict(base, capsule_dim=32), dict(base, capsule_dim=64)]


def _tiny_npz(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (60, 28, 28, 1), dtype=np.uint8)
    y = (np.arange(60) % 3).astype(np.uint8)
    npz = tmp_path / 'tiny.npz'
    np.savez(npz, x_train=x, y_train=y, x_test=x[:0], y_test=y[:0])
    return npz


def test_train_args_reach_every_run(tmp_path):
    out = tmp_path / 'ablation'
    assert routing_ablation.main([
        '--npz', str(_tiny_npz(tmp_path)), '--base', '5,1,false,16', '--vary', 'normalize', '--epochs', '1',
        '--val-size', '15', '--out', str(out), '--train-args',
        '--opt momentum --lr 0.05 --hflip 0 --model-kwargs "pretrained_cfg_overlay={mean: [0.5], std: [0.25]}"']) == 0
    rows = json.loads((out / 'ablation.json').read_text())['rows']
    assert [r['name'] for r in rows] == ['lam5_it1_raw_c16', 'lam5_it1_norm_c16']
    for r in rows:
        recorded = yaml.safe_load((out / r['name'] / 'args.yaml').read_text())
        assert (recorded['opt'], recorded['lr'], recorded['hflip']) == ('momentum', 0.05, 0.0)
        # the recipe's model kwargs join the ablation's own instead of replacing them
        assert recorded['model_kwargs']['pretrained_cfg_overlay'] == {'mean': [0.5], 'std': [0.25]}
        assert recorded['model_kwargs']['routing_lam'] == 5.0


def test_ablation_runs_scores_on_validation_and_skips_existing_runs(tmp_path):
    npz = _tiny_npz(tmp_path)
    out = tmp_path / 'ablation'
    args = ['--npz', str(npz), '--base', '0.5,1,false,16', '--epochs', '1', '--val-size', '15', '--out', str(out),
            '--also', '1,1,true,16,1']
    assert routing_ablation.main(args) == 0
    result = json.loads((out / 'ablation.json').read_text())
    assert len(result['rows']) == 10
    extra = result['rows'][-1]
    assert (extra['lam'], extra['normalize'], extra['seed'], extra['name']) == (1.0, True, 1, 'lam1_it1_norm_c16_seed1')
    recorded = yaml.safe_load((out / extra['name'] / 'args.yaml').read_text())
    assert recorded['seed'] == 1 and recorded['model_kwargs']['routing_normalize'] is True
    assert recorded['val_size'] == 15
    assert (out / 'ablation.md').read_text().count('\n| ') == 11  # header + 10 rows
    mtime = (out / extra['name'] / 'summary.csv').stat().st_mtime
    assert routing_ablation.main(args) == 0  # everything exists: nothing is trained again
    assert (out / extra['name'] / 'summary.csv').stat().st_mtime == mtime


@pytest.mark.parametrize('bad', ['1,1,maybe,16', '1,1,true', 'x,1,true,16'])
def test_bad_configuration_is_refused(bad, capsys):
    with pytest.raises(SystemExit):
        routing_ablation.main(['--npz', 'x.npz', '--out', 'o', '--also', bad])
    assert 'LAM,ITERS,NORM,CAP' in capsys.readouterr().err
