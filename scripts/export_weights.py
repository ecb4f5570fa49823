#!/usr/bin/env python3
""" train.py checkpoint -> the package's safetensors weights of a tag, plus the training evidence

    python scripts/export_weights.py --run <train.py output dir> --name convnet4_routing.cpu_fmnist [--checkpoint last]

Loads `<run>/<checkpoint>.pth.tar` strictly into the model it was trained as (`args.yaml`'s model, num_classes and
in_chans), writes `timm_routing/pretrained/<name>.safetensors` and copies `summary.csv` and `args.yaml` to
`results/<name>/`.
"""
import argparse
import shutil
import sys
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

import timm

import timm_routing  # noqa: F401
from timm_routing.models._pretrained import PRETRAINED_DIR, checkpoint_filter_fn

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--run', required=True, help="train.py's output folder of the run")
    parser.add_argument('--name', required=True, help='model.tag to ship the weights as')
    parser.add_argument('--checkpoint', default='last', choices=('last', 'model_best'))
    args = parser.parse_args(argv)
    run = Path(args.run)
    train_args = yaml.safe_load((run / 'args.yaml').read_text())
    model = timm.create_model(
        train_args['model'], num_classes=train_args['num_classes'], in_chans=train_args.get('in_chans') or 3,
        **(train_args.get('model_kwargs') or {}))
    checkpoint = torch.load(run / f'{args.checkpoint}.pth.tar', map_location='cpu', weights_only=False)
    state_dict = checkpoint_filter_fn(checkpoint, model)
    model.load_state_dict(state_dict, strict=True)
    PRETRAINED_DIR.mkdir(exist_ok=True)
    out = PRETRAINED_DIR / f'{args.name}.safetensors'
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out),
              metadata={'source': f'{run.name}/{args.checkpoint}.pth.tar', 'epoch': str(checkpoint.get('epoch'))})
    evidence = ROOT / 'results' / args.name
    evidence.mkdir(parents=True, exist_ok=True)
    for name in ('summary.csv', 'args.yaml'):
        shutil.copy(run / name, evidence / name)
    print(f'{out} ({out.stat().st_size} bytes, epoch {checkpoint.get("epoch")}); evidence in {evidence}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
