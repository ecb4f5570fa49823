"""scripts/coupling_stats.py: child lengths and coupling sparsity of a routing head, raw and normalised."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import timm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / 'scripts'))
import coupling_stats  # noqa: E402


def test_stats_bound_the_couplings_and_lambda_zero_is_uniform():
    torch.manual_seed(0)
    x = torch.randn(3, 3, 32, 32)
    sharp = coupling_stats.coupling_stats(timm.create_model('resnet20_routing').eval(), x)
    assert [r['normalize'] for r in sharp] == [False, True]
    for r in sharp:
        assert r['children'] == 64 and 1 / 64 < r['max_coupling'] <= 1
        assert r['length_mean'] > 0
    # the same map: the lengths do not depend on the setting, the couplings do
    assert sharp[0]['length_mean'] == sharp[1]['length_mean'] and sharp[0]['max_coupling'] != sharp[1]['max_coupling']
    flat = coupling_stats.coupling_stats(timm.create_model('resnet20_routing', routing_lam=0.).eval(), x)
    for r in flat:
        assert r['max_coupling'] == pytest.approx(1 / 64)


def test_model_without_routing_head_is_refused():
    with pytest.raises(ValueError, match='no RoutingPool2d head'):
        coupling_stats.coupling_stats(timm.create_model('resnet20').eval(), torch.randn(1, 3, 32, 32))


def test_main_reads_test_images_and_prints_both_settings(tmp_path, capsys):
    rng = np.random.default_rng(0)
    npz = tmp_path / 'tiny.npz'
    x = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    labels = np.array([0, 0, 0, 1, 1, 1], np.uint8)  # sorted by class: the first 3 would be one class
    np.savez(npz, x_train=x, y_train=labels, x_test=x, y_test=labels)
    assert coupling_stats.main(['--model', 'resnet20_routing', '--npz', str(npz), '--limit', '3',
                                '--model-kwargs', 'routing_lam=1.0', 'routing_normalize=False']) == 0
    out = capsys.readouterr().out
    assert '3 test images of' in out and 'spread evenly over the split (2 classes)' in out
    assert 'initialisation, seed 0' in out
    assert 'children raw' in out and 'children normalised' in out and 'λ = 1' in out
