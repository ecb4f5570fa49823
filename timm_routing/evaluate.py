""" Top-1 / top-5 of a model on a dataset `.npz` split, with timm's own evaluation transform

    python -m timm_routing.evaluate --model convnet4_routing.cpu_fmnist --npz ../shared/data/fashion_mnist.npz \
        --split test --out results.json

The images go through `timm.data.create_transform(**resolve_data_config(model=model))`, the transform timm's
validate.py builds, so the numbers equal validate.py's on an ImageFolder export of the same split. `--split
validation` is the seeded stratified hold-out of `timm_routing.data.export_image_folder` (same `--val-size`,
`--seed`). `--variant` turns the MNIST digits of the split into a CapsNet evaluation set (`mnist_shift`,
`mnist_centred`, `affnist_like`, `multimnist`: `timm_routing.data.make_variant`, seeded as `train_capsnet` does);
`--npz` also takes an official affNIST `.mat` batch. `--device cuda` runs the model on a GPU (float32 weights, with
PyTorch's default TF32 convolutions; the JSON names the device). For `multimnist` the accuracy is Sabour's: an image
counts when its two most active classes are its two digits. The JSON records the model, weight file and dataset
hashes and the command, as the model cards quote it.
"""
import argparse
import json
import pickle
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch
import yaml
from PIL import Image

import timm
from timm.data import create_transform, resolve_data_config
from timm.utils import ParseKwargs

from .data import (
    MNIST_VARIANTS, load_affnist_mat, load_npz, make_variant, sha256_file, stratified_holdout, to_pil_array,
)
from .models._pretrained import load_weight_file

__all__ = ['load_split', 'model_inputs', 'evaluate_arrays', 'evaluate_model', 'main']


def load_split(npz_path, split: str = 'test', val_size: int = 5000, seed: int = 0, limit: Optional[int] = None):
    """Images and labels of `split` ('train' without the hold-out, 'validation', 'test'), the first `limit` only
    if given."""
    data = load_npz(npz_path)
    if split == 'test':
        x, y = data['x_test'], data['y_test']
    elif split in ('train', 'validation'):
        val_idx = stratified_holdout(data['y_train'], val_size, seed)
        idx = val_idx if split == 'validation' else np.setdiff1d(np.arange(len(data['y_train'])), val_idx)
        x, y = data['x_train'][idx], data['y_train'][idx]
    else:
        raise ValueError(f"Unknown split {split!r}; expected 'train', 'validation' or 'test'.")
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return x, y


def model_inputs(images: np.ndarray, transform) -> torch.Tensor:
    """uint8 `(N, H, W, C)` images -> one input batch, each image through `transform` (timm's evaluation transform)."""
    return torch.stack([transform(Image.fromarray(to_pil_array(img))) for img in images])


@torch.no_grad()
def evaluate_arrays(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, batch_size: int = 256,
                    progress: bool = False, device: Union[str, torch.device, None] = None) -> Dict[str, Any]:
    """Top-1 / top-5 accuracy (%) of `model` on uint8 `(N, H, W, C)` images, through timm's eval transform.

    The images are transformed on the CPU; each batch then goes to `device` (default: where the model's parameters
    are, the CPU for a model without any), where the model must already be.
    """
    model.eval()
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device('cpu'))
    transform = create_transform(**resolve_data_config(model=model))
    correct1 = correct5 = 0
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        x = model_inputs(batch, transform).to(device)
        target = torch.as_tensor(labels[start:start + batch_size], dtype=torch.long, device=device)
        if target.dim() == 2:  # several objects per image: the top-k classes must be exactly the targets
            top = model(x).topk(target.shape[1], dim=1).indices.sort(1).values
            correct1 += (top == target.sort(1).values).all(1).sum().item()
            correct5 = float('nan')
        else:
            top = model(x).topk(min(5, model.num_classes), dim=1).indices
            correct1 += (top[:, 0] == target).sum().item()
            correct5 += (top == target[:, None]).any(1).sum().item()
        if progress:
            done = min(start + batch_size, len(images))
            bar = '#' * (30 * done // len(images))
            print(f'\r[{bar:<30}] {done}/{len(images)} top-1 {100. * correct1 / done:.2f}%', end='', file=sys.stderr,
                  flush=True)
    if progress:
        print(file=sys.stderr)
    n = len(images)
    return dict(n=n, top1=100. * correct1 / n, top5=100. * correct5 / n)


def _train_capsnet_args(checkpoint: str) -> Optional[Dict[str, Any]]:
    """The arguments of the `train_capsnet` run that wrote `checkpoint`: its `args.yaml` when the file still lies in
    the run's folder (any weight format, no second read of the weights), else the `args` a `.pth.tar` carries or the
    hold-out a `train_capsnet` safetensors file records in its metadata; None for anything else (timm train.py runs,
    whose `args.yaml` names no `npz`, and safetensors files without that metadata)."""
    args_file = Path(checkpoint).with_name('args.yaml')
    if args_file.is_file():
        run_args = yaml.safe_load(args_file.read_text())
    elif str(checkpoint).endswith('.safetensors'):
        from safetensors import safe_open
        with safe_open(str(checkpoint), framework='pt') as f:
            recorded = (f.metadata() or {}).get('train_capsnet')  # train_capsnet's _holdout_metadata
        run_args = json.loads(recorded) if recorded else None
    else:
        try:
            state = torch.load(checkpoint, map_location='cpu', weights_only=True)
        except pickle.UnpicklingError:
            return None  # objects beyond tensors and plain containers (e.g. train.py's argparse args)
        run_args = state.get('args') if isinstance(state, dict) else None
    if not isinstance(run_args, dict) or 'npz' not in run_args or 'val_size' not in run_args:
        return None
    return run_args


def check_holdout_of_checkpoint(checkpoint: Optional[str], split: str, val_size: int, seed: int) -> None:
    """Raises a ValueError when `checkpoint` is a `train_capsnet` run that held out another validation split than
    `val_size` and `seed` select: its `--split-seed` (by default its `--seed`) draws the held-out images, so scoring a
    seed-1 run on seed 0's validation split would count images it trained on. The run is recognised by the `args.yaml`
    beside the file, by the args inside a `.pth.tar` or by the metadata of its safetensors files (so a
    `model_last.safetensors` moved out of its run folder is checked too). Test splits, timm train.py checkpoints
    (whose split was made when the ImageFolder was exported) and safetensors files without that metadata (written
    before it existed, or by other tools) are not checked."""
    if checkpoint is None or split == 'test':
        return
    run_args = _train_capsnet_args(checkpoint)
    if run_args is None:
        return
    split_seed = run_args.get('split_seed')  # runs from before --split-seed drew the split with --seed
    trained = (run_args.get('seed', 0) if split_seed is None else split_seed, run_args['val_size'])
    if trained != (seed, val_size):
        raise ValueError(
            f'{checkpoint} was trained by train_capsnet holding out the split of seed {trained[0]} (--val-size '
            f'{trained[1]}), another {split} split than --seed {seed} --val-size {val_size}: pass --seed {trained[0]} '
            f'--val-size {trained[1]} to score it on its own held-out images.')


def evaluate_model(model_name: str, npz_path, split: str = 'test', checkpoint: Optional[str] = None,
                   val_size: int = 5000, seed: int = 0, limit: Optional[int] = None, batch_size: int = 256,
                   progress: bool = False, variant: Optional[str] = None, num_pairs: Optional[int] = None,
                   model_kwargs: Optional[Dict[str, Any]] = None, device: str = 'cpu') -> Dict[str, Any]:
    """Builds `model_name` (pretrained, or from `checkpoint`) and evaluates it on a split of `npz_path` (or of an
    affNIST `.mat` file), optionally as an MNIST variant. `model_kwargs` go to `timm.create_model`, e.g. another λ or
    iteration count for a routing head, whose weights are the same (it has none). The model runs in float32 on
    `device` (e.g. 'cuda', with PyTorch's default TF32 convolutions), which the result names (the GPU's name on CUDA);
    the zoo's evaluation JSONs without a `device` entry ran on the CPU.

    Raises:
        FileNotFoundError: `checkpoint` does not exist.
        ValueError: `device` is not a torch device string, or CUDA where there is none; `limit` is not a positive
            int; the split is empty (a validation split of `val_size` 0); `checkpoint` is unreadable or holds weights
            of another model (`load_weight_file`), or is a `train_capsnet` run whose held-out split differs from
            `val_size`/`seed` (for the validation and train splits; see `check_holdout_of_checkpoint`).
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f'limit must be a positive number of images, got {limit!r}.')
    try:
        torch_device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda', got {device!r}.") from e
    if torch_device.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f'device {device!r}: CUDA is not available here (torch {torch.__version__}).')
    model = timm.create_model(model_name, pretrained=checkpoint is None, **(model_kwargs or {}))
    if checkpoint is not None:
        load_weight_file(model, checkpoint, model_name, '--checkpoint')
    if not str(npz_path).endswith('.mat'):
        check_holdout_of_checkpoint(checkpoint, split, val_size, seed)
    if str(npz_path).endswith('.mat'):
        images, labels = load_affnist_mat(npz_path)
        images, labels = (images[:limit], labels[:limit]) if limit is not None else (images, labels)
    else:
        images, labels = load_split(npz_path, split, val_size, seed, limit)
    if len(images) == 0:
        why = f' (--val-size {val_size})' if split == 'validation' else ''
        raise ValueError(f'The {split} split of {npz_path} has no images{why}.')
    if variant is not None:
        size = model.pretrained_cfg['input_size'][-1]
        images, labels = make_variant(images, labels, variant, split, seed, size, num_pairs)
    result = evaluate_arrays(model.to(torch_device), images, labels, batch_size, progress, torch_device)
    if np.ndim(labels) == 1:  # images per class: a slice of a class-sorted file may hold one class only
        result['class_counts'] = np.bincount(np.asarray(labels, dtype=np.int64)).tolist()
    weights = checkpoint or model.pretrained_cfg.get('file')
    result.update(
        model=model_name, model_kwargs=model_kwargs or None, split=split, variant=variant, limit=limit,
        dataset=Path(npz_path).name,
        dataset_sha256=sha256_file(npz_path),
        weights=Path(weights).name if weights else None, weights_sha256=sha256_file(weights) if weights else None,
        torch=torch.__version__, timm=timm.__version__,
        device=torch.cuda.get_device_name(torch_device) if torch_device.type == 'cuda' else torch_device.type,
    )
    return result


def main(argv=None) -> int:
    import timm_routing  # noqa: F401  registers the models
    parser = argparse.ArgumentParser(prog='python -m timm_routing.evaluate', description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', required=True, help='model name with its pretrained tag')
    parser.add_argument('--npz', required=True,
                        help='dataset .npz (x_train, y_train, x_test, y_test), or an official affNIST .mat batch')
    parser.add_argument('--variant', default=None, choices=MNIST_VARIANTS,
                        help='evaluate on this MNIST-derived set made from the split (CapsNet experiments)')
    parser.add_argument('--pairs', type=int, default=None, help='MultiMNIST pairs (default: one per digit)')
    parser.add_argument('--split', default='test', choices=('train', 'validation', 'test'))
    parser.add_argument('--checkpoint', default=None, help='weights to evaluate instead of the pretrained ones')
    parser.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs, metavar='KEY=VALUE',
                        help="timm.create_model kwargs, as validate.py's (e.g. routing_lam=0 routing_iters=2)")
    parser.add_argument('--val-size', type=int, default=5000)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--limit', type=int, default=None, help='evaluate the first N images of the split only')
    parser.add_argument('--batch-size', type=int, default=256)
    parser.add_argument('--device', default='cpu', help="torch device to run the model on, e.g. 'cuda'")
    parser.add_argument('--out', default=None, help='write the result as JSON here')
    args = parser.parse_args(argv)
    result = evaluate_model(args.model, args.npz, args.split, args.checkpoint, args.val_size, args.seed, args.limit,
                            args.batch_size, progress=sys.stderr.isatty(), variant=args.variant,
                            num_pairs=args.pairs, model_kwargs=args.model_kwargs, device=args.device)
    result['command'] = 'python -m timm_routing.evaluate ' + ' '.join(argv if argv is not None else sys.argv[1:])
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
