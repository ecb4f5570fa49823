"""Data export, the evaluation command and `python -m timm_routing.run`, on data the tests make themselves."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from timm_routing.data import class_folder_names, export_image_folder, load_npz, stratified_holdout


@pytest.fixture
def tiny_npz(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / 'tiny.npz'
    np.savez_compressed(
        path, x_train=rng.integers(0, 256, (60, 28, 28, 1), dtype=np.uint8), y_train=np.arange(60, dtype=np.uint8) % 3,
        x_test=rng.integers(0, 256, (12, 28, 28, 1), dtype=np.uint8), y_test=np.arange(12, dtype=np.uint8) % 3,
        class_names=np.array(['T-shirt/top', 'Trouser', 'Bag']))
    return path


def test_export_image_folder(tiny_npz, tmp_path):
    out = tmp_path / 'folder'
    counts = export_image_folder(tiny_npz, out, val_size=15, seed=1)
    assert counts == dict(train=45, validation=15, test=12)
    assert sorted(p.name for p in (out / 'train').iterdir()) == ['00_T-shirt_top', '01_Trouser', '02_Bag']
    manifest = json.loads((out / 'split.json').read_text())
    val_idx = manifest['validation_indices']
    assert len(val_idx) == 15 and val_idx == stratified_holdout(np.arange(60) % 3, 15, seed=1).tolist()
    # stratified: 5 of each class, and no image in both train and validation
    data = load_npz(tiny_npz)
    assert np.bincount(data['y_train'][val_idx]).tolist() == [5, 5, 5]
    train_names = {p.stem for p in (out / 'train').rglob('*.png')}
    assert train_names.isdisjoint({f'{i:05d}' for i in val_idx})
    # pixels survive the round trip
    i = val_idx[0]
    folder = class_folder_names(data['class_names'])[data['y_train'][i]]
    img = np.asarray(Image.open(out / 'validation' / folder / f'{i:05d}.png'))
    np.testing.assert_array_equal(img, data['x_train'][i, ..., 0])
    with pytest.raises(FileExistsError, match='already holds an exported dataset'):
        export_image_folder(tiny_npz, out)


def test_export_command(tiny_npz, tmp_path):
    proc = subprocess.run([sys.executable, '-m', 'timm_routing.data', '--npz', str(tiny_npz), '--out',
                           str(tmp_path / 'f'), '--val-size', '6'], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith('train 54, validation 6, test 12')


def test_padded_export_gives_he_et_al_crops_through_train_py_transform(tmp_path):
    """`--train-pad 4` + train.py's crop arguments = zero padding of 4, a random 32x32 crop and a flip, exactly."""
    import random
    import torch
    from timm.data import create_transform
    from timm_routing.data import padded_crop_args
    rng = np.random.default_rng(0)
    npz = tmp_path / 'rgb.npz'
    x_train = rng.integers(1, 256, (8, 32, 32, 3), dtype=np.uint8)  # no zero pixel: the border is the padding
    np.savez(npz, x_train=x_train, y_train=np.arange(8) % 2, x_test=x_train[:2], y_test=np.arange(2))
    proc = subprocess.run([sys.executable, '-m', 'timm_routing.data', '--npz', str(npz), '--out', str(tmp_path / 'f'),
                           '--val-size', '2', '--train-pad', '4'], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert 'give train.py: --scale 0.64 0.64 --ratio 1.0 1.0 --color-jitter 0' in proc.stdout
    manifest = json.loads((tmp_path / 'f' / 'split.json').read_text())
    assert manifest['train_pad'] == 4 and manifest['image_size'] == [32, 32]
    train_file = sorted((tmp_path / 'f' / 'train').rglob('*.png'))[0]
    padded = np.asarray(Image.open(train_file).convert('RGB'))
    original = x_train[int(train_file.stem)]
    assert padded.shape == (40, 40, 3)
    np.testing.assert_array_equal(padded[4:36, 4:36], original)
    assert padded.sum() == original.astype(np.int64).sum()  # everything else is zero
    for split in ('validation', 'test'):  # never padded
        assert all(Image.open(f).size == (32, 32) for f in (tmp_path / 'f' / split).rglob('*.png'))

    # train.py's training transform (its default random interpolation), without normalisation
    transform = create_transform(
        32, is_training=True, **padded_crop_args(32, 32, 4), hflip=0.5, color_jitter=0., interpolation='random',
        mean=(0., 0., 0.), std=(1., 1., 1.))
    candidates = {}
    for dy in range(9):
        for dx in range(9):
            crop = padded[dy:dy + 32, dx:dx + 32]
            for flip in (False, True):
                candidates[(crop[:, ::-1] if flip else crop).tobytes()] = (dy, dx, flip)
    random.seed(0)
    torch.manual_seed(0)
    seen = []
    image = Image.open(train_file).convert('RGB')
    for _ in range(800):
        out = (transform(image) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        key = np.ascontiguousarray(out).tobytes()
        assert key in candidates, 'a crop that is not an unscaled 32x32 window of the padded image'
        seen.append(candidates[key])
    assert {(dy, dx) for dy, dx, _ in seen} == {(dy, dx) for dy in range(9) for dx in range(9)}
    assert 0.4 < np.mean([flip for _, _, flip in seen]) < 0.6
    with pytest.raises(ValueError, match='train_pad must be >= 0, got -1'):
        export_image_folder(npz, tmp_path / 'g', val_size=2, train_pad=-1)
    with pytest.raises(TypeError, match=r"train_pad must be an int, got 4.0 \(float\)"):
        export_image_folder(npz, tmp_path / 'g', val_size=2, train_pad=4.0)


def test_bad_dataset_files(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.npz does not exist'):
        load_npz(tmp_path / 'nope.npz')
    bad = tmp_path / 'bad.npz'
    np.savez(bad, x_train=np.zeros((2, 4, 4, 1), np.uint8))
    with pytest.raises(ValueError, match=r"lacks the arrays \['y_train', 'x_test', 'y_test'\]"):
        load_npz(bad)
    garbage = tmp_path / 'garbage.npz'
    garbage.write_bytes(b'junk')
    with pytest.raises(ValueError, match='garbage.npz is not a readable .npz file'):
        load_npz(garbage)
    with pytest.raises(ValueError, match='Validation size 10 must be >= 0 and < the 10'):
        stratified_holdout(np.zeros(10), 10)


def test_evaluate_command_on_a_checkpoint(tiny_npz, tmp_path):
    import timm
    import torch
    from timm.data import create_transform, resolve_data_config
    from timm_routing.evaluate import evaluate_arrays, load_split
    torch.manual_seed(0)
    model = timm.create_model('convnet4_routing.cpu_fmnist').eval()  # the Fashion-MNIST cfg: 1 channel, 28x28
    ckpt = tmp_path / 'ckpt.pth'
    torch.save({'state_dict': model.state_dict()}, ckpt)
    # by hand: timm's eval transform, argmax
    x, y = load_split(tiny_npz, 'test')
    transform = create_transform(**resolve_data_config(model=model))
    with torch.no_grad():
        logits = model(torch.stack([transform(Image.fromarray(img[..., 0])) for img in x]))
    expected_top1 = 100. * (logits.argmax(1).numpy() == y).mean()
    expected_top5 = 100. * (logits.topk(5, 1).indices.numpy() == y[:, None]).any(1).mean()
    assert evaluate_arrays(model, x, y, batch_size=5)['top1'] == pytest.approx(expected_top1)
    out = tmp_path / 'result.json'
    proc = subprocess.run(
        [sys.executable, '-m', 'timm_routing.evaluate', '--model', 'convnet4_routing.cpu_fmnist', '--checkpoint',
         str(ckpt), '--npz', str(tiny_npz), '--split', 'test', '--batch-size', '4', '--out', str(out)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result['n'] == 12 and result['split'] == 'test' and result['weights'] == 'ckpt.pth'
    assert result['class_counts'] == np.bincount(y).tolist() == [4, 4, 4]
    assert result['top1'] == pytest.approx(expected_top1) and result['top5'] == pytest.approx(expected_top5)
    assert result['command'].startswith('python -m timm_routing.evaluate --model convnet4_routing.cpu_fmnist')
    with pytest.raises(ValueError, match="Unknown split 'val'"):
        load_split(tiny_npz, 'val')
    x_val, _ = load_split(tiny_npz, 'validation', val_size=15, seed=1)
    assert len(x_val) == 15


def test_evaluate_passes_model_kwargs_to_create_model(tiny_npz, tmp_path):
    """`--model-kwargs` (timm's ParseKwargs, as validate.py) rebuilds the head around the same shipped weights."""
    import timm
    from timm_routing.evaluate import evaluate_arrays, load_split, main
    name = 'convnet4_routing.cpu_fmnist'
    out = tmp_path / 'result.json'
    assert main(['--model', name, '--npz', str(tiny_npz), '--model-kwargs', 'routing_lam=0.', 'routing_iters=2',
                 '--out', str(out)]) == 0
    result = json.loads(out.read_text())
    assert result['model_kwargs'] == {'routing_lam': 0.0, 'routing_iters': 2}
    model = timm.create_model(name, pretrained=True, routing_lam=0., routing_iters=2)
    assert (model.head.global_pool.lam, model.head.global_pool.iters) == (0., 2)
    assert result['top1'] == evaluate_arrays(model, *load_split(tiny_npz, 'test'))['top1']
    with pytest.raises(ValueError, match='Routing lambda must be finite and >= 0, got -1'):  # it reaches the layer
        main(['--model', name, '--npz', str(tiny_npz), '--model-kwargs', 'routing_lam=-1'])
    assert main(['--model', name, '--npz', str(tiny_npz), '--out', str(out)]) == 0
    assert json.loads(out.read_text())['model_kwargs'] is None


def test_evaluate_refuses_another_holdout_than_the_run_trained_with(tiny_npz, tmp_path):
    import timm
    import torch
    from timm_routing.evaluate import evaluate_model
    name = 'convnet4_routing.cpu_fmnist'
    model = timm.create_model(name)
    ckpt = tmp_path / 'last.pth.tar'  # what train_capsnet writes: its args name the npz, val_size and seed
    torch.save({'state_dict': model.state_dict(), 'args': dict(npz=str(tiny_npz), dataset='plain', seed=1,
                                                                val_size=15)}, ckpt)
    with pytest.raises(ValueError, match=r'last\.pth\.tar was trained by train_capsnet holding out the split of seed 1 '
                                         r'\(--val-size 15\)'):
        evaluate_model(name, tiny_npz, 'validation', str(ckpt), val_size=15, seed=0)
    with pytest.raises(ValueError, match='--seed 1 --val-size 15'):
        evaluate_model(name, tiny_npz, 'train', str(ckpt), val_size=20, seed=1)
    assert evaluate_model(name, tiny_npz, 'validation', str(ckpt), val_size=15, seed=1)['n'] == 15
    assert evaluate_model(name, tiny_npz, 'test', str(ckpt))['n'] == 12  # the test split is fixed


def test_evaluate_names_a_missing_unreadable_or_mismatched_checkpoint(tiny_npz, tmp_path):
    import timm
    from safetensors.torch import save_file
    from timm_routing.evaluate import evaluate_model, main
    name = 'convnet4_routing.cpu_fmnist'
    with pytest.raises(FileNotFoundError, match=r'--checkpoint \S*missing\.pth\.tar does not exist'):
        main(['--model', name, '--npz', str(tiny_npz), '--checkpoint', str(tmp_path / 'missing.pth.tar')])
    broken = tmp_path / 'broken.safetensors'
    broken.write_bytes(b'not a safetensors file')
    with pytest.raises(ValueError, match=r'broken\.safetensors is not a readable checkpoint'):
        evaluate_model(name, tiny_npz, checkpoint=str(broken))
    other = tmp_path / 'resnet20.safetensors'
    save_file(timm.create_model('resnet20').state_dict(), str(other))
    with pytest.raises(ValueError, match=r'resnet20\.safetensors does not hold weights of convnet4_routing'):
        evaluate_model(name, tiny_npz, checkpoint=str(other))
    # the same architecture with another head: a shape mismatch, named as well
    save_file(timm.create_model(name, num_classes=3).state_dict(), str(other))
    with pytest.raises(ValueError, match=r'(?s)does not hold weights of .*size mismatch for head\.fc\.weight'):
        evaluate_model(name, tiny_npz, checkpoint=str(other))


@pytest.mark.parametrize('limit', [0, -3, 2.5, True])
def test_evaluate_refuses_a_limit_that_is_not_a_positive_count(tiny_npz, limit):
    from timm_routing.evaluate import evaluate_model
    with pytest.raises(ValueError, match=f'limit must be a positive number of images, got {limit!r}'):
        evaluate_model('convnet4_routing.cpu_fmnist', tiny_npz, limit=limit)


def test_evaluate_runs_on_the_device_it_is_given_and_records_it(tiny_npz, tmp_path):
    """`--device` as validate.py's: the JSON names it; a CUDA run (where a GPU is present) scores as the CPU does."""
    import torch
    from timm_routing.evaluate import evaluate_model, main
    name = 'convnet4_routing.cpu_fmnist'
    cpu = evaluate_model(name, tiny_npz, 'test')
    assert cpu['device'] == 'cpu'
    out = tmp_path / 'result.json'
    assert main(['--model', name, '--npz', str(tiny_npz), '--device', 'cpu', '--out', str(out)]) == 0
    assert json.loads(out.read_text())['top1'] == cpu['top1']
    for bad in ('gpu0', 'cuda:x', 3.5):
        with pytest.raises(ValueError, match=f"device must be a torch device such as 'cpu' or 'cuda', got {bad!r}"):
            evaluate_model(name, tiny_npz, 'test', device=bad)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device 'cuda': CUDA is not available here"):
            main(['--model', name, '--npz', str(tiny_npz), '--device', 'cuda'])
    else:
        gpu = evaluate_model(name, tiny_npz, 'test', device='cuda')
        assert gpu['device'] == torch.cuda.get_device_name(0)
        assert (gpu['n'], gpu['top1'], gpu['top5']) == (cpu['n'], cpu['top1'], cpu['top5'])


def test_evaluate_names_an_empty_split(tiny_npz):
    from timm_routing.evaluate import evaluate_model
    with pytest.raises(ValueError, match=r'validation split of \S*tiny\S*\.npz has no images \(--val-size 0\)'):
        evaluate_model('convnet4_routing.cpu_fmnist', tiny_npz, 'validation', val_size=0)


def test_evaluate_reads_the_holdout_of_a_run_from_its_args_yaml(tiny_npz, tmp_path):
    import timm
    import yaml
    from safetensors.torch import save_file
    from timm_routing.evaluate import evaluate_model
    name = 'convnet4_routing.cpu_fmnist'
    model = timm.create_model(name)
    run = tmp_path / 'run'
    run.mkdir()
    weights = run / 'model_last.safetensors'  # train_capsnet's final weights: no args inside, args.yaml beside
    save_file(model.state_dict(), str(weights))
    (run / 'args.yaml').write_text(yaml.safe_dump(dict(npz=str(tiny_npz), dataset='plain', seed=2, val_size=15)))
    with pytest.raises(ValueError, match=r'model_last\.safetensors was trained by train_capsnet holding out the split '
                                         r'of seed 2'):
        evaluate_model(name, tiny_npz, 'validation', str(weights), val_size=15, seed=0)
    assert evaluate_model(name, tiny_npz, 'validation', str(weights), val_size=15, seed=2)['n'] == 15
    (run / 'args.yaml').write_text(yaml.safe_dump(dict(data_dir='x', seed=2)))  # a timm train.py run: not checked
    assert evaluate_model(name, tiny_npz, 'validation', str(weights), val_size=15, seed=0)['n'] == 15


def test_run_module_registers_models_before_the_script(tmp_path):
    script = tmp_path / 'list_models.py'
    script.write_text(
        'import sys, timm\n'
        'print(" ".join(sorted(timm.list_models(["resnet20", "resnet20_routing"]))), sys.argv[1:])\n')
    proc = subprocess.run([sys.executable, '-m', 'timm_routing.run', str(script), '--flag', 'x'],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "resnet20 resnet20_routing ['--flag', 'x']"
    missing = subprocess.run([sys.executable, '-m', 'timm_routing.run', str(tmp_path / 'validate.py')],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and 'validate.py not found' in missing.stderr
