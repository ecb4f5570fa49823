""" `.npz` image datasets -> folders timm's train.py reads

The shared datasets are `.npz` files with `x_train`, `y_train`, `x_test`, `y_test` (uint8 images `(N, H, W, C)` and
labels) and `class_names`. `export_image_folder` writes them as an ImageFolder tree:

    <out>/train/<NN>_<class>/<index>.png        training split minus the validation images
    <out>/validation/<NN>_<class>/<index>.png   `val_size` images held out of the training split (stratified, seeded)
    <out>/test/<NN>_<class>/<index>.png         the test split, for final numbers only
    <out>/split.json                            source file, seed, sizes and the indices of the validation images

Class folders carry their label index (`00_airplane`, ...) so that timm's sorted ImageFolder classes keep the
dataset's label order. Use `--train-split train --val-split validation` while choosing hyper-parameters and
`--val-split test` (or timm's validate.py on `test/`) for the final numbers.

He et al.'s CIFAR augmentation (zero padding of 4 pixels, a random crop back to 32x32, a horizontal flip) is not among
train.py's crop modes. `train_pad` writes the training images zero-padded once instead; timm's random-resized crop
with the area and aspect ratio of the unpadded image (`padded_crop_args`: `--scale 0.64 0.64 --ratio 1 1` for CIFAR
with 4 pixels) then cuts an unscaled crop at a uniformly random offset, which is that augmentation exactly (black
padding before normalisation, as torchvision's `RandomCrop(32, padding=4)` and `train_capsnet --pad 4`). Validation and
test images are never padded.
"""
import hashlib
import json
import re
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

__all__ = [
    'load_npz', 'stratified_holdout', 'class_folder_names', 'export_image_folder', 'padded_crop_args', 'sha256_file',
    'to_pil_array',
]

_REQUIRED = ('x_train', 'y_train', 'x_test', 'y_test')


def load_npz(path: Union[str, Path]) -> Dict[str, np.ndarray]:
    """Loads a dataset `.npz` and checks its arrays.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a missing array, images not uint8 `(N, H, W, C)`, or labels that do not match the images.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'Dataset file {path} does not exist.')
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
    except Exception as e:
        raise ValueError(f'{path} is not a readable .npz file: {e}') from e
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise ValueError(f'{path} lacks the arrays {missing}; it has {sorted(data)}.')
    for split in ('train', 'test'):
        x, y = data[f'x_{split}'], data[f'y_{split}']
        if x.dtype != np.uint8 or x.ndim != 4:
            raise ValueError(f'{path}: x_{split} must be uint8 (N, H, W, C), got {x.dtype} {x.shape}.')
        if y.shape != (x.shape[0],):
            raise ValueError(f'{path}: y_{split} has shape {y.shape}, expected ({x.shape[0]},).')
    if 'class_names' not in data:
        num_classes = int(max(data['y_train'].max(initial=0), data['y_test'].max(initial=0))) + 1
        data['class_names'] = np.array([str(i) for i in range(num_classes)])
    return data


def stratified_holdout(labels: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of `size` examples drawn per class in proportion to the class sizes (seeded).

    Raises:
        ValueError: `size` negative or not smaller than the number of labels.
    """
    if size < 0 or size >= len(labels):
        raise ValueError(f'Validation size {size} must be >= 0 and < the {len(labels)} training examples.')
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = np.floor(counts / counts.sum() * size).astype(int)
    # hand the remainder to the largest fractional parts, so the quotas sum to `size`
    remainder = size - quota.sum()
    order = np.argsort(-(counts / counts.sum() * size - quota), kind='stable')
    quota[order[:remainder]] += 1
    picked = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(picked))


def class_folder_names(class_names: Sequence[str]) -> list:
    """Folder names that sort in label order and are safe on every file system (`'T-shirt/top'` -> `00_T-shirt_top`)."""
    width = max(2, len(str(len(class_names) - 1)))
    return [f'{i:0{width}d}_' + re.sub(r'[^A-Za-z0-9._-]+', '_', str(n)).strip('_') for i, n in enumerate(class_names)]


def _write_split(out: Path, images: np.ndarray, labels: np.ndarray, indices: np.ndarray, folders: list,
                 positions: np.ndarray) -> None:
    """Writes `images[positions[k]]` as `<label folder>/<indices[k]>.png` (indices: the source dataset's)."""
    for folder in folders:
        (out / folder).mkdir(parents=True, exist_ok=True)
    for i, pos in zip(indices, positions):
        Image.fromarray(to_pil_array(images[pos])).save(out / folders[int(labels[pos])] / f'{i:05d}.png')


def to_pil_array(image: np.ndarray) -> np.ndarray:
    """A uint8 `(H, W, C)` image as PIL wants it: `(H, W)` for one channel."""
    return image[..., 0] if image.shape[-1] == 1 else image


def padded_crop_args(height: int, width: int, pad: int) -> Dict[str, Tuple[float, float]]:
    """train.py's `--scale` and `--ratio` that cut an unscaled `height` x `width` crop out of an image padded by `pad`.

    timm's `RandomResizedCropAndInterpolation` draws a crop of `scale` times the image's area with aspect ratio
    (width / height) `ratio`; with both ranges pinned to the unpadded image's, the crop has the unpadded size (so the
    resize back to the input size changes nothing) and its offset is uniform over the `2 * pad + 1` positions per axis.
    """
    scale = height * width / ((height + 2 * pad) * (width + 2 * pad))
    return dict(scale=(scale, scale), ratio=(width / height, width / height))


def sha256_file(path) -> str:
    """Hex SHA-256 of a file (datasets and weights are identified by it in the evidence files)."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def export_image_folder(
        npz_path: Union[str, Path],
        out_dir: Union[str, Path],
        val_size: int = 5000,
        seed: int = 0,
        limit: Optional[int] = None,
        variant: Optional[str] = None,
        train_pad: int = 0,
) -> Dict[str, int]:
    """Writes `train/`, `validation/` and `test/` ImageFolders from a dataset `.npz` (see the module docstring).

    With `variant` (an MNIST variant of `timm_routing.data.make_variant`, e.g. 'mnist_shift') each split is written in
    that form, seeded as `train_capsnet` validates and tests; 'mnist_shift' adds `test_mnist_centred/` and
    `test_affnist_like/`. The training split then holds one fixed placement per digit.

    Args:
        npz_path: The dataset file.
        out_dir: Where to write; must not already hold a `split.json`.
        val_size: Images held out of the training split for validation (5,000 in the paper).
        seed: Seed of the stratified validation draw.
        limit: Keep only the first `limit` training and test images (quick experiments and tests).
        train_pad: Zero pixels added on each side of every training image (after `variant`), for train.py's crop
            arguments of `padded_crop_args`; 0 writes the images as they are.

    Returns:
        The number of images written per split.

    Raises:
        TypeError / ValueError: `train_pad` not a non-negative int.
    """
    if isinstance(train_pad, bool) or not isinstance(train_pad, int):
        raise TypeError(f'train_pad must be an int, got {train_pad!r} ({type(train_pad).__name__}).')
    if train_pad < 0:
        raise ValueError(f'train_pad must be >= 0, got {train_pad}.')
    npz_path, out_dir = Path(npz_path), Path(out_dir)
    data = load_npz(npz_path)
    if (out_dir / 'split.json').exists():
        raise FileExistsError(f'{out_dir} already holds an exported dataset (split.json); choose another folder.')
    x_train, y_train, x_test, y_test = (data[k] for k in _REQUIRED)
    if limit is not None:
        x_train, y_train, x_test, y_test = x_train[:limit], y_train[:limit], x_test[:limit], y_test[:limit]
    folders = class_folder_names([str(n) for n in data['class_names']])
    val_idx = stratified_holdout(y_train, val_size, seed)
    train_idx = np.setdiff1d(np.arange(len(y_train)), val_idx)
    splits = dict(
        train=(x_train[train_idx], y_train[train_idx], train_idx),
        validation=(x_train[val_idx], y_train[val_idx], val_idx),
        test=(x_test, y_test, np.arange(len(y_test))))
    if variant is not None:
        from .mnist_variants import make_variant
        if variant == 'multimnist':
            raise ValueError('MultiMNIST has two labels per image, which an ImageFolder cannot hold; '
                             'use python -m timm_routing.train_capsnet --dataset multimnist.')
        splits = {name: (*make_variant(x, y, variant, name, seed), idx) for name, (x, y, idx) in splits.items()}
        if variant == 'mnist_shift':  # the evaluation sets of the CapsNet experiments, from the test digits
            for extra in ('mnist_centred', 'affnist_like'):
                splits[f'test_{extra}'] = (*make_variant(x_test, y_test, extra, 'test', seed), np.arange(len(y_test)))
    image_size = list(splits['test'][0].shape[1:3])  # (H, W) before padding
    if train_pad:
        x, y, idx = splits['train']
        splits['train'] = (np.pad(x, ((0, 0), (train_pad, train_pad), (train_pad, train_pad), (0, 0))), y, idx)
    counts = {}
    for name, (x, y, idx) in splits.items():
        _write_split(out_dir / name, x, y, idx, folders, positions=np.arange(len(y)))
        counts[name] = len(y)
    manifest = dict(
        source=npz_path.name, source_sha256=sha256_file(npz_path), seed=seed, val_size=val_size, limit=limit,
        variant=variant, image_size=image_size, train_pad=train_pad, class_folders=folders, counts=counts,
        validation_indices=val_idx.tolist(),
    )
    (out_dir / 'split.json').write_text(json.dumps(manifest, indent=1))
    return counts
