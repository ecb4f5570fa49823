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
    with pytest.raises(ValueError, match="has 0 routing layers.*global_pool='routing'"):
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
    g = grey[20, 20]
    assert arr[20, 20].tolist() == [int(0.5 * g), int(0.5 * g), int(0.5 * g + 0.5 * 127)]
    path = save_grid(images, heats, tmp_path / 'grid.png', scale=2)
    grid = Image.open(path)
    assert grid.size == (3 * 56, 2 * 56)
    pixels = np.asarray(grid)
    assert pixels.std() > 0
    first = np.asarray(Image.fromarray(images[0]).resize((56, 56), Image.NEAREST))
    np.testing.assert_array_equal(pixels[:56, :56, 0], first)
    with pytest.raises(ValueError, match='3 images but 2 heatmaps'):
        save_grid(images, heats[:2], tmp_path / 'x.png')


def test_deletion_insertion_endpoints_and_area():
    from timm_routing.explain import curve_area, deletion_insertion
    torch.manual_seed(0)
    model = timm.create_model('convnet4_routing.cpu_fmnist').eval()
    x = torch.randn(3, 1, 28, 28)
    target = torch.tensor([0, 4, 9])
    heat = torch.rand(3, 28, 28)
    deletion, insertion = deletion_insertion(model, x, heat, target, steps=8)
    assert deletion.shape == insertion.shape == (9, 3)
    with torch.no_grad():
        p_x = model(x).softmax(1)[torch.arange(3), target]
        p_base = model(torch.zeros_like(x)).softmax(1)[torch.arange(3), target]
    torch.testing.assert_close(deletion[0], p_x)
    torch.testing.assert_close(deletion[-1], p_base)
    torch.testing.assert_close(insertion[0], p_base)
    torch.testing.assert_close(insertion[-1], p_x)
    expected = np.trapezoid(deletion.numpy(), dx=1 / 8, axis=0)
    np.testing.assert_allclose(curve_area(deletion).numpy(), expected, rtol=1e-6)


def test_faithful_map_beats_random_on_a_model_that_looks_at_one_corner():
    from timm_routing.explain import curve_area, deletion_insertion

    class Corner(torch.nn.Module):  # class 1's logit is the brightness of the top-left 7x7 corner
        def forward(self, x):
            corner = x[:, 0, :7, :7].sum((1, 2))
            return torch.stack([torch.zeros_like(corner), corner], 1)

    x = torch.rand(4, 1, 28, 28)
    target = torch.ones(4, dtype=torch.long)
    faithful = torch.zeros(4, 28, 28)
    faithful[:, :7, :7] = 1 + torch.rand(4, 7, 7)
    random = torch.rand(4, 28, 28, generator=torch.Generator().manual_seed(0))
    d_good, i_good = deletion_insertion(Corner(), x, faithful, target, steps=16)
    d_rand, i_rand = deletion_insertion(Corner(), x, random, target, steps=16)
    assert (curve_area(d_good) < curve_area(d_rand)).all()
    assert (curve_area(i_good) > curve_area(i_rand)).all()


def test_grad_cam_matches_its_definition():
    from timm_routing.explain import grad_cam
    torch.manual_seed(1)
    model = timm.create_model('resnet20_routing').eval()
    x = torch.randn(2, 3, 32, 32)
    cam = grad_cam(model, x, torch.tensor([3, 7]))
    assert cam.shape == (2, 32, 32) and cam.min() >= 0 and cam.max() <= 1
    # by hand for image 0, class 3
    feats = model.forward_features(x[:1]).detach().requires_grad_(True)
    model.forward_head(feats)[0, 3].backward()
    raw = torch.relu((feats.grad.mean((2, 3), keepdim=True) * feats).sum(1, keepdim=True))
    up = torch.nn.functional.interpolate(raw, size=(32, 32), mode='bilinear', align_corners=False)[0, 0].detach()
    expected = (up - up.min()) / (up.max() - up.min())
    torch.testing.assert_close(cam[0], expected, rtol=1e-5, atol=1e-5)
