"""The in-memory training entry on plain image arrays (`--dataset plain`): He et al.'s pad-crop-flip augmentation on
the device, RGB data, the model's normalisation, and the time-budget fitting of the schedule."""
import csv

import numpy as np
import pytest
import torch
import yaml

import timm

import timm_routing  # noqa: F401
from timm_routing.train_capsnet import main, pad_crop_flip, to_model_input


def test_pad_crop_flip_without_padding_or_flip_is_the_batch():
    images = torch.randint(0, 256, (6, 8, 8, 3), dtype=torch.uint8)
    index = torch.tensor([4, 0, 2])
    assert torch.equal(pad_crop_flip(images, index, 8, hflip=0.), images[index])
    assert torch.equal(pad_crop_flip(images, index, 8, hflip=1.), images[index].flip(2))


def test_pad_crop_flip_takes_a_window_of_the_padded_image_at_a_random_offset():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (4, 6, 6, 2), dtype=torch.uint8)
    padded = torch.nn.functional.pad(images.permute(0, 3, 1, 2), (2, 2, 2, 2)).permute(0, 2, 3, 1).contiguous()
    index = torch.tensor([3, 1, 0, 2] * 16)
    crops = pad_crop_flip(padded, index, 6, hflip=0.5)
    assert crops.shape == (64, 6, 6, 2)
    seen = set()
    for crop, i in zip(crops, index):
        matches = [(dy, dx, f) for dy in range(5) for dx in range(5) for f in (False, True)
                   if torch.equal(crop, (lambda w: w.flip(1) if f else w)(padded[i, dy:dy + 6, dx:dx + 6]))]
        assert matches, 'every crop is a (possibly mirrored) 6x6 window of its padded image'
        seen.update(matches)
    assert len({(dy, dx) for dy, dx, _ in seen}) > 10 and {f for _, _, f in seen} == {False, True}


def test_to_model_input_normalises_channels_last_uint8():
    images = torch.tensor([[[[0, 255, 51]]]], dtype=torch.uint8)  # (1, 1, 1, 3)
    mean = torch.tensor([0., 0.5, 0.1]).view(1, 3, 1, 1)
    std = torch.tensor([1., 0.5, 0.2]).view(1, 3, 1, 1)
    out = to_model_input(images, mean, std)
    assert out.shape == (1, 3, 1, 1)
    assert torch.allclose(out.flatten(), torch.tensor([0., 1., 0.5]))


@pytest.fixture
def rgb_npz(tmp_path):
    """Two easily told apart classes of 12x12 RGB images (a bright and a dark square), 4 classes in all."""
    rng = np.random.default_rng(0)
    labels = np.arange(160) % 4
    images = rng.integers(0, 40, (160, 12, 12, 3)).astype(np.uint8)
    for i, label in enumerate(labels):
        images[i, 3:9, 3:9, label % 3] = 250
    path = tmp_path / 'rgb.npz'
    np.savez(path, x_train=images, y_train=labels.astype(np.uint8), x_test=images[:0],
             y_test=labels[:0].astype(np.uint8))
    return path


def test_plain_training_on_rgb_arrays(rgb_npz, tmp_path):
    out = tmp_path / 'run'
    args = ['--npz', rgb_npz, '--dataset', 'plain', '--model', 'resnet20_routing', '--val-size', 40, '--batch-size', 32,
            '--opt', 'momentum', '--lr', 0.05, '--sched', 'multistep', '--decay-milestones', 2, '--epochs', 3,
            '--pad', 2, '--log-interval', 0, '--output', out]
    assert main([str(a) for a in args]) == 0
    rows = list(csv.DictReader(open(out / 'summary.csv')))
    assert [r['epoch'] for r in rows] == ['0', '1', '2']
    assert float(rows[0]['lr']) == pytest.approx(0.05) and float(rows[2]['lr']) == pytest.approx(0.005)
    from safetensors.torch import load_file
    model = timm.create_model('resnet20_routing', num_classes=4, in_chans=3)
    model.load_state_dict(load_file(str(out / 'model_last.safetensors')))
    with pytest.raises(ValueError, match='--img-size 32'):
        main([str(a) for a in args[:-1] + [tmp_path / 'bad', '--img-size', 32]])


def test_time_budget_shortens_the_schedule_after_the_second_epoch(rgb_npz, tmp_path):
    out = tmp_path / 'run'
    args = ['--npz', rgb_npz, '--dataset', 'plain', '--model', 'resnet20', '--val-size', 40, '--batch-size', 64,
            '--opt', 'momentum', '--lr', 0.1, '--sched', 'multistep', '--decay-milestones', 50, 75, '--epochs', 100,
            '--time-budget', 0.01, '--log-interval', 0, '--output', out]
    assert main([str(a) for a in args]) == 0
    recorded = yaml.safe_load(open(out / 'args.yaml'))
    assert recorded['epochs'] == 100 and recorded['epochs_fitted'] == 2
    assert recorded['decay_milestones_fitted'] == [1, 2]
    assert len(list(csv.DictReader(open(out / 'summary.csv')))) == 2


def test_split_seed_holds_out_one_validation_set_across_training_seeds(rgb_npz, tmp_path):
    import argparse
    from timm_routing.data import load_npz, stratified_holdout
    from timm_routing.evaluate import check_holdout_of_checkpoint
    from timm_routing.train_capsnet import _build_data
    data = load_npz(rgb_npz)
    base = dict(npz=str(rgb_npz), dataset='plain', img_size=None, pad=0, device='cpu', limit=None, val_size=40)
    for seed, split_seed in ((0, 0), (1, 0), (1, 1)):
        _, val = _build_data(argparse.Namespace(**base, seed=seed, split_seed=split_seed))
        expected = data['x_train'][stratified_holdout(data['y_train'], 40, split_seed)]
        assert np.array_equal(val.images.numpy(), expected)
    out = tmp_path / 'run'
    args = ['--npz', rgb_npz, '--dataset', 'plain', '--model', 'resnet20', '--val-size', 40, '--epochs', 1,
            '--seed', 1, '--split-seed', 0, '--log-interval', 0, '--output', out]
    assert main([str(a) for a in args]) == 0
    recorded = yaml.safe_load(open(out / 'args.yaml'))
    assert (recorded['seed'], recorded['split_seed']) == (1, 0)
    # evaluate's guard follows the split seed, not the training seed (for both weight files of the run)
    for weights in ('last.pth.tar', 'model_last.safetensors'):
        check_holdout_of_checkpoint(str(out / weights), 'validation', val_size=40, seed=0)
        with pytest.raises(ValueError, match='holding out the split of seed 0'):
            check_holdout_of_checkpoint(str(out / weights), 'validation', val_size=40, seed=1)
