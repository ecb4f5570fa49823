"""MNIST-derived datasets (expanded MNIST, affNIST-like, MultiMNIST, affNIST .mat), the CapsNet training entry and the
evaluation of its variants; all on small synthetic digits."""
import csv
import json

import numpy as np
import pytest
import torch

import timm

import timm_routing  # noqa: F401
from timm_routing.data import (
    ExpandedMnist, MultiMnist, affnist_like, expanded_mnist, load_affnist_mat, make_variant, multi_mnist, place_digits,
)


def _digits(n=20, seed=0):
    """Blob 'digits': a random 10x8 patch at a random spot of a 28x28 image, labels 0..9 cycling."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28, 1), np.uint8)
    for i in range(n):
        r, c = rng.integers(2, 16, 2)
        images[i, r:r + 10, c:c + 8, 0] = rng.integers(1, 256, (10, 8))
    return images, np.arange(n) % 10


def test_place_digits_copies_each_digit_at_its_offset():
    images, _ = _digits(3)
    offsets = np.array([[0, 0], [12, 5], [3, 12]])
    out = place_digits(images, 40, offsets)
    assert out.shape == (3, 40, 40, 1) and out.dtype == np.uint8
    for img, canvas, (r, c) in zip(images, out, offsets):
        np.testing.assert_array_equal(canvas[r:r + 28, c:c + 28], img)
        assert canvas.sum() == img.sum()  # nothing else on the canvas
    with pytest.raises(ValueError, match='outside'):
        place_digits(images, 40, np.array([[13, 0], [0, 0], [0, 0]]))


def test_expanded_mnist_is_seeded_and_uses_every_offset():
    images, _ = _digits(400)
    a, b, c = expanded_mnist(images, seed=1), expanded_mnist(images, seed=1), expanded_mnist(images, seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(a.reshape(400, -1).sum(1), images.reshape(400, -1).sum(1))
    # a marker at the digit's corner shows the offsets: uniform over the 13 x 13 placements that keep it inside
    marker = np.zeros((2000, 28, 28), np.uint8)
    marker[:, 0, 0] = 255
    offsets = np.argwhere(expanded_mnist(marker, seed=0)[..., 0])[:, 1:]
    assert len(offsets) == 2000 and offsets.min() == 0 and offsets.max() == 12
    assert len(np.unique(offsets[:, 0] * 13 + offsets[:, 1])) == 169
    with pytest.raises(ValueError, match='smaller'):
        expanded_mnist(images, size=20)
    with pytest.raises(TypeError, match='uint8'):
        expanded_mnist(images.astype(np.float32))


def test_affnist_like_identity_ranges_only_translate():
    images, _ = _digits(10)
    out = affnist_like(images, seed=0, rotation_deg=0., shear=0., scale=(1., 1.))
    for img, canvas in zip(images[..., 0], out[..., 0]):
        rows, cols = np.flatnonzero(img.any(1)), np.flatnonzero(img.any(0))
        patch = img[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        r, c = np.flatnonzero(canvas.any(1))[0], np.flatnonzero(canvas.any(0))[0]
        np.testing.assert_array_equal(canvas[r:r + patch.shape[0], c:c + patch.shape[1]], patch)
        assert canvas.sum() == img.sum()


def test_affnist_like_transforms_are_seeded_and_stay_inside():
    images, _ = _digits(50)
    a, b = affnist_like(images, seed=3), affnist_like(images, seed=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, affnist_like(images, seed=4))
    mass_ratio = a.reshape(50, -1).sum(1) / images.reshape(50, -1).sum(1)
    assert ((mass_ratio > 0.5) & (mass_ratio < 1.6)).all()  # area scales by sx * sy in [0.64, 1.44]
    with pytest.raises(ValueError, match='ranges'):
        affnist_like(images, scale=(1.2, 0.8))


def test_multi_mnist_pairs_different_classes_within_the_shift_range():
    images, labels = _digits(30)
    merged, pairs = multi_mnist(images, labels, num_pairs=100, seed=0)
    assert merged.shape == (100, 36, 36, 1) and pairs.shape == (100, 2)
    assert (pairs[:, 0] != pairs[:, 1]).all()
    np.testing.assert_array_equal(pairs[:, 0], labels[np.arange(100) % 30])
    np.testing.assert_array_equal(multi_mnist(images, labels, 100, seed=0)[0], merged)
    # reconstruct pair 0 by trying every shift of both digits: the sum clipped at 255 must match for some shift
    first = images[0, ..., 0].astype(int)
    partners = [i for i in range(30) if labels[i] == pairs[0, 1]]
    found = False
    for p in partners:
        for dr1 in range(-4, 5):
            for dc1 in range(-4, 5):
                a = np.zeros((36, 36), int)
                a[4 + dr1:32 + dr1, 4 + dc1:32 + dc1] = first
                rest = merged[0, ..., 0].astype(int) - a
                if (rest < 0).any() and not (merged[0, ..., 0] == 255).any():
                    continue
                for dr2 in range(-4, 5):
                    for dc2 in range(-4, 5):
                        b = np.zeros((36, 36), int)
                        b[4 + dr2:32 + dr2, 4 + dc2:32 + dc2] = images[p, ..., 0]
                        if np.array_equal(np.minimum(a + b, 255), merged[0, ..., 0]):
                            found = True
    assert found
    with pytest.raises(ValueError, match='max_shift'):
        multi_mnist(images, labels, 10, max_shift=5)
    with pytest.raises(ValueError, match='two classes'):
        multi_mnist(images, np.zeros(30, int), 10)


def test_training_datasets_redraw_per_epoch():
    images, labels = _digits(40)
    ds = ExpandedMnist(images, labels, seed=0)
    x0, y0 = ds[0]
    assert x0.shape == (1, 40, 40) and x0.max() <= 1 and int(y0) == 0
    first = ds.images.clone()
    ds.set_epoch(1)
    assert not torch.equal(first, ds.images)
    np.testing.assert_array_equal(ds.images.sum((1, 2)).numpy(), first.sum((1, 2)).numpy())
    multi = MultiMnist(images, labels, num_pairs=64, seed=0)
    assert multi[0][1].shape == (2,)
    before = multi.labels.clone()
    multi.set_epoch(1)
    assert not torch.equal(before, multi.labels)


def test_make_variant_seeds_and_centring():
    images, labels = _digits(10)
    centred, y = make_variant(images, labels, 'mnist_centred')
    np.testing.assert_array_equal(centred[:, 6:34, 6:34], images)
    np.testing.assert_array_equal(make_variant(images, labels, 'mnist_shift', 'test', seed=0)[0],
                                  expanded_mnist(images, 40, 2))
    with pytest.raises(ValueError, match='Unknown MNIST variant'):
        make_variant(images, labels, 'svhn')


def test_load_affnist_mat_round_trip(tmp_path):
    scipy_io = pytest.importorskip('scipy.io')
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 40, 40)).astype(np.uint8)
    # MATLAB layout of the official files: one column-major 40x40 image per column of a 1600 x N matrix
    columns = np.stack([img.T.reshape(-1) for img in images], 1)
    path = tmp_path / '1.mat'
    scipy_io.savemat(str(path), {'affNISTdata': {'image': columns, 'label_int': np.array([3, 1, 4], np.uint8)}})
    loaded, labels = load_affnist_mat(path)
    np.testing.assert_array_equal(loaded[..., 0], images)
    np.testing.assert_array_equal(labels, [3, 1, 4])
    bad = tmp_path / 'bad.mat'
    scipy_io.savemat(str(bad), {'something': np.zeros(3)})
    with pytest.raises(ValueError, match='bad.mat: no affNISTdata'):
        load_affnist_mat(bad)
    (tmp_path / 'junk.mat').write_bytes(b'not a mat file')
    with pytest.raises(ValueError, match='junk.mat'):
        load_affnist_mat(tmp_path / 'junk.mat')


@pytest.fixture
def mnist_npz(tmp_path):
    train, train_y = _digits(120, seed=1)
    test, test_y = _digits(40, seed=2)
    path = tmp_path / 'mnist.npz'
    np.savez_compressed(path, x_train=train, y_train=train_y.astype(np.uint8), x_test=test,
                        y_test=test_y.astype(np.uint8), class_names=np.array([str(i) for i in range(10)]))
    return path


def _train(args):
    from timm_routing.train_capsnet import main
    assert main([str(a) for a in args]) == 0


def test_train_capsnet_writes_summary_weights_and_resumes(mnist_npz, tmp_path):
    out = tmp_path / 'run'
    common = ['--npz', mnist_npz, '--val-size', 20, '--batch-size', 32, '--log-interval', 0, '--output', out,
              '--model', 'capsnet_resnet20']
    _train(common + ['--epochs', 1])
    with open(out / 'summary.csv') as f:
        rows = list(csv.DictReader(f))
    assert [r['epoch'] for r in rows] == ['0']
    assert {'train_loss', 'eval_loss', 'eval_top1', 'eval_top5', 'lr'} <= set(rows[0])
    from safetensors.torch import load_file
    model = timm.create_model('capsnet_resnet20')
    model.load_state_dict(load_file(str(out / 'model_last.safetensors')))
    _train(common + ['--epochs', 2, '--resume'])
    with open(out / 'summary.csv') as f:
        assert [r['epoch'] for r in csv.DictReader(f)] == ['0', '1']
    resumed = load_file(str(out / 'model_last.safetensors'))
    assert not torch.equal(resumed['head.votes.weight'], model.state_dict()['head.votes.weight'])


def test_train_capsnet_baseline_and_multimnist(mnist_npz, tmp_path):
    _train(['--npz', mnist_npz, '--val-size', 20, '--batch-size', 64, '--log-interval', 0, '--epochs', 1,
            '--model', 'resnet20', '--output', tmp_path / 'resnet20'])
    _train(['--npz', mnist_npz, '--val-size', 20, '--batch-size', 64, '--log-interval', 0, '--epochs', 1,
            '--dataset', 'multimnist', '--train-pairs', 64, '--model', 'capsnet_resnet20_lam5',
            '--output', tmp_path / 'multi'])
    assert (tmp_path / 'multi' / 'model_best.safetensors').exists()
    with pytest.raises(ValueError, match='no capsules'):
        _train(['--npz', mnist_npz, '--val-size', 20, '--epochs', 1, '--dataset', 'multimnist', '--model',
                'resnet20', '--output', tmp_path / 'bad'])
    with pytest.raises(ValueError, match='img_size=40'):
        _train(['--npz', mnist_npz, '--val-size', 20, '--epochs', 1, '--model', 'capsnet', '--output',
                tmp_path / 'bad2'])


def test_evaluate_variants_and_two_digit_accuracy(mnist_npz, tmp_path):
    from safetensors.torch import save_file
    from timm_routing.evaluate import evaluate_arrays, main
    torch.manual_seed(0)
    model = timm.create_model('capsnet_resnet20').eval()
    ckpt = tmp_path / 'w.safetensors'
    save_file(model.state_dict(), str(ckpt))
    out = tmp_path / 'eval.json'
    assert main(['--model', 'capsnet_resnet20', '--checkpoint', str(ckpt), '--npz', str(mnist_npz),
                 '--variant', 'affnist_like', '--out', str(out)]) == 0
    result = json.loads(out.read_text())
    images, labels = make_variant(_digits(40, seed=2)[0], _digits(40, seed=2)[1], 'affnist_like', 'test')
    assert result['variant'] == 'affnist_like' and result['n'] == 40
    assert result['top1'] == evaluate_arrays(model, images, labels)['top1']

    class Fixed(torch.nn.Module):  # scores that rank classes 1 and 2 first
        num_classes = 10
        pretrained_cfg = dict(input_size=(1, 36, 36), mean=(0.,), std=(1.,), crop_pct=1.0, interpolation='bilinear')

        def forward(self, x):
            return torch.arange(10.).flip(0).roll(1).expand(len(x), 10)  # [0, 9, 8, ...]: top-2 = {1, 2}

    pairs = np.array([[1, 2], [2, 1], [1, 3]])
    res = evaluate_arrays(Fixed(), np.zeros((3, 36, 36, 1), np.uint8), pairs)
    assert res['top1'] == pytest.approx(200 / 3)


def test_image_folder_export_of_expanded_mnist(mnist_npz, tmp_path):
    from PIL import Image
    from timm_routing.data import export_image_folder
    counts = export_image_folder(mnist_npz, tmp_path / 'out', val_size=20, variant='mnist_shift')
    assert counts == dict(train=100, validation=20, test=40, test_mnist_centred=40, test_affnist_like=40)
    data = np.load(mnist_npz)
    expected, _ = make_variant(data['x_test'], data['y_test'], 'affnist_like', 'test')
    img = np.asarray(Image.open(tmp_path / 'out' / 'test_affnist_like' / f'0{data["y_test"][3]}_{data["y_test"][3]}'
                                / '00003.png'))
    np.testing.assert_array_equal(img, expected[3, ..., 0])
    manifest = json.loads((tmp_path / 'out' / 'split.json').read_text())
    assert manifest['variant'] == 'mnist_shift' and manifest['counts'] == counts
    with pytest.raises(ValueError, match='two labels'):
        export_image_folder(mnist_npz, tmp_path / 'multi', val_size=20, variant='multimnist')
