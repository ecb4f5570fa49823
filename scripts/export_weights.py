#!/usr/bin/env python3
""" A finished training run -> the package's safetensors weights of a tag, plus the training evidence

    python scripts/export_weights.py --run <run output dir> --name convnet4_routing.cpu_fmnist [--checkpoint last]

Reads both kinds of run this project trains with:

- timm's train.py: `<run>/last.pth.tar` or `<run>/model_best.pth.tar` (the EMA weights where the checkpoint has them,
  as timm's `load_checkpoint` picks); `args.yaml` names the model, `num_classes` and `in_chans`.
- `python -m timm_routing.train_capsnet`: `<run>/model_last.safetensors` or `<run>/model_best.safetensors`;
  `args.yaml` names the model, its `model_kwargs` and the dataset, which fixes the classes and input channels (10 and 1
  for the MNIST-derived datasets; for `--dataset plain` they are read from the run's `--npz`, as the trainer did).

The weights load strictly into the model as the run built it (a missing, extra or misshapen tensor is an error that
names the file), are written to `<weights-dir>/<name>.safetensors` with metadata naming their source (and, for a
train_capsnet run, the validation hold-out it recorded, which `timm_routing.evaluate` checks), and the run's
`summary.csv` and `args.yaml` are copied to `<results-dir>/<name>/`. `--num-classes` / `--in-chans` override what the
run's files say.
"""
import argparse
import shutil
import sys
from pathlib import Path
from typing import Optional, Tuple

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

import timm

import timm_routing  # noqa: F401
from timm_routing.data import load_npz
from timm_routing.models._pretrained import PRETRAINED_DIR, load_weight_file
from timm_routing.train_capsnet import model_classes_and_channels

ROOT = Path(__file__).resolve().parent.parent


def _run_kind(run: Path, train_args: dict) -> str:
    """'train.py' or 'train_capsnet', from what the run's args.yaml records."""
    if 'num_classes' in train_args:
        return 'train.py'
    if 'dataset' in train_args and 'npz' in train_args:
        return 'train_capsnet'
    raise ValueError(f'{run / "args.yaml"} is neither a timm train.py run (no num_classes) nor a train_capsnet run '
                     '(no dataset and npz).')


def _classes_and_channels(run: Path, kind: str, train_args: dict) -> Tuple[Optional[int], int]:
    """The number of classes (None: the model's default) and input channels the run built its model with."""
    if kind == 'train.py':  # as train.py builds it: no --num-classes keeps the model's default
        input_size = train_args.get('input_size')
        in_chans = train_args.get('in_chans') or (input_size[0] if input_size else 3)
        return train_args['num_classes'], int(in_chans)
    dataset = train_args['dataset']
    if dataset != 'plain':  # the MNIST-derived datasets fix both; the trainer's rule refuses a dataset it does not know
        try:
            return model_classes_and_channels(dataset)
        except ValueError as e:
            raise ValueError(f'{run / "args.yaml"}: unknown train_capsnet dataset {dataset!r}; pass --num-classes and '
                             '--in-chans.') from e
    npz = Path(train_args['npz'])
    if not npz.is_file():
        raise ValueError(f'{run / "args.yaml"}: --dataset plain run on {npz}, which is not here to count its classes '
                         'and channels; pass --num-classes and --in-chans (or run from the folder the run started in).')
    return model_classes_and_channels(dataset, load_npz(str(npz)))


def _weight_file(run: Path, kind: str, checkpoint: str) -> Path:
    if kind == 'train.py':
        return run / f'{checkpoint}.pth.tar'
    return run / ('model_last.safetensors' if checkpoint == 'last' else 'model_best.safetensors')


def _metadata(path: Path, run: Path) -> dict:
    """The safetensors metadata of the shipped file: the source, the epoch where known, a train_capsnet hold-out."""
    metadata = {'source': f'{run.name}/{path.name}'}
    if path.suffix == '.safetensors':
        with safe_open(str(path), framework='pt') as f:
            recorded = f.metadata() or {}
        if 'train_capsnet' in recorded:
            metadata['train_capsnet'] = recorded['train_capsnet']
        if path.name == 'model_last.safetensors' and (run / 'last.pth.tar').is_file():
            path = run / 'last.pth.tar'  # the same epoch's full checkpoint knows its epoch
        else:
            return metadata
    epoch = torch.load(path, map_location='cpu', weights_only=False).get('epoch')
    if epoch is not None:
        metadata['epoch'] = str(epoch)
    return metadata


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--run', required=True, help='output folder of the train.py or train_capsnet run')
    parser.add_argument('--name', required=True, help='model.tag to ship the weights as')
    parser.add_argument('--checkpoint', default='last', choices=('last', 'model_best'))
    parser.add_argument('--num-classes', type=int, default=None, help="override the run's number of classes")
    parser.add_argument('--in-chans', type=int, default=None, help="override the run's number of input channels")
    parser.add_argument('--weights-dir', default=str(PRETRAINED_DIR), help='where <name>.safetensors goes')
    parser.add_argument('--results-dir', default=str(ROOT / 'results'), help='where the evidence folder <name>/ goes')
    args = parser.parse_args(argv)
    run = Path(args.run)
    model_name, _, tag = args.name.partition('.')
    if not tag:
        raise ValueError(f'--name {args.name!r} is not <model>.<tag>.')
    if not (run / 'args.yaml').is_file():
        raise FileNotFoundError(f'--run {run} has no args.yaml: not the output folder of a training run.')
    train_args = yaml.safe_load((run / 'args.yaml').read_text())
    if train_args.get('model') != model_name:
        raise ValueError(
            f'--name {args.name}: the run at {run} trained {train_args.get("model")!r}, not {model_name!r}.')
    kind = _run_kind(run, train_args)
    num_classes, in_chans = args.num_classes, args.in_chans
    if num_classes is None or in_chans is None:  # what the run built, where the command line does not say
        run_classes, run_chans = _classes_and_channels(run, kind, train_args)
        num_classes = run_classes if num_classes is None else num_classes
        in_chans = run_chans if in_chans is None else in_chans
    model = timm.create_model(model_name, num_classes=num_classes, in_chans=in_chans,
                              **(train_args.get('model_kwargs') or {}))
    source = _weight_file(run, kind, args.checkpoint)
    load_weight_file(model, source, model_name, f'{kind} weights')
    weights_dir = Path(args.weights_dir)
    weights_dir.mkdir(parents=True, exist_ok=True)
    out = weights_dir / f'{args.name}.safetensors'
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out), metadata=_metadata(source, run))
    evidence = Path(args.results_dir) / args.name
    evidence.mkdir(parents=True, exist_ok=True)
    for name in ('summary.csv', 'args.yaml'):
        shutil.copy(run / name, evidence / name)
    print(f'{out} ({out.stat().st_size} bytes, from {source}); evidence in {evidence}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
