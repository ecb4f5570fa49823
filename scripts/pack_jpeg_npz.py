#!/usr/bin/env python3
""" Lossless, compact copies of image `.npz` files whose pixels were decoded from JPEG

    python scripts/pack_jpeg_npz.py pack ../shared/data/cifar10_jpeg_q75_approx.npz cifar10_jpeg.packed.npz
    python scripts/pack_jpeg_npz.py unpack cifar10_jpeg.packed.npz cifar10_jpeg_q75_approx.npz

For moving a dataset to a machine that only takes a small upload (the lent GPU machines take 64 MiB per call, the
CIFAR-10 JPEG approximation is 170 MB and its training split compresses losslessly to about 70-90 MB with WebP or xz).
Pixels that came out of a JPEG decoder are, to within a little, what the same encoder gives back when they are
encoded again at the same quality: `pack` re-encodes each image with Pillow (quality and chroma subsampling of the
source; encoding the image plus the error of the last try, up to `--tries` times, when a re-encoding does not decode
back exactly) and stores the JPEG streams and the pixel residual, `(image - decoded) mod 256`, both xz-compressed. On
the CIFAR-10 JPEG approximation that is about 300 bytes per image, against 3,072 raw. `unpack` decodes, adds the
residual back and checks every array against the SHA-256 of the original taken at packing, so a decoder that does
not decode bit for bit as the packing machine's did (another libjpeg) is an error, never a silently different
dataset. Arrays that are not uint8 images (labels, class names, indices) are stored as they are; `--arrays` keeps only
the named ones (the package's loaders need `x_train`, `y_train`, `x_test`, `y_test`).
"""
import argparse
import hashlib
import io
import json
import lzma
import sys
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, features

_SUBSAMPLING = {'4:4:4': 0, '4:2:2': 1, '4:2:0': 2}


def _is_image_array(array: np.ndarray) -> bool:
    return array.dtype == np.uint8 and array.ndim == 4 and array.shape[-1] in (1, 3)


def _decoder_versions() -> Dict[str, Optional[str]]:
    return {'pillow': Image.__version__, 'libjpeg_turbo': features.version('libjpeg_turbo')}


def _encode(image: np.ndarray, quality: int, subsampling: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
        buf, 'JPEG', quality=quality, subsampling=subsampling)
    return buf.getvalue()


def _decode(stream: bytes, channels: int) -> np.ndarray:
    image = np.asarray(Image.open(io.BytesIO(stream)).convert('L' if channels == 1 else 'RGB'))
    return image[..., None] if channels == 1 else image


def _encode_closest(image: np.ndarray, quality: int, subsampling: int, tries: int) -> Tuple[bytes, np.ndarray]:
    """The JPEG stream, of up to `tries` encodings, that decodes closest to `image` (the first exact one), and what
    it decodes to."""
    target = image.astype(np.int16)
    source, best, best_error = image, None, None
    for _ in range(tries):
        stream = _encode(source, quality, subsampling)
        decoded = _decode(stream, image.shape[-1])
        error = decoded.astype(np.int16) - target
        total = int(np.abs(error).sum())
        if best_error is None or total < best_error:
            best, best_error = (stream, decoded), total
        if total == 0:
            break
        source = np.clip(source.astype(np.int16) - error, 0, 255).astype(np.uint8)  # pre-correct the error
    return best


def pack_arrays(
        arrays: Dict[str, np.ndarray], quality: int = 75, subsampling: str = '4:2:0', tries: int = 4,
) -> Dict[str, np.ndarray]:
    """Packs every uint8 image array `(N, H, W, C)` (C = 1 or 3) of `arrays`; other arrays are kept as they are.

    Returns:
        The entries of the packed `.npz`: per image array `<name>.jpeg` (xz of the concatenated JPEG streams),
        `<name>.lengths`, `<name>.residual` (xz), `<name>.shape` and `<name>.sha256`, plus `__meta__` (JSON).

    Raises:
        ValueError: an unknown subsampling, a quality outside 1-95 or `tries` < 1.
    """
    if subsampling not in _SUBSAMPLING:
        raise ValueError(f'subsampling must be one of {sorted(_SUBSAMPLING)}, got {subsampling!r}.')
    if not 1 <= quality <= 95:
        raise ValueError(f'JPEG quality must be in 1-95, got {quality}.')
    if tries < 1:
        raise ValueError(f'tries must be >= 1, got {tries}.')
    packed, coded = {}, []
    for name, array in arrays.items():
        if not _is_image_array(array):
            packed[name] = array
            continue
        array = np.ascontiguousarray(array)
        streams, decoded = zip(*[_encode_closest(image, quality, _SUBSAMPLING[subsampling], tries) for image in array])
        decoded = np.stack(decoded)
        packed[f'{name}.jpeg'] = np.frombuffer(lzma.compress(b''.join(streams), preset=9), np.uint8)
        packed[f'{name}.lengths'] = np.array([len(stream) for stream in streams], np.int32)
        packed[f'{name}.residual'] = np.frombuffer(lzma.compress((array - decoded).tobytes(), preset=9), np.uint8)
        packed[f'{name}.shape'] = np.array(array.shape, np.int64)
        packed[f'{name}.sha256'] = np.array(hashlib.sha256(array.tobytes()).hexdigest())
        coded.append(name)
    meta = {'quality': quality, 'subsampling': subsampling, 'images': coded, 'packed_with': _decoder_versions()}
    packed['__meta__'] = np.array(json.dumps(meta))
    return packed


def unpack_arrays(packed: Dict[str, np.ndarray], source: str = 'packed file') -> Dict[str, np.ndarray]:
    """Inverse of `pack_arrays`.

    Raises:
        ValueError: `packed` is not a packed file, or an image array does not come back with its recorded SHA-256
            (corrupt data or a JPEG decoder that differs from the packing machine's); the message names `source`,
            the array and both machines' decoder versions.
    """
    if '__meta__' not in packed:
        raise ValueError(f'{source}: no __meta__ entry; not written by pack_jpeg_npz.py pack.')
    meta = json.loads(str(packed['__meta__']))
    suffixes = ('.jpeg', '.lengths', '.residual', '.shape', '.sha256')
    arrays = {name: value for name, value in packed.items()
              if name != '__meta__' and not any(name.endswith(suffix) for suffix in suffixes)}
    for name in meta['images']:
        shape = tuple(int(n) for n in packed[f'{name}.shape'])
        data = lzma.decompress(packed[f'{name}.jpeg'].tobytes())
        offsets = np.concatenate([[0], np.cumsum(packed[f'{name}.lengths'])])
        if offsets[-1] != len(data) or len(offsets) - 1 != shape[0]:
            raise ValueError(f'{source}: {name}: the JPEG streams do not match their lengths or the image count.')
        decoded = np.stack([_decode(data[a:b], shape[-1]) for a, b in zip(offsets[:-1], offsets[1:])])
        residual = np.frombuffer(lzma.decompress(packed[f'{name}.residual'].tobytes()), np.uint8)
        if residual.size != decoded.size or decoded.shape != shape:
            raise ValueError(f'{source}: {name}: residual or decoded images do not have the recorded shape {shape}.')
        array = decoded + residual.reshape(shape)  # uint8 arithmetic wraps: the residual was taken mod 256
        if hashlib.sha256(array.tobytes()).hexdigest() != str(packed[f'{name}.sha256']):
            raise ValueError(
                f"{source}: {name} does not unpack to the original (SHA-256 differs): packed with "
                f"{meta['packed_with']}, decoded here with {_decoder_versions()}; install the packing machine's "
                f"Pillow, or the file is corrupt.")
        arrays[name] = array
    return arrays


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0].strip())
    sub = parser.add_subparsers(dest='command', required=True)
    pack = sub.add_parser('pack', help='npz -> packed npz')
    pack.add_argument('npz')
    pack.add_argument('out')
    pack.add_argument('--arrays', nargs='+', help='keep only these arrays (default: all)')
    pack.add_argument('--quality', type=int, default=75)
    pack.add_argument('--subsampling', default='4:2:0', choices=sorted(_SUBSAMPLING))
    pack.add_argument('--tries', type=int, default=4, help='re-encodings per image that does not come back exactly')
    unpack = sub.add_parser('unpack', help='packed npz -> npz (np.savez, uncompressed)')
    unpack.add_argument('packed')
    unpack.add_argument('out')
    args = parser.parse_args(argv)
    if args.command == 'pack':
        with np.load(args.npz) as source:
            names = args.arrays or list(source.files)
            missing = [name for name in names if name not in source.files]
            if missing:
                parser.error(f'{args.npz} has no arrays {missing}; it has {source.files}')
            arrays = {name: source[name] for name in names}
        packed = pack_arrays(arrays, args.quality, args.subsampling, args.tries)
        np.savez(args.out, **packed)
        sizes = {name: packed[f'{name}.jpeg'].nbytes + packed[f'{name}.residual'].nbytes
                 for name in json.loads(str(packed['__meta__']))['images']}
        for name, size in sizes.items():
            print(f'{name}: {len(arrays[name])} images, {size / len(arrays[name]):.0f} bytes per image')
    else:
        with np.load(args.packed) as packed:
            arrays = unpack_arrays({name: packed[name] for name in packed.files}, args.packed)
        np.savez(args.out, **arrays)
        print(f'{args.out}: {", ".join(f"{k} {tuple(v.shape)}" for k, v in arrays.items())}; SHA-256 checked')
    return 0


if __name__ == '__main__':
    sys.exit(main())
