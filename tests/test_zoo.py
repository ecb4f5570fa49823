"""Shipped weights: offline loading, timm's head and stem adaptation, bad files, model cards, Hub folders."""
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import timm

from timm_routing.hub import load_evidence, render_model_card, save_hub_folder
from timm_routing.models._pretrained import PRETRAINED_DIR

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted(p.stem for p in PRETRAINED_DIR.glob('*.safetensors'))
FMNIST = [t for t in SHIPPED if t.endswith('_fmnist')]
DATA_DIR = Path(os.environ.get('TIMM_ROUTING_DATA', ROOT.parent / 'shared' / 'data'))


def test_every_shipped_file_is_a_registered_tag_with_a_card_and_a_recipe():
    assert SHIPPED, 'no shipped weights'
    pretrained = set(timm.list_pretrained())
    for tag in SHIPPED:
        assert tag in pretrained
        assert (ROOT / 'model_cards' / f'{tag}.md').is_file(), f'{tag} has no model card'
        assert (ROOT / 'results' / tag / 'summary.csv').is_file(), f'{tag} has no training evidence'
        assert (ROOT / 'scripts' / 'recipes' / f'{tag}.yaml').is_file(), f'{tag} has no recipe'


@pytest.mark.parametrize('tag', SHIPPED)
def test_shipped_weights_load_offline_and_adapt(tag):
    model = timm.create_model(tag, pretrained=True).eval()
    cfg = model.pretrained_cfg
    assert Path(cfg['file']).is_file() and cfg['hf_hub_id'] == f'timm-routing/{tag}'
    x = torch.randn(2, *cfg['input_size'])
    reference = model.forward_features(x)
    # another classifier: timm drops the trained one, the features stay
    five = timm.create_model(tag, pretrained=True, num_classes=5).eval()
    assert five(x).shape == (2, 5)
    torch.testing.assert_close(five.forward_features(x), reference)
    # another stem: timm adapts the first convolution's weights to 3 channels
    rgb = timm.create_model(tag, pretrained=True, in_chans=3).eval()
    assert rgb.stem.conv.weight.shape[1] == 3 and rgb(torch.randn(1, 3, *cfg['input_size'][1:])).shape == (1, 10)


def test_corrupt_weight_file_names_the_file(tmp_path):
    tag = SHIPPED[0]
    bad = tmp_path / 'broken.safetensors'
    bad.write_bytes(b'not a safetensors file')
    unreadable = rf'Pretrained weights of {re.escape(tag)}: \S*broken\.safetensors is not a readable checkpoint'
    with pytest.raises(ValueError, match=unreadable):
        timm.create_model(tag, pretrained=True, pretrained_cfg_overlay=dict(file=str(bad)))
    with pytest.raises(FileNotFoundError, match=r'Pretrained weights of \S+: \S*missing\.safetensors does not exist'):
        timm.create_model(tag, pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / 'missing.safetensors')))


def test_package_imports_without_its_weight_files(tmp_path):
    """A copy of the package without `pretrained/` (a partial install, a trimmed copy) still imports: its tags are left
    out, `resnet20` defaults to its untagged cfg rather than to the grey expanded-MNIST weights, and asking for a
    missing tag fails in timm's own words."""
    shutil.copytree(ROOT / 'timm_routing', tmp_path / 'timm_routing', ignore=shutil.ignore_patterns('pretrained'))
    check = (
        'import timm, timm_routing\n'
        'assert timm_routing.models._pretrained.PRETRAINED_DIR.parent.parent.samefile(".")\n'
        'assert not [m for m in timm.list_pretrained() if m.startswith("resnet20.")]\n'
        'assert timm.models.get_pretrained_cfg("resnet20").input_size == (3, 32, 32)\n'
        'try:\n'
        '    timm.create_model("resnet20.gpu_cifar10jpeg", pretrained=True)\n'
        'except RuntimeError as e:\n'
        '    assert "gpu_cifar10jpeg" in str(e), e\n'
        'else:\n'
        '    raise AssertionError("a tag without weights was created")\n')
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    proc = subprocess.run([sys.executable, '-c', check], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_keep_default_tag_without_weights_or_untagged_cfg_is_a_clear_error():
    from timm.models import generate_default_cfgs
    from timm_routing.models._pretrained import keep_default_tag
    cfgs = generate_default_cfgs({'arch.other_data': dict(num_classes=10)})
    with pytest.raises(ValueError, match=r'arch\.missing has no weight file here and arch no untagged cfg'):
        keep_default_tag(cfgs, 'arch', 'missing')
    cfgs = generate_default_cfgs({'arch': dict(num_classes=10), 'arch.other_data': dict(num_classes=10, file='w')})
    assert cfgs['arch'].tags[0] == 'other_data'  # timm promotes the tag with weights
    keep_default_tag(cfgs, 'arch', 'missing')
    assert cfgs['arch'].tags[0] == ''  # not the other dataset's weights


def test_mismatched_weight_file_names_the_file(tmp_path):
    wrong = tmp_path / 'resnet20.safetensors'
    save_file(timm.create_model('resnet20').state_dict(), str(wrong))
    with pytest.raises(ValueError, match=r'resnet20\.safetensors does not hold weights of convnet4_(avg|max|routing)'):
        timm.create_model(FMNIST[0], pretrained=True, pretrained_cfg_overlay=dict(file=str(wrong)))


def _card_row(tag: str, split_label: str):
    """images, top-1, top-5 and command of the card's results row whose split is `split_label`."""
    card = (ROOT / 'model_cards' / f'{tag}.md').read_text()
    row = next(line for line in card.splitlines() if line.startswith(f'| {split_label} |'))
    cells = [c.strip() for c in row.strip('|').split('|')]  # split, evaluation set, images, top-1, top-5, command
    return int(cells[2]), float(cells[3]), cells[4], cells[5].strip('`')


# tags trained on a dataset .npz as it is, by the suffix of their tag
PLAIN_DATASETS = {'_fmnist': 'fashion_mnist.npz', '_cifar10jpeg': 'cifar10_jpeg_q75_approx.npz'}


@pytest.mark.parametrize('tag', [t for t in SHIPPED if t.endswith(tuple(PLAIN_DATASETS))])
def test_card_accuracy_recomputed_from_shipped_weights(tag):
    npz = DATA_DIR / next(f for suffix, f in PLAIN_DATASETS.items() if tag.endswith(suffix))
    if not npz.is_file():
        pytest.skip(f'{npz} not present (set TIMM_ROUTING_DATA to the shared data folder)')
    from timm_routing.evaluate import evaluate_model
    n, top1, top5, command = _card_row(tag, 'test (first 1000)')
    assert '--limit 1000' in command and '--split test' in command
    result = evaluate_model(tag, npz, split='test', limit=1000)
    assert (result['n'], round(result['top1'], 2), f"{result['top5']:.2f}") == (n, top1, top5)


@pytest.mark.parametrize('tag', [t for t in SHIPPED if t.endswith(('_mnist_shift', '_multimnist'))])
def test_capsnet_card_accuracy_recomputed_from_shipped_weights(tag):
    npz = DATA_DIR / 'mnist.npz'
    if not npz.is_file():
        pytest.skip(f'{npz} not present (set TIMM_ROUTING_DATA to the shared data folder)')
    from timm_routing.evaluate import evaluate_model
    n, top1, top5, command = _card_row(tag, 'test (first 1000)')
    variant = 'multimnist' if tag.endswith('_multimnist') else 'mnist_shift'
    assert '--limit 1000' in command and f'--variant {variant}' in command
    result = evaluate_model(tag, npz, split='test', limit=1000, variant=variant)
    assert (result['n'], round(result['top1'], 2)) == (n, top1)


@pytest.mark.parametrize('tag', SHIPPED)
def test_card_is_what_the_evidence_renders(tag):
    recipe = ROOT / 'scripts' / 'recipes' / f'{tag}.yaml'
    notes = ROOT / 'results' / tag / 'notes.md'
    card = render_model_card(tag, load_evidence(ROOT / 'results' / tag),
                             recipe=recipe.read_text() if recipe.exists() else None,
                             notes=notes.read_text() if notes.exists() else None)
    assert card == (ROOT / 'model_cards' / f'{tag}.md').read_text(), 'card out of date: run scripts/publish.py'
    assert card.startswith('---\ntags:\n- image-classification\n- timm\n')
    for section in ('## Model Details', '## Model Usage', '## Results', '## Citation'):
        assert section in card


def test_card_says_when_a_test_slice_holds_one_class():
    """The first 1000 test images of the class-sorted CIFAR-10 file are all airplanes: the card's row says so."""
    tag = next(t for t in SHIPPED if t.endswith('_cifar10jpeg'))
    evidence = load_evidence(ROOT / 'results' / tag)
    assert evidence['evals']['test_first1000']['class_counts'] == [1000]

    def set_cell(split_label):
        row = next(line for line in render_model_card(tag, evidence).splitlines()
                   if line.startswith(f'| {split_label} |'))
        return row.split('|')[2]

    assert set_cell('test (first 1000)').endswith('label 0 only (the file is sorted by class) ')
    assert 'only' not in set_cell('test')
    evidence['evals']['test_first1000']['class_counts'] = [500, 500]
    assert 'only' not in set_cell('test (first 1000)')


def _populate_hf_cache(cache_dir: Path, repo_id: str, folder: Path):
    repo = cache_dir / f"models--{repo_id.replace('/', '--')}"
    commit = '0' * 40
    snapshot = repo / 'snapshots' / commit
    shutil.copytree(folder, snapshot)
    (repo / 'refs').mkdir(parents=True)
    (repo / 'refs' / 'main').write_text(commit)


def test_hub_folder_loads_from_local_dir_and_offline_hub_cache(tmp_path):
    tag = SHIPPED[0]
    folder = save_hub_folder(tag, tmp_path / 'hub' / tag, card='# card\n')
    assert {p.name for p in folder.iterdir()} == {'config.json', 'model.safetensors', 'README.md'}
    reference = timm.create_model(tag, pretrained=True).eval()
    x = torch.randn(2, *reference.pretrained_cfg['input_size'])
    local = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    cache = tmp_path / 'hf_cache'
    _populate_hf_cache(cache, f'timm-routing/{tag}', folder)
    assert os.environ.get('HF_HUB_OFFLINE') == '1'
    hub = timm.create_model(f'hf-hub:timm-routing/{tag}', pretrained=True, cache_dir=cache).eval()
    with torch.no_grad():
        expected = reference(x)
        torch.testing.assert_close(local(x), expected, rtol=0, atol=0)
        torch.testing.assert_close(hub(x), expected, rtol=0, atol=0)
    assert list(local.pretrained_cfg['label_names']) == list(reference.pretrained_cfg['label_names'])


def test_table4_in_the_docs_is_what_the_evaluations_print():
    """Every row `scripts/capsnet_table.py` prints from the evaluation JSONs stands in docs/results.md and
    docs/capsnet.md with the same numbers (the docs may add words to the model column, e.g. the GPU)."""
    proc = subprocess.run([sys.executable, str(ROOT / 'scripts' / 'capsnet_table.py')], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split(' | ') for line in proc.stdout.splitlines() if line.startswith('| `')]
    assert len(rows) >= 4
    for doc in ('docs/results.md', 'docs/capsnet.md'):
        text = (ROOT / doc).read_text()
        for name, *cells in rows:
            key = name.split(' (ours')[0]
            doc_rows = [line.split(' | ') for line in text.splitlines()
                        if line.startswith(key + ' (ours') or line.startswith(key + ' |')]
            assert [r[1:] for r in doc_rows] == [cells], (doc, name, doc_rows)


def test_table4_evaluations_run_each_split_and_variant_on_the_device_asked_for(tmp_path, monkeypatch):
    """`capsnet_table.py --evaluate --device cuda --checkpoint TAG=FILE` hands evaluate every split and variant of the
    table, the device and the unshipped baseline's weights, and writes the JSONs into results/<tag>/."""
    sys.path.insert(0, str(ROOT / 'scripts'))
    import capsnet_table
    calls = []
    monkeypatch.setattr(capsnet_table, 'ROOT', tmp_path)
    monkeypatch.setattr(capsnet_table, 'evaluate_main', calls.append)
    capsnet_table.main(['--npz', 'mnist.npz', '--evaluate', 'capsnet.gpu_mnist_shift', '--device', 'cuda',
                        '--checkpoint', 'capsnet.gpu_mnist_shift=run/model_last.safetensors'])
    assert len(calls) == len(capsnet_table.EXPANDED_EVALS)
    for argv, (stem, split, variant, limit) in zip(calls, capsnet_table.EXPANDED_EVALS):
        options = dict(zip(argv[::2], argv[1::2]))
        assert options['--model'] == 'capsnet.mnist_shift'  # the weightless 40x40 cfg of the baseline
        assert (options['--split'], options['--variant'], options['--device']) == (split, variant, 'cuda')
        assert options['--checkpoint'] == 'run/model_last.safetensors'
        out_dir = tmp_path / 'results' / 'capsnet.gpu_mnist_shift'
        assert Path(options['--out']).resolve() == out_dir / f'eval_{stem}.json'
        assert options.get('--limit') == (str(limit) if limit else None)
    calls.clear()
    capsnet_table.evaluate_all('mnist.npz', {}, ['capsnet.gpu_mnist_shift'])  # no weights, none shipped: skipped
    assert calls == []


def _markdown_tables(text: str):
    """The markdown tables of `text`, in order, each a list of rows of stripped cells (header and rule included)."""
    tables, rows = [], []
    for line in text.splitlines() + ['']:
        if line.startswith('|'):
            rows.append([c.strip() for c in line.strip().strip('|').split('|')])
        elif rows:
            tables.append(rows)
            rows = []
    return tables


def _seed_runs(run: str, seeds: int) -> list:
    """The results/ folders of `seeds` seeds of one tag: seed 0 in the tag's folder, seed n in its `seed<n>/`."""
    return [run] + [f'{run}/seed{seed}' for seed in range(1, seeds)]


# docs/results.md Table 2: the first cell of a row, and the runs (results/ folders) of its average and routing columns
TABLE2_RUNS = {
    '20': (['resnet20.gpu_cifar10jpeg'], ['resnet20_routing.cpu_cifar10jpeg']),
    '20, mean ± sd of three seeds': (['resnet20.gpu_cifar10jpeg', 'resnet20.gpu_cifar10jpeg/seed1_cpu',
                                      'resnet20.gpu_cifar10jpeg/seed2_cpu'],
                                     _seed_runs('resnet20_routing.cpu_cifar10jpeg', 3)),
    "20, He et al.'s 182 epochs": (['resnet20.he182_cifar10jpeg'], ['resnet20_routing.he182_cifar10jpeg']),
    '32': (['resnet32.cpu_cifar10jpeg'], ['resnet32_routing.cpu_cifar10jpeg']),
    '32, mean ± sd of three seeds': (_seed_runs('resnet32.cpu_cifar10jpeg', 3),
                                     _seed_runs('resnet32_routing.cpu_cifar10jpeg', 3)),
    '44': (['resnet44.cpu_cifar10jpeg'], ['resnet44_routing.cpu_cifar10jpeg']),
    '44, mean ± sd of two seeds': (_seed_runs('resnet44.cpu_cifar10jpeg', 2),
                                   _seed_runs('resnet44_routing.cpu_cifar10jpeg', 2)),
    '56': (['resnet56.cpu_cifar10jpeg'], ['resnet56_routing.cpu_cifar10jpeg']),
    '56, mean ± sd of three seeds': (_seed_runs('resnet56.cpu_cifar10jpeg', 3),
                                     _seed_runs('resnet56_routing.cpu_cifar10jpeg', 3)),
    '56, mean ± sd of two seeds with a one-epoch warm-up': (
        ['resnet56.cpu_cifar10jpeg/warmup1', 'resnet56.cpu_cifar10jpeg/warmup1_seed1'],
        ['resnet56_routing.cpu_cifar10jpeg/warmup1', 'resnet56_routing.cpu_cifar10jpeg/warmup1_seed1']),
}


def _test_error_cell(runs) -> str:
    """Test error (%) of one run, or mean ± sample sd of several, as Tables 1 and 2 write them."""
    errors = [100. - json.loads((ROOT / 'results' / run / 'eval_test.json').read_text())['top1'] for run in runs]
    if len(errors) == 1:
        return f'{errors[0]:.2f}'
    return f'{statistics.mean(errors):.2f} ± {statistics.stdev(errors):.2f}'


def test_table2_in_the_docs_is_what_the_evaluations_give():
    """The *this repo* cells of docs/results.md's Table 2 are the test errors of the evaluation JSONs of their runs."""
    table = _markdown_tables((ROOT / 'docs' / 'results.md').read_text().split('## Table 2')[1])[0]
    rows = {cells[0]: cells[-2:] for cells in table[2:]}
    assert set(rows) == set(TABLE2_RUNS), 'a Table 2 row has no runs here, or runs name a row the table lacks'
    for row, (avg_runs, routing_runs) in TABLE2_RUNS.items():
        documented = [cell.split(' (')[0] for cell in rows[row]]
        assert documented == [_test_error_cell(avg_runs), _test_error_cell(routing_runs)], row


_FMNIST, _CIFAR = 'convnet4_{}.cpu_fmnist', 'convnet4_{}.cpu_cifar10jpeg'
_RAW_FMNIST = 'convnet4_routing.cpu_fmnist/raw_children_before_ablation'
# docs/results.md Table 1: the first two cells of a *this repo* row, and the runs of its max, average, routing and raw
# children columns
TABLE1_RUNS = {
    ('Fashion-MNIST', '*this repo*, `convnet4_*.cpu_fmnist` (15 CPU epochs, shipped seed)'):
        [[_FMNIST.format(p)] for p in ('max', 'avg', 'routing')] + [[_RAW_FMNIST]],
    ('Fashion-MNIST', '*this repo*, mean ± sd of five seeds'):
        [_seed_runs(_FMNIST.format(p), 5) for p in ('max', 'avg', 'routing')] + [_seed_runs(_RAW_FMNIST, 5)],
    ('CIFAR-10 (JPEG q75 approximation)', '*this repo*, `convnet4_*.cpu_cifar10jpeg` (20 CPU epochs, shipped seed)'):
        [[_CIFAR.format(p)] for p in ('max', 'avg', 'routing', 'routing_raw')],
    ('CIFAR-10 (JPEG q75 approximation)', '*this repo*, mean ± sd of five seeds'):
        [_seed_runs(_CIFAR.format(p), 5) for p in ('max', 'avg', 'routing', 'routing_raw')],
}


def test_table1_in_the_docs_is_what_the_evaluations_give():
    """The *this repo* cells of docs/results.md's Table 1 are the test errors of the evaluation JSONs of their runs."""
    table = _markdown_tables((ROOT / 'docs' / 'results.md').read_text().split('## Table 1')[1])[0]
    rows = {tuple(cells[:2]): cells[2:] for cells in table[2:]
            if cells[1].startswith('*this repo*') and cells[2].replace('*', '')[:1].isdigit()}
    assert set(rows) == set(TABLE1_RUNS), 'a Table 1 row has no runs here, or runs name a row the table lacks'
    for row, columns in TABLE1_RUNS.items():
        documented = [cell.replace('**', '').split(' (')[0] for cell in rows[row]]
        assert documented == [_test_error_cell(runs) for runs in columns], row


# results/routing_at_inference_cifar10jpeg/README.md: each row's routing kwargs and the file name part of its setting
INFERENCE_SETTINGS = {
    'as trained: λ 5, 1 iteration, normalised': ('as_trained', None),
    'λ 0 (uniform couplings)': ('lam0', {'routing_lam': 0}),
    'λ 1': ('lam1', {'routing_lam': 1}),
    'λ 20': ('lam20', {'routing_lam': 20}),
    '2 iterations': ('iters2', {'routing_iters': 2}),
    '3 iterations': ('iters3', {'routing_iters': 3}),
    'raw children (λ 5)': ('raw_children', {'routing_normalize': False}),
}


def test_routing_at_inference_table_is_what_its_evaluations_give():
    """Each cell is the validation top-1 of the JSON that evaluated that column's shipped tag with that row's kwargs."""
    folder = ROOT / 'results' / 'routing_at_inference_cifar10jpeg'
    table = _markdown_tables((folder / 'README.md').read_text())[0]
    header, rows = table[0], {row[0]: row[1:] for row in table[2:]}
    assert set(rows) == set(INFERENCE_SETTINGS)
    for column, tag in enumerate(header[1:]):
        model, pretrained_tag = tag.split('.')
        prefix = model if pretrained_tag == 'cpu_cifar10jpeg' else f"{model}_{pretrained_tag.split('_')[0]}"
        for row, (setting, kwargs) in INFERENCE_SETTINGS.items():
            result = json.loads((folder / f'{prefix}_{setting}.json').read_text())
            assert (result['model'], result['model_kwargs'], result['split'], result['n']) == (
                tag, kwargs, 'validation', 5000), (tag, row)
            assert rows[row][column] == f"{result['top1']:.2f}", (tag, row)


@pytest.mark.parametrize('ablation', ['ablation_convnet4_fmnist', 'ablation_resnet20_cifar10jpeg'])
def test_ablation_table_in_the_docs_is_the_one_the_script_wrote(ablation):
    """docs/results.md shows the rows of `scripts/routing_ablation.py`'s ablation.md (in its own order, with words
    after a setting's value, e.g. 'λ = 0 (= average pooling)')."""
    written = _markdown_tables((ROOT / 'results' / ablation / 'ablation.md').read_text())[0]
    key = sorted([row[0].split(' (')[0]] + row[1:] for row in written[2:])
    in_docs = [sorted([row[0].split(' (')[0]] + row[1:] for row in table[2:])
               for table in _markdown_tables((ROOT / 'docs' / 'results.md').read_text()) if table[0] == written[0]]
    assert key in in_docs, f'no table in docs/results.md holds the rows of results/{ablation}/ablation.md'
