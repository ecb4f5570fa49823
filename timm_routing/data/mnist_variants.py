""" MNIST-derived datasets of the CapsNet experiments (Sabour et al. 2017 §5-6; Zhao & Huang 2019 §4.3)

All are generated deterministically (seeded NumPy generators) from the genuine MNIST digits, `uint8` `(N, H, W, 1)`:

* **expanded MNIST** (`expanded_mnist`): each 28x28 digit placed on a black 40x40 canvas at an offset drawn uniformly
  from the 13x13 possible ones (Sabour's `mnist_shift`; the digit is never cut). `ExpandedMnist` draws a fresh
  placement per epoch for training.
* **affNIST-like** (`affnist_like`): the real affNIST is not in the shared data, so the MNIST *test* digits get a
  random affine map in the ranges we take from affNIST's description (rotation ±20°, horizontal shear ±0.2,
  independent x and y scale 0.8-1.2; `AFFNIST_LIKE_RANGES`, not checked against the real files), bilinear
  resampling about the centre of the 40x40 canvas (an MNIST digit, about 20 px across, stays inside), then a random
  placement of the result's bounding box inside 40x40. For the official files: `load_affnist_mat`.
* **MultiMNIST** (`multi_mnist`): as Sabour describes it: a digit and one of a *different* class, each centred in
  36x36 and shifted by up to ±4 px in each direction, pixel-wise sum clipped at 255. Labels are `(N, 2)`:
  `[first, second]`, first is the digit drawn in order, second its partner.
"""
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = [
    'AFFNIST_LIKE_RANGES', 'place_digits', 'expanded_mnist', 'affnist_like', 'multi_mnist', 'load_affnist_mat',
    'ExpandedMnist', 'MultiMnist', 'ArrayDataset', 'MNIST_VARIANTS', 'make_variant',
]

AFFNIST_LIKE_RANGES = dict(rotation_deg=20.0, shear=0.2, scale=(0.8, 1.2))


def _check_digits(images: np.ndarray, name: str = 'images') -> np.ndarray:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise TypeError(f'{name} must be a uint8 NumPy array, got {type(images).__name__} '
                        f'{getattr(images, "dtype", "")}.')
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3:
        raise ValueError(f'{name} must be (N, H, W) or (N, H, W, 1) grey digits, got shape {images.shape}.')
    return images


def place_digits(images: np.ndarray, size: int, offsets: np.ndarray) -> np.ndarray:
    """Pastes digit `i` at `(row, col) = offsets[i]` of a black `size` x `size` canvas; returns `(N, size, size, 1)`."""
    images = _check_digits(images)
    n, h, w = images.shape
    offsets = np.asarray(offsets)
    if offsets.shape != (n, 2):
        raise ValueError(f'offsets must be ({n}, 2), got {offsets.shape}.')
    if offsets.min(initial=0) < 0 or (offsets[:, 0] + h).max(initial=0) > size or \
            (offsets[:, 1] + w).max(initial=0) > size:
        raise ValueError(f'offsets put a {h}x{w} digit outside the {size}x{size} canvas.')
    rows = offsets[:, 0, None] + np.arange(h)  # (N, h)
    cols = offsets[:, 1, None] + np.arange(w)  # (N, w)
    canvas = np.zeros((n, size, size), dtype=np.uint8)
    canvas[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]] = images
    return canvas[..., None]


def expanded_mnist(images: np.ndarray, size: int = 40, seed: int = 0) -> np.ndarray:
    """Each digit at a uniformly drawn offset of a `size` x `size` canvas (Sabour's expanded MNIST at size 40)."""
    images = _check_digits(images)
    h, w = images.shape[1:]
    if size < max(h, w):
        raise ValueError(f'Canvas size {size} is smaller than the {h}x{w} digits.')
    rng = np.random.default_rng(seed)
    offsets = np.stack([rng.integers(0, size - h + 1, len(images)), rng.integers(0, size - w + 1, len(images))], 1)
    return place_digits(images, size, offsets)


def _bounding_boxes(images: np.ndarray) -> np.ndarray:
    """`(N, 4)` `[row0, row1, col0, col1)` of the non-zero pixels (the whole image where it is blank)."""
    rows_any, cols_any = images.any(2), images.any(1)
    h, w = images.shape[1:]
    r0 = np.where(rows_any.any(1), rows_any.argmax(1), 0)
    r1 = np.where(rows_any.any(1), h - rows_any[:, ::-1].argmax(1), h)
    c0 = np.where(cols_any.any(1), cols_any.argmax(1), 0)
    c1 = np.where(cols_any.any(1), w - cols_any[:, ::-1].argmax(1), w)
    return np.stack([r0, r1, c0, c1], 1)


def affnist_like(
        images: np.ndarray,
        size: int = 40,
        seed: int = 0,
        rotation_deg: float = AFFNIST_LIKE_RANGES['rotation_deg'],
        shear: float = AFFNIST_LIKE_RANGES['shear'],
        scale: Tuple[float, float] = AFFNIST_LIKE_RANGES['scale'],
) -> np.ndarray:
    """Random affine maps of the digits, placed at random inside a `size` x `size` canvas (see the module docstring).

    The affine map is `rotate @ shear @ scale` about the digit's centre with `θ ~ U(±rotation_deg)`,
    `shear ~ U(±shear)` (x), `sx, sy ~ U(scale)`; each draw is independent and seeded.
    """
    images = _check_digits(images)
    n = len(images)
    if rotation_deg < 0 or shear < 0 or not 0 < scale[0] <= scale[1]:
        raise ValueError(f'Bad affNIST-like ranges: rotation_deg={rotation_deg}, shear={shear}, scale={scale}.')
    rng = np.random.default_rng(seed)
    theta = np.deg2rad(rng.uniform(-rotation_deg, rotation_deg, n))
    sh = rng.uniform(-shear, shear, n)
    sx, sy = rng.uniform(scale[0], scale[1], n), rng.uniform(scale[0], scale[1], n)
    cos, sin = np.cos(theta), np.sin(theta)
    rot = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    shear_m = np.tile(np.eye(2), (n, 1, 1))
    shear_m[:, 0, 1] = sh
    fwd = rot @ shear_m @ (np.eye(2) * np.stack([sx, sy], -1)[:, None, :])  # output = fwd @ input (x, y)
    # the digit, centred on the canvas, is resampled through the inverse map (affine_grid works output -> input)
    centre = ((size - images.shape[1]) // 2, (size - images.shape[2]) // 2)
    centred = place_digits(images, size, np.full((n, 2), centre))
    grid_theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    grid_theta[:, :, :2] = torch.from_numpy(np.linalg.inv(fwd))
    src = torch.from_numpy(centred[..., 0]).to(torch.float64)[:, None] / 255.
    grid = F.affine_grid(grid_theta, [n, 1, size, size], align_corners=False)
    warped = F.grid_sample(src, grid, mode='bilinear', padding_mode='zeros', align_corners=False)
    warped = (warped[:, 0] * 255.).round().clamp_(0, 255).to(torch.uint8).numpy()
    # random placement of the transformed digit's box inside the canvas
    out = np.zeros_like(warped)
    boxes = _bounding_boxes(warped)
    for i, (r0, r1, c0, c1) in enumerate(boxes):
        digit = warped[i, r0:r1, c0:c1]
        row = rng.integers(0, size - digit.shape[0] + 1)
        col = rng.integers(0, size - digit.shape[1] + 1)
        out[i, row:row + digit.shape[0], col:col + digit.shape[1]] = digit
    return out[..., None]


def multi_mnist(
        images: np.ndarray,
        labels: np.ndarray,
        num_pairs: int,
        seed: int = 0,
        size: int = 36,
        max_shift: int = 4,
) -> Tuple[np.ndarray, np.ndarray]:
    """Sabour's MultiMNIST: `num_pairs` overlays of two digits of different classes (see the module docstring).

    Digit `k % N` is paired with a random digit of another class, so every digit is used about `num_pairs / N` times.

    Returns:
        Images `(num_pairs, size, size, 1)` uint8 and labels `(num_pairs, 2)` int64.
    """
    images = _check_digits(images)
    labels = np.asarray(labels).astype(np.int64)
    n, h, w = images.shape
    if labels.shape != (n,):
        raise ValueError(f'labels must be ({n},), got {labels.shape}.')
    if num_pairs < 1:
        raise ValueError(f'num_pairs must be >= 1, got {num_pairs}.')
    centre = (size - h) // 2
    if max_shift < 0 or centre - max_shift < 0 or centre + max_shift + h > size:
        raise ValueError(f'max_shift={max_shift} moves a {h}x{w} digit outside the {size}x{size} canvas.')
    if len(np.unique(labels)) < 2:
        raise ValueError('MultiMNIST needs digits of at least two classes.')
    rng = np.random.default_rng(seed)
    first = np.arange(num_pairs) % n
    second = rng.integers(0, n, num_pairs)
    clash = labels[second] == labels[first]
    while clash.any():  # redraw partners of the same class
        second[clash] = rng.integers(0, n, int(clash.sum()))
        clash = labels[second] == labels[first]
    shifts = rng.integers(-max_shift, max_shift + 1, (2, num_pairs, 2))
    a = place_digits(images[first], size, centre + shifts[0])
    b = place_digits(images[second], size, centre + shifts[1])
    merged = np.minimum(a.astype(np.int16) + b, 255).astype(np.uint8)
    return merged, np.stack([labels[first], labels[second]], 1)


def load_affnist_mat(path: Union[str, Path]) -> Tuple[np.ndarray, np.ndarray]:
    """Reads an official affNIST `.mat` file (e.g. `test_batches/1.mat` or `test.mat`).

    Returns:
        Images `(N, 40, 40, 1)` uint8 and labels `(N,)` int64.

    Raises:
        ImportError: SciPy (which reads MATLAB files) is missing: `pip install scipy`.
        ValueError: the file is not an affNIST batch (no `affNISTdata` with `image` and `label_int`).
    """
    try:
        from scipy.io import loadmat
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError('Reading affNIST .mat files needs SciPy: pip install scipy') from e
    path = Path(path)
    try:
        mat = loadmat(str(path), squeeze_me=True, struct_as_record=False)
    except Exception as e:
        raise ValueError(f'{path}: not a readable MATLAB file ({e}).') from e
    data = mat.get('affNISTdata')
    if data is None or not hasattr(data, 'image') or not hasattr(data, 'label_int'):
        raise ValueError(f'{path}: no affNISTdata struct with image and label_int fields; not an affNIST batch.')
    image = np.asarray(data.image)
    if image.ndim == 1:
        image = image[:, None]
    if image.shape[0] != 1600:
        raise ValueError(f'{path}: affNIST images are 1600 (40x40) values per column, got {image.shape}.')
    # MATLAB stores each 40x40 image column-major in one column of `image`
    images = image.T.reshape(-1, 40, 40).transpose(0, 2, 1)
    return np.ascontiguousarray(images.astype(np.uint8))[..., None], np.atleast_1d(data.label_int).astype(np.int64)


class ArrayDataset(Dataset):
    """Images `(N, H, W, 1)` uint8 and labels as a torch dataset: `(float tensor (1, H, W) in [0, 1], label)`.

    Labels may be `(N,)` (one class) or `(N, 2)` (MultiMNIST); they come back as int64 tensors.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        images = _check_digits(images)
        if len(images) != len(labels):
            raise ValueError(f'{len(images)} images but {len(labels)} labels.')
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.labels = torch.from_numpy(np.asarray(labels).astype(np.int64))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i][None].float().div_(255.), self.labels[i]


class ExpandedMnist(ArrayDataset):
    """Expanded MNIST for training: `set_epoch(e)` redraws every placement from `(seed, e)`, a fresh shift per epoch."""

    def __init__(self, digits: np.ndarray, labels: np.ndarray, size: int = 40, seed: int = 0):
        self.digits, self.size, self.seed = _check_digits(digits), size, seed
        super().__init__(expanded_mnist(self.digits, size, seed), labels)

    def set_epoch(self, epoch: int) -> None:
        self.images = torch.from_numpy(expanded_mnist(self.digits, self.size, self.seed * 100003 + epoch)[..., 0])


class MultiMnist(ArrayDataset):
    """MultiMNIST for training: `set_epoch(e)` draws `num_pairs` new pairs and shifts from `(seed, e)`."""

    def __init__(self, digits: np.ndarray, labels: np.ndarray, num_pairs: int, size: int = 36, seed: int = 0):
        self.digits, self.digit_labels = _check_digits(digits), np.asarray(labels)
        self.num_pairs, self.size, self.seed = num_pairs, size, seed
        super().__init__(*multi_mnist(self.digits, self.digit_labels, num_pairs, seed, size))

    def set_epoch(self, epoch: int) -> None:
        images, labels = multi_mnist(
            self.digits, self.digit_labels, self.num_pairs, self.seed * 100003 + epoch, self.size)
        self.images, self.labels = torch.from_numpy(images[..., 0]), torch.from_numpy(labels)


MNIST_VARIANTS = ('mnist_shift', 'mnist_centred', 'affnist_like', 'multimnist')
_SPLIT_SEED = dict(train=0, validation=1, test=2)


def make_variant(
        images: np.ndarray,
        labels: np.ndarray,
        variant: str,
        split: str = 'test',
        seed: int = 0,
        size: Optional[int] = None,
        num_pairs: Optional[int] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """The fixed (seeded) evaluation form of a split of MNIST digits, the one `train_capsnet` validates on.

    `mnist_shift`: random placement in `size` (40); `mnist_centred`: the digit in the middle of `size` (40);
    `affnist_like`: random affine maps in `size` (40); `multimnist`: `num_pairs` (default: as many as digits) pairs
    in `size` (36). The seed of split s is `seed + {train: 0, validation: 1, test: 2}[s]` (`affnist_like`: + 3).
    """
    if variant not in MNIST_VARIANTS:
        raise ValueError(f'Unknown MNIST variant {variant!r}; expected one of {MNIST_VARIANTS}.')
    if split not in _SPLIT_SEED:
        raise ValueError(f"Unknown split {split!r}; expected 'train', 'validation' or 'test'.")
    split_seed = seed + _SPLIT_SEED[split]
    labels = np.asarray(labels).astype(np.int64)
    if variant == 'multimnist':
        return multi_mnist(images, labels, num_pairs or len(labels), split_seed, size or 36)
    size = size or 40
    if variant == 'mnist_shift':
        return expanded_mnist(images, size, split_seed), labels
    if variant == 'affnist_like':
        return affnist_like(images, size, split_seed + 3), labels
    digits = _check_digits(images)
    offset = ((size - digits.shape[1]) // 2, (size - digits.shape[2]) // 2)
    return place_digits(digits, size, np.tile(offset, (len(digits), 1))), labels
