"""scripts/export_weights.py: a train.py or train_capsnet run becomes a tag's safetensors file and evidence folder."""
import argparse
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import timm

import timm_routing  # noqa: F401
from timm_routing.train_capsnet import main as train_capsnet

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / 'scripts'))
from export_weights import main as export_weights  # noqa: E402


def _export(run, name, tmp_path, *extra):
    argv = ['--run', str(run), '--name', name, '--weights-dir', str(tmp_path / 'weights'),
            '--results-dir', str(tmp_path / 'results'), *extra]
    assert export_weights(argv) == 0
    return tmp_path / 'weights' / f'{name}.safetensors'


def _random_state_dict(model_name, seed, **kwargs):
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in timm.create_model(model_name, **kwargs).state_dict().items()}


def _fake_run(run, args, summary='epoch,train_loss\n0,1.0\n'):
    run.mkdir(parents=True)
    (run / 'args.yaml').write_text(yaml.safe_dump(args))
    (run / 'summary.csv').write_text(summary)
    return run


def test_a_trained_plain_train_capsnet_run_exports_its_last_weights(tmp_path):
    rng = np.random.default_rng(0)
    labels = (np.arange(60) % 3).astype(np.uint8)
    images = rng.integers(0, 255, (60, 8, 8, 3)).astype(np.uint8)
    npz = tmp_path / 'rgb.npz'
    np.savez(npz, x_train=images, y_train=labels, x_test=images[:0], y_test=labels[:0])
    run = tmp_path / 'run'
    assert train_capsnet(['--npz', str(npz), '--dataset', 'plain', '--model', 'resnet20', '--val-size', '12',
                          '--batch-size', '16', '--epochs', '1', '--pad', '0', '--log-interval', '0',
                          '--output', str(run)]) == 0

    out = _export(run, 'resnet20.tiny_rgb', tmp_path)
    shipped, trained = load_file(str(out)), load_file(str(run / 'model_last.safetensors'))
    assert shipped.keys() == trained.keys() and all(torch.equal(shipped[k], trained[k]) for k in trained)
    model = timm.create_model('resnet20', num_classes=3, in_chans=3)  # the classes and channels counted in the npz
    model.load_state_dict(shipped)
    with safe_open(str(out), framework='pt') as f:
        metadata = f.metadata()
    assert metadata['source'] == 'run/model_last.safetensors' and metadata['epoch'] == '0'
    assert '"val_size": 12' in metadata['train_capsnet'], 'the hold-out the run recorded travels with the weights'
    evidence = tmp_path / 'results' / 'resnet20.tiny_rgb'
    assert (evidence / 'summary.csv').read_text() == (run / 'summary.csv').read_text()
    assert (evidence / 'args.yaml').read_text() == (run / 'args.yaml').read_text()

    npz.unlink()
    with pytest.raises(ValueError, match='--num-classes'):
        _export(run, 'resnet20.tiny_rgb', tmp_path)
    _export(run, 'resnet20.tiny_rgb', tmp_path, '--num-classes', '3', '--in-chans', '3')


def test_an_mnist_train_capsnet_run_is_ten_grey_classes_and_can_ship_its_best_weights(tmp_path):
    run = _fake_run(tmp_path / 'run', dict(model='capsnet_resnet20', dataset='mnist_shift', npz='absent.npz',
                                           model_kwargs=dict(img_size=36)))
    last = _random_state_dict('capsnet_resnet20', 0, num_classes=10, in_chans=1, img_size=36)
    best = _random_state_dict('capsnet_resnet20', 1, num_classes=10, in_chans=1, img_size=36)
    save_file(last, str(run / 'model_last.safetensors'))
    save_file(best, str(run / 'model_best.safetensors'))

    shipped = load_file(str(_export(run, 'capsnet_resnet20.x', tmp_path, '--checkpoint', 'model_best')))
    assert all(torch.equal(shipped[k], best[k]) for k in best)
    assert not all(torch.equal(shipped[k], last[k]) for k in last)
    shipped = load_file(str(_export(run, 'capsnet_resnet20.x', tmp_path)))
    assert all(torch.equal(shipped[k], last[k]) for k in last)


def test_a_train_py_run_exports_the_ema_weights_and_epoch_of_its_checkpoint(tmp_path):
    run = _fake_run(tmp_path / 'run', dict(model='convnet4_routing', num_classes=10, in_chans=1))
    raw = _random_state_dict('convnet4_routing', 0, num_classes=10, in_chans=1)
    ema = _random_state_dict('convnet4_routing', 1, num_classes=10, in_chans=1)
    torch.save({'state_dict': raw, 'state_dict_ema': ema, 'epoch': 7, 'args': argparse.Namespace(model='x')},
               run / 'last.pth.tar')
    out = _export(run, 'convnet4_routing.x', tmp_path)
    shipped = load_file(str(out))
    assert all(torch.equal(shipped[k], ema[k]) for k in ema)
    with safe_open(str(out), framework='pt') as f:
        assert f.metadata() == {'source': 'run/last.pth.tar', 'epoch': '7'}


def test_a_train_py_run_without_num_classes_or_in_chans_is_built_as_train_py_built_it(tmp_path):
    # train.py: no --num-classes keeps the model's default (10 for convnet4, which is grey by default);
    # --input-size gives the channels
    run = _fake_run(tmp_path / 'run', dict(model='convnet4_max', num_classes=None, in_chans=None,
                                           input_size=[3, 32, 32]))
    weights = _random_state_dict('convnet4_max', 0, in_chans=3)
    torch.save({'state_dict': weights, 'epoch': 0}, run / 'model_best.pth.tar')
    shipped = load_file(str(_export(run, 'convnet4_max.x', tmp_path, '--checkpoint', 'model_best')))
    assert shipped.keys() == weights.keys() and all(torch.equal(shipped[k], weights[k]) for k in weights)


def test_bad_runs_and_names_are_refused_with_the_reason(tmp_path):
    run = _fake_run(tmp_path / 'run', dict(model='resnet20', dataset='mnist_shift', npz='absent.npz'))
    with pytest.raises(FileNotFoundError, match='model_last.safetensors'):
        _export(run, 'resnet20.x', tmp_path)
    save_file(_random_state_dict('resnet20', 0, num_classes=10, in_chans=3), str(run / 'model_last.safetensors'))
    with pytest.raises(ValueError, match='model_last.safetensors does not hold weights of resnet20'):
        _export(run, 'resnet20.x', tmp_path)  # trained on grey digits: a 3-channel stem does not fit
    _export(run, 'resnet20.x', tmp_path, '--in-chans', '3')
    with pytest.raises(ValueError, match="trained 'resnet20', not 'resnet32'"):
        _export(run, 'resnet32.x', tmp_path)
    with pytest.raises(ValueError, match="'resnet20' is not <model>.<tag>"):
        _export(run, 'resnet20', tmp_path)
    with pytest.raises(FileNotFoundError, match='no args.yaml'):
        _export(tmp_path / 'nowhere', 'resnet20.x', tmp_path)
    odd = _fake_run(tmp_path / 'odd', dict(model='resnet20'))
    with pytest.raises(ValueError, match='neither a timm train.py run'):
        _export(odd, 'resnet20.x', tmp_path)
    plain = _fake_run(tmp_path / 'other', dict(model='resnet20', dataset='svhn', npz='absent.npz'))
    with pytest.raises(ValueError, match="unknown train_capsnet dataset 'svhn'"):
        _export(plain, 'resnet20.x', tmp_path)
