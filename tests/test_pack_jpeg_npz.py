"""scripts/pack_jpeg_npz.py: JPEG-decoded image arrays packed small and unpacked bit for bit."""
import io
import lzma
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / 'scripts'))
import pack_jpeg_npz  # noqa: E402


def _jpeg_decoded(images: np.ndarray, quality: int = 75) -> np.ndarray:
    """What a dataset of JPEG files looks like once decoded: smooth images through one JPEG round trip."""
    out = []
    for image in images:
        buf = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, 'JPEG', quality=quality)
        out.append(pack_jpeg_npz._decode(buf.getvalue(), image.shape[-1]))
    return np.stack(out)


def _smooth_images(rng: np.random.Generator, count: int, channels: int) -> np.ndarray:
    """Photo-like 32x32 images: random 4x4 grids, bilinearly enlarged."""
    coarse = rng.integers(48, 208, (count, 4, 4, channels)).astype(np.uint8)
    return np.stack([
        np.asarray(Image.fromarray(grid[..., 0] if channels == 1 else grid).resize((32, 32), Image.BILINEAR))
        .reshape(32, 32, channels) for grid in coarse])


def test_round_trip_is_exact_and_small():
    rng = np.random.default_rng(0)
    arrays = {
        'x_train': _jpeg_decoded(_smooth_images(rng, 12, 3)),
        'x_grey': _jpeg_decoded(_smooth_images(rng, 5, 1)),
        'x_noise': rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8),  # never was a JPEG: all in the residual
        'y_train': rng.integers(0, 10, 12).astype(np.uint8),
        'class_names': np.array(['a', 'b']),
    }
    packed = pack_jpeg_npz.pack_arrays(arrays)
    assert 'x_train.jpeg' in packed and 'y_train' in packed and 'y_train.jpeg' not in packed
    unpacked = pack_jpeg_npz.unpack_arrays(packed)
    assert sorted(unpacked) == sorted(arrays)
    for name, array in arrays.items():
        assert unpacked[name].dtype == array.dtype and np.array_equal(unpacked[name], array), name
    # the point of packing: several times smaller than the generic lossless compressor makes the same pixels
    coded = packed['x_train.jpeg'].nbytes + packed['x_train.residual'].nbytes
    assert coded < len(lzma.compress(arrays['x_train'].tobytes(), preset=9)) / 5


def test_round_trip_through_files(tmp_path, capsys):
    rng = np.random.default_rng(1)
    x = _jpeg_decoded(_smooth_images(rng, 4, 3))
    np.savez(tmp_path / 'data.npz', x_train=x, y_train=np.arange(4, dtype=np.uint8), x_test=x[:1])
    assert pack_jpeg_npz.main(['pack', str(tmp_path / 'data.npz'), str(tmp_path / 'packed.npz'),
                               '--arrays', 'x_train', 'y_train']) == 0
    assert 'x_train: 4 images' in capsys.readouterr().out
    assert pack_jpeg_npz.main(['unpack', str(tmp_path / 'packed.npz'), str(tmp_path / 'back.npz')]) == 0
    with np.load(tmp_path / 'back.npz') as back:
        assert sorted(back.files) == ['x_train', 'y_train']
        assert np.array_equal(back['x_train'], x) and np.array_equal(back['y_train'], np.arange(4))


def test_corrupt_residual_is_an_error_naming_file_and_array():
    rng = np.random.default_rng(2)
    packed = pack_jpeg_npz.pack_arrays({'x_train': _jpeg_decoded(_smooth_images(rng, 3, 3))})
    residual = np.frombuffer(lzma.decompress(packed['x_train.residual'].tobytes()), np.uint8).copy()
    residual[5] += 1
    packed['x_train.residual'] = np.frombuffer(lzma.compress(residual.tobytes()), np.uint8)
    with pytest.raises(ValueError, match=r'data\.packed\.npz: x_train does not unpack to the original'):
        pack_jpeg_npz.unpack_arrays(packed, 'data.packed.npz')


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match='no __meta__'):
        pack_jpeg_npz.unpack_arrays({'x_train': np.zeros((1, 4, 4, 3), np.uint8)}, 'plain.npz')
    with pytest.raises(ValueError, match="'4:1:1'"):
        pack_jpeg_npz.pack_arrays({}, subsampling='4:1:1')
    with pytest.raises(ValueError, match='quality must be in 1-95, got 0'):
        pack_jpeg_npz.pack_arrays({}, quality=0)
    with pytest.raises(ValueError, match='tries must be >= 1, got 0'):
        pack_jpeg_npz.pack_arrays({}, tries=0)
