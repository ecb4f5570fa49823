"""Coupling-coefficient heatmaps and their rendering."""
import numpy as np
import pytest
import torch
from PIL import Image

import timm

from timm_routing.explain import coupling_maps, find_routing_pool, heatmaps, overlay, save_grid


def test_maps_are_the_pools_couplings_upsampled():
    model = timm.create_model('resnet20_routing').eval()
    x = torch.randn(3, 3, 32, 32)
    maps = coupling_maps(model, x, upsample=False)
    _, couplings = model.head.global_pool.route(model.forward_features(x))
    torch.testing.assert_close(maps, couplings)
    up = coupling_maps(model, x)
    assert up.shape == (3, 4, 32, 32)
    # bilinear upsampling keeps each map's mean: still a distribution over the positions, spread on 16x more pixels
    torch.testing.assert_close(up.sum((-1, -2)) / 16, torch.ones(3, 4), rtol=1e-4, atol=1e-4)


def test_heatmaps_reduce_and_scale():
    maps = torch.rand(2, 4, 8, 8)
    heat = heatmaps(maps)
    torch.testing.assert_close(heat.amax((1, 2)), torch.ones(2))
    torch.testing.assert_close(heat.amin((1, 2)), torch.zeros(2))
    assert torch.argmax(heatmaps(maps, group=2)[0]) == torch.argmax(maps[0, 2])
    assert torch.equal(heatmaps(torch.ones(1, 2, 4, 4)), torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match='group 4 out of range: the maps have 4 groups'):
        heatmaps(maps, group=4)


def test_model_without_routing_pool():
    with pytest.raises(ValueError, match="has 0 routing pooling layers.*global_pool='routing'"):
        find_routing_pool(timm.create_model('resnet20'))


def test_overlay_and_grid_pngs(tmp_path):
    images = [np.random.default_rng(i).integers(0, 256, (28, 28), dtype=np.uint8) for i in range(3)]
    heats = torch.zeros(3, 28, 28)
    heats[:, 5:10, 5:10] = 1.  # a hot square
    ov = overlay(images[0], heats[0])
    assert ov.size == (28, 28) and ov.mode == 'RGB'
    arr = np.asarray(ov).astype(int)
    grey = images[0].astype(np.float32)
    # jet(1) = (127, 0, 0), jet(0) = (0, 0, 127): half image, half colour
    assert arr[7, 7].tolist() == [int(0.5 * grey[7, 7] + 0.5 * 127), int(0.5 * grey[7, 7]), int(0.5 * grey[7, 7])]
    assert arr[20, 20].tolist() == [int(0.5 * grey[20, 20]), int(0.5 * grey[20, 20]), int(0.5 * grey[20, 20] + 0.5 * 127)]
    path = save_grid(images, heats, tmp_path / 'grid.png', scale=2)
    grid = Image.open(path)
    assert grid.size == (3 * 56, 2 * 56)
    pixels = np.asarray(grid)
    assert pixels.std() > 0
    np.testing.assert_array_equal(pixels[:56, :56, 0], np.asarray(Image.fromarray(images[0]).resize((56, 56), Image.NEAREST)))
    with pytest.raises(ValueError, match='3 images but 2 heatmaps'):
        save_grid(images, heats[:2], tmp_path / 'x.png')
