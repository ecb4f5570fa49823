"""The in-memory training entry on plain image arrays (`--dataset plain`): He et al.'s pad-crop-flip augmentation on
the device, RGB data, the model's normalisation, the time-budget fitting of the schedule, and `-c` recipes."""
import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import timm

import timm_routing  # noqa: F401
from timm_routing.train_capsnet import _RUN_RECORDS, main, pad_crop_flip, parse_args, to_model_input


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


def test_limited_run_builds_the_head_of_the_full_data(rgb_npz, tmp_path):
    """A --limit run counts classes and channels over all the npz's training images, not only the ones it keeps (with
    labels sorted, the first images kept are all of class 0), so its weights fit the full run's model."""
    from safetensors.torch import load_file
    from timm_routing.data import load_npz
    from timm_routing.train_capsnet import model_classes_and_channels
    data = dict(np.load(rgb_npz))
    order = np.argsort(data['y_train'], kind='stable')
    data['x_train'], data['y_train'] = data['x_train'][order], data['y_train'][order]
    sorted_npz = tmp_path / 'sorted.npz'
    np.savez(sorted_npz, **data)
    assert model_classes_and_channels('plain', load_npz(str(sorted_npz))) == (4, 3)
    assert model_classes_and_channels('multimnist') == (10, 1)
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        model_classes_and_channels('svhn')
    out = tmp_path / 'run'
    args = ['--npz', sorted_npz, '--dataset', 'plain', '--model', 'resnet20', '--val-size', 40, '--limit', 3,
            '--epochs', 1, '--log-interval', 0, '--output', out]
    assert main([str(a) for a in args]) == 0
    weights = load_file(out / 'model_last.safetensors')
    assert weights['head.fc.weight'].shape == (4, 64) and weights['stem.conv.weight'].shape[1] == 3


def test_split_seed_holds_out_one_validation_set_across_training_seeds(rgb_npz, tmp_path):
    import argparse
    from timm_routing.data import load_npz, stratified_holdout
    from timm_routing.evaluate import check_holdout_of_checkpoint
    from timm_routing.train_capsnet import _build_data
    data = load_npz(rgb_npz)
    base = dict(npz=str(rgb_npz), dataset='plain', img_size=None, pad=0, device='cpu', limit=None, val_size=40)
    for seed, split_seed in ((0, 0), (1, 0), (1, 1)):
        _, val = _build_data(argparse.Namespace(**base, seed=seed, split_seed=split_seed), data)
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
    # safetensors files moved out of the run folder (no args.yaml beside them) carry the hold-out in their metadata
    moved = tmp_path / 'moved'
    moved.mkdir()
    for weights in ('model_last.safetensors', 'model_best.safetensors'):
        shutil.copy(out / weights, moved / weights)
        check_holdout_of_checkpoint(str(moved / weights), 'validation', val_size=40, seed=0)
        with pytest.raises(ValueError, match=r'holding out the split of seed 0 \(--val-size 40\)'):
            check_holdout_of_checkpoint(str(moved / weights), 'train', val_size=40, seed=1)
        with pytest.raises(ValueError, match='--val-size 40'):
            check_holdout_of_checkpoint(str(moved / weights), 'validation', val_size=50, seed=0)


@pytest.mark.parametrize('option, value, match', [
    ('--epochs', 0, '--epochs must be an integer >= 1, got 0'),
    ('--batch-size', 0, '--batch-size must be an integer >= 1, got 0'),
    ('--val-size', 0, '--val-size must be an integer >= 1, got 0'),
    ('--limit', 0, '--limit must be an integer >= 1, got 0'),
    ('--train-pairs', -2, '--train-pairs must be an integer >= 1, got -2'),
    ('--pad', -1, '--pad must be an integer >= 0, got -1'),
    ('--time-budget', -5, '--time-budget must be a positive number of seconds, got -5.0'),
    ('--hflip', 1.5, r'--hflip is a probability in \[0, 1\], got 1.5'),
    ('--recon-weight', -1, '--recon-weight must be >= 0, got -1.0'),
])
def test_options_that_cannot_be_meant_are_refused_before_training(rgb_npz, tmp_path, option, value, match):
    out = tmp_path / 'run'
    with pytest.raises(ValueError, match=match):
        main([str(a) for a in ['--npz', rgb_npz, '--dataset', 'plain', '--model', 'resnet20', '--val-size', 40,
                               '--epochs', 1, '--output', out, option, value]])
    assert not out.exists()  # refused before the run folder is made


RECIPES = Path(__file__).resolve().parent.parent / 'scripts' / 'recipes'
RESULTS = Path(__file__).resolve().parent.parent / 'results'
# train_capsnet recipes: the shipped tags whose recorded run is this entry's (its args.yaml has `npz`)
CAPSNET_RECIPES = sorted(p.stem for p in RECIPES.glob('*.yaml') if (RESULTS / p.stem / 'args.yaml').exists()
                         and 'npz' in yaml.safe_load(open(RESULTS / p.stem / 'args.yaml')))


def test_train_capsnet_recipes_exist():
    assert len(CAPSNET_RECIPES) >= 11, CAPSNET_RECIPES


@pytest.mark.parametrize('tag', CAPSNET_RECIPES)
def test_recipe_gives_the_options_of_the_recorded_run(tag):
    """`-c scripts/recipes/<tag>.yaml` with the run's paths and device reproduces every option its args.yaml records.

    A run resumed with other options (another device, autocast) keeps the args.yaml of its first start as
    `args_first_start.yaml`: the recipe is that start's."""
    first_start = RESULTS / tag / 'args_first_start.yaml'
    recorded = yaml.safe_load(open(first_start if first_start.exists() else RESULTS / tag / 'args.yaml'))
    device = recorded.get('device', 'cpu')  # the first runs' args.yaml predate --device (they ran on the CPU)
    args = parse_args(['-c', str(RECIPES / f'{tag}.yaml'), '--npz', recorded['npz'], '--output', recorded['output'],
                       '--device', device, '--log-interval', str(recorded['log_interval'])])
    parsed = vars(args)
    parsed['split_seed'] = args.seed if args.split_seed is None else args.split_seed  # as train() resolves it
    not_in_recipes = _RUN_RECORDS + ('resume', 'limit')
    compared = {k: v for k, v in recorded.items() if k not in not_in_recipes}
    assert {k: parsed[k] for k in compared} == compared


def test_config_gives_defaults_that_the_command_line_overrides(tmp_path):
    config = tmp_path / 'recipe.yaml'
    config.write_text('model: resnet20_routing\nepochs: 3\nlr: 0.05\ndecay_milestones: [1, 2]\n'
                      'model_kwargs: {routing_lam: 5, routing_iters: 2}\nnpz: data.npz\n')
    args = parse_args(['-c', str(config), '--lr', '0.2', '--model-kwargs', 'routing_iters=3', '--output', 'run'])
    assert (args.model, args.epochs, args.lr, args.decay_milestones) == ('resnet20_routing', 3, 0.2, [1, 2])
    assert args.model_kwargs == {'routing_lam': 5, 'routing_iters': 3}  # the command line's key wins
    assert (args.npz, args.output, args.config) == ('data.npz', 'run', str(config))
    assert parse_args(['--npz', 'x.npz', '--output', 'run']).lr == 1e-3  # no config: the parser's own defaults


@pytest.mark.parametrize('text, error, match', [
    ('epochz: 3\n', ValueError, r"unknown options \['epochz'\]"),
    ('model: convnet4_routing\ndevice_modules: [timm_routing]\n', ValueError,
     r"unknown options \['device_modules'\] .*, a recipe for timm's train.py \(python train.py -c FILE\)\?"),
    ('epochs: 16\nepochs_fitted: 16\n', ValueError, r"\['epochs_fitted'\] record a finished run"),
    ('epochs: ten\n', TypeError, "epochs: 'ten' is not an integer"),
    ('epochs: 2.5\n', TypeError, 'epochs: 2.5 is not an integer'),
    ('lr: [0.1]\n', TypeError, r'lr: \[0.1\] is not a number'),
    ('decay_milestones: 30\n', TypeError, 'decay_milestones: 30 is not a list'),
    ('dataset: cifar10\n', ValueError, "dataset: 'cifar10' is not one of"),
    ('resume: 1\n', TypeError, 'resume: 1 is not true or false'),
    ('model_kwargs: routing_lam=5\n', TypeError, 'is not a mapping'),
    ('- epochs: 3\n', TypeError, 'expected a mapping of options, got a list'),
    ('epochs: [3\n', ValueError, 'cannot be read as YAML'),
])
def test_bad_config_names_the_file_and_the_key(tmp_path, text, error, match):
    config = tmp_path / 'bad.yaml'
    config.write_text(text)
    with pytest.raises(error, match=match) as info:
        parse_args(['-c', str(config), '--npz', 'x.npz', '--output', 'run'])
    assert str(config) in str(info.value)


def test_missing_config_file_and_missing_required_options(tmp_path, capsys):
    with pytest.raises(ValueError, match='nowhere.yaml: cannot be read'):
        parse_args(['-c', str(tmp_path / 'nowhere.yaml'), '--npz', 'x.npz', '--output', 'run'])
    with pytest.raises(SystemExit):
        parse_args(['--output', 'run'])
    assert '--npz required (on the command line or in --config)' in capsys.readouterr().err


def test_training_from_a_config_records_it(rgb_npz, tmp_path):
    config = tmp_path / 'recipe.yaml'
    config.write_text(f'npz: {rgb_npz}\ndataset: plain\nmodel: resnet20\nval_size: 40\nbatch_size: 64\nepochs: 1\n'
                      'log_interval: 0\n')
    out = tmp_path / 'run'
    assert main(['-c', str(config), '--output', str(out)]) == 0
    recorded = yaml.safe_load(open(out / 'args.yaml'))
    assert (recorded['config'], recorded['model'], recorded['val_size']) == (str(config), 'resnet20', 40)
    assert len(list(csv.DictReader(open(out / 'summary.csv')))) == 1
    # a run's args.yaml is a config for the same run, unless it records a config of its own (pass that one instead)
    with pytest.raises(ValueError, match=r"\['config'\] record a finished run"):
        parse_args(['-c', str(out / 'args.yaml')])
    plain = tmp_path / 'plain'
    assert main(['--npz', str(rgb_npz), '--dataset', 'plain', '--model', 'resnet20', '--val-size', '40',
                 '--epochs', '1', '--log-interval', '0', '--output', str(plain)]) == 0
    assert yaml.safe_load(open(plain / 'args.yaml'))['config'] is None
    again = parse_args(['-c', str(plain / 'args.yaml')])
    assert {k: v for k, v in vars(again).items() if k != 'config'} == \
        {k: v for k, v in yaml.safe_load(open(plain / 'args.yaml')).items() if k != 'config'}


def _weights(path):
    from safetensors.torch import load_file
    return load_file(str(path))


def test_compiled_channels_last_steps_match_the_plain_ones(rgb_npz, tmp_path):
    # the same seed draws the same batches and crops: compiling the forward (aot_eager: traced, not re-generated
    # kernels) and channels-last memory change the arithmetic's order only
    base = ['--npz', rgb_npz, '--dataset', 'plain', '--model', 'resnet20_routing', '--val-size', 40, '--batch-size',
            40, '--opt', 'momentum', '--lr', 0.05, '--epochs', 1, '--log-interval', 0]
    assert main([str(a) for a in base + ['--output', tmp_path / 'plain']]) == 0
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    assert main([str(a) for a in base + ['--output', tmp_path / 'fast', '--channels-last',
                                         '--torchcompile', 'aot_eager']]) == 0
    assert torch._dynamo.utils.counters['stats']['unique_graphs'] >= 1  # the steps did run compiled
    plain, fast = _weights(tmp_path / 'plain' / 'model_last.safetensors'), _weights(
        tmp_path / 'fast' / 'model_last.safetensors')
    assert sorted(plain) == sorted(fast)  # the model's own names, no `_orig_mod.` of the compiled wrapper
    for name in plain:
        torch.testing.assert_close(fast[name], plain[name], rtol=1e-3, atol=1e-4, msg=name)
    recorded = yaml.safe_load(open(tmp_path / 'fast' / 'args.yaml'))
    assert (recorded['channels_last'], recorded['torchcompile']) == (True, 'aot_eager')


@pytest.mark.parametrize('amp_dtype', ['bfloat16', 'float16'])
def test_mixed_precision_trains_and_resumes(rgb_npz, tmp_path, amp_dtype):
    out = tmp_path / 'run'
    args = ['--npz', rgb_npz, '--dataset', 'plain', '--model', 'resnet20', '--val-size', 40, '--batch-size', 40,
            '--opt', 'momentum', '--lr', 0.05, '--log-interval', 0, '--amp', '--amp-dtype', amp_dtype, '--output', out]
    assert main([str(a) for a in args + ['--epochs', 1]]) == 0
    state = torch.load(out / 'last.pth.tar', weights_only=False)
    assert (state['scaler'] is not None) == (amp_dtype == 'float16')  # float16 scales the loss, bfloat16 need not
    assert main([str(a) for a in args + ['--epochs', 2, '--resume']]) == 0
    assert yaml.safe_load(open(out / 'args.yaml'))['resumes'] == [dict(epoch=1, changed=dict(epochs=[1, 2]))]
    rows = list(csv.DictReader(open(out / 'summary.csv')))
    assert [r['epoch'] for r in rows] == ['0', '1'] and all(np.isfinite(float(r['train_loss'])) for r in rows)
    assert all(v.dtype == torch.float32 for v in _weights(out / 'model_last.safetensors').values()
               if v.is_floating_point())  # autocast leaves the parameters in float32


@pytest.mark.parametrize('device', ['cpu', pytest.param('cuda', marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason='needs a CUDA device'))])
def test_a_resumed_run_trains_as_an_uninterrupted_one(rgb_npz, tmp_path, monkeypatch, device):
    # on CUDA this failed once: the checkpoint's CPU RNG state was loaded onto the GPU, and the CUDA generator that
    # draws the batches there was not saved
    import timm_routing.train_capsnet as train_capsnet
    args = ['--npz', rgb_npz, '--dataset', 'plain', '--model', 'resnet20', '--val-size', 40, '--batch-size', 40,
            '--opt', 'momentum', '--lr', 0.05, '--log-interval', 0, '--epochs', 3, '--device', device]
    assert main([str(a) for a in args + ['--output', tmp_path / 'whole']]) == 0
    save = train_capsnet._save_atomically

    def save_and_stop(write, path):
        save(write, path)
        if path.name == 'last.pth.tar':
            raise KeyboardInterrupt

    monkeypatch.setattr(train_capsnet, '_save_atomically', save_and_stop)
    with pytest.raises(KeyboardInterrupt):  # stopped once epoch 0's checkpoint is in place
        main([str(a) for a in args + ['--output', tmp_path / 'parts']])
    monkeypatch.undo()
    assert torch.load(tmp_path / 'parts' / 'last.pth.tar', weights_only=False)['epoch'] == 0
    assert main([str(a) for a in args + ['--resume', '--output', tmp_path / 'parts']]) == 0
    whole, parts = _weights(tmp_path / 'whole' / 'model_last.safetensors'), _weights(
        tmp_path / 'parts' / 'model_last.safetensors')
    for name in whole:  # a GPU's convolutions need not be bitwise reproducible; other batches would differ by far more
        torch.testing.assert_close(parts[name], whole[name], rtol=1e-4, atol=1e-5, msg=name)


def _parameters_after_a_still_epoch(rgb_npz, out, *start):
    """Trains one epoch at learning rate 0 (only BatchNorm's running statistics move) from the given start."""
    args = ['--npz', rgb_npz, '--dataset', 'plain', '--model', 'resnet20', '--val-size', 40, '--batch-size', 40,
            '--opt', 'momentum', '--lr', 0, '--min-lr', 0, '--epochs', 1, '--log-interval', 0, '--output', out]
    assert main([str(a) for a in args + list(start)]) == 0
    weights = _weights(out / 'model_last.safetensors')
    names = [n for n, _ in timm.create_model('resnet20', num_classes=4, in_chans=3).named_parameters()]
    return {n: weights[n] for n in names}


@pytest.mark.parametrize('checkpoint', ['model_last.safetensors', 'last.pth.tar'])
def test_initial_checkpoint_starts_from_its_weights(rgb_npz, tmp_path, checkpoint):
    first = tmp_path / 'first'
    main([str(a) for a in ['--npz', rgb_npz, '--dataset', 'plain', '--model', 'resnet20', '--val-size', 40,
                           '--batch-size', 40, '--opt', 'momentum', '--lr', 0.05, '--epochs', 1, '--log-interval', 0,
                           '--seed', 3, '--output', first]])
    started = _parameters_after_a_still_epoch(rgb_npz, tmp_path / 'second', '--initial-checkpoint', first / checkpoint)
    trained = _weights(first / 'model_last.safetensors')
    for name, value in started.items():
        torch.testing.assert_close(value, trained[name], rtol=0, atol=0, msg=name)
    fresh = _parameters_after_a_still_epoch(rgb_npz, tmp_path / 'fresh')
    assert not torch.equal(fresh['stem.conv.weight'], trained['stem.conv.weight'])


def test_pretrained_starts_from_the_tag_with_timms_head_and_stem_adaptation(rgb_npz, tmp_path):
    # resnet20.cpu_mnist_shift: grey digits, 10 classes; here 3-channel images of 4 classes
    started = _parameters_after_a_still_epoch(
        rgb_npz, tmp_path / 'run', '--model', 'resnet20.cpu_mnist_shift', '--pretrained')
    tagged = timm.create_model('resnet20.cpu_mnist_shift', pretrained=True)
    stem = tagged.stem.conv.weight
    torch.testing.assert_close(started['stem.conv.weight'], stem.repeat(1, 3, 1, 1) / 3)  # timm's adapt_input_conv
    for name, value in tagged.named_parameters():
        if not name.startswith(('stem.conv', 'head.fc.')):
            torch.testing.assert_close(started[name], value.detach(), rtol=0, atol=0, msg=name)
    assert started['head.fc.weight'].shape == (4, tagged.head.fc.weight.shape[1])


def test_bad_starting_weights_name_the_file(rgb_npz, tmp_path):
    with pytest.raises(FileNotFoundError, match='missing.safetensors'):
        _parameters_after_a_still_epoch(
            rgb_npz, tmp_path / 'a', '--initial-checkpoint', tmp_path / 'missing.safetensors')
    other = tmp_path / 'convnet.safetensors'
    from safetensors.torch import save_file
    save_file(timm.create_model('convnet4_max', num_classes=4, in_chans=3).state_dict(), str(other))
    with pytest.raises(ValueError, match='convnet.safetensors does not hold weights of resnet20'):
        _parameters_after_a_still_epoch(rgb_npz, tmp_path / 'b', '--initial-checkpoint', other)
    with pytest.raises(ValueError, match='--pretrained and --initial-checkpoint'):
        _parameters_after_a_still_epoch(rgb_npz, tmp_path / 'c', '--pretrained', '--initial-checkpoint', other)


def test_a_run_stopped_while_saving_resumes_from_its_last_whole_epoch(rgb_npz, tmp_path, monkeypatch):
    import timm_routing.train_capsnet as train_capsnet
    out = tmp_path / 'run'
    args = ['--npz', rgb_npz, '--dataset', 'plain', '--model', 'resnet20', '--val-size', 40, '--batch-size', 40,
            '--opt', 'momentum', '--lr', 0.05, '--log-interval', 0, '--output', out]
    assert main([str(a) for a in args + ['--epochs', 1]]) == 0
    first = torch.load(out / 'last.pth.tar', weights_only=False)

    def stopped_while_writing(obj, path):
        Path(path).write_bytes(b'half a checkpoint')
        raise KeyboardInterrupt

    monkeypatch.setattr(train_capsnet.torch, 'save', stopped_while_writing)
    with pytest.raises(KeyboardInterrupt):  # stopped in epoch 1's checkpoint, after its summary row
        main([str(a) for a in args + ['--epochs', 3, '--resume']])
    monkeypatch.undo()
    assert [r['epoch'] for r in csv.DictReader(open(out / 'summary.csv'))] == ['0', '1']
    kept = torch.load(out / 'last.pth.tar', weights_only=False)
    assert kept['epoch'] == 0 and all(torch.equal(kept['state_dict'][k], v) for k, v in first['state_dict'].items())

    assert main([str(a) for a in args + ['--epochs', 3, '--resume']]) == 0
    assert [r['epoch'] for r in csv.DictReader(open(out / 'summary.csv'))] == ['0', '1', '2']
    assert torch.load(out / 'last.pth.tar', weights_only=False)['epoch'] == 2
