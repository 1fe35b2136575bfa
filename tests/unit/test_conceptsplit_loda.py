"""LODA's objective in plain torch: the harmonic-mean pairwise KL by hand, the loss, its gradient separating the
maps, the step schedule and the AFG masks."""
import math

import pytest
import torch

from editlab.models.conceptsplit.loda import (afg_masks, distributions, gaussian_smooth, harmonic_mean_kl,
                                              loda_loss, pairwise_kl, step_sizes)


def blob(cy, cx, size=16, width=2.0):
    y, x = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    return torch.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * width ** 2))


def test_smoothing_blurs_and_keeps_borders():
    maps = torch.stack([blob(4, 4), blob(11, 11)])
    s = gaussian_smooth(maps)
    assert s.shape == maps.shape and s[0].argmax() == maps[0].argmax()
    assert s.max() < maps.max()  # blurred
    flat = torch.ones(1, 9, 9)
    assert torch.allclose(gaussian_smooth(flat), flat, atol=1e-6)


def test_harmonic_mean_of_pairwise_kl_by_hand():
    maps = torch.rand(3, 6, 6, generator=torch.Generator().manual_seed(0)) + 0.1
    p = distributions(maps).double()
    kl = [[float((p[i] * (p[i] / p[j]).log()).sum()) for j in range(3)] for i in range(3)]
    pairs = [kl[i][j] for i in range(3) for j in range(3) if i < j]  # the authors' pairs: i < j only
    want = len(pairs) / sum(1 / v for v in pairs)
    assert torch.allclose(pairwise_kl(maps).double(), torch.tensor(kl, dtype=torch.float64), atol=1e-5)
    assert math.isclose(float(harmonic_mean_kl(maps)), want, rel_tol=1e-4)
    with pytest.raises(ValueError, match="at least two"):
        harmonic_mean_kl(maps[:1])


def test_loss_is_threshold_for_equal_maps_and_zero_when_apart():
    same = torch.stack([blob(8, 8), blob(8, 8)])
    assert math.isclose(float(loda_loss(same, threshold=3.0)), 3.0, abs_tol=1e-4)
    apart = torch.stack([blob(2, 2, width=1.0), blob(13, 13, width=1.0)])
    assert float(loda_loss(apart, threshold=1.0)) == 0.0


def test_a_gradient_step_separates_overlapping_maps():
    maps = torch.stack([blob(7, 7), blob(8, 9)]).requires_grad_(True)
    before = float(harmonic_mean_kl(gaussian_smooth(maps.detach())))
    loda_loss(maps).backward()
    with torch.no_grad():
        moved = (maps - 0.5 * maps.grad).clamp(min=0)
    assert float(harmonic_mean_kl(gaussian_smooth(moved))) > before


def test_step_sizes_and_masks():
    s = step_sizes(10)
    assert s.shape == (10,) and math.isclose(float(s[0]), 20.0) and math.isclose(float(s[-1]), 20 * 0.5 ** 0.5,
                                                                                  rel_tol=1e-6)
    assert step_sizes(0).shape == (0,) and float(step_sizes(1)[0]) == 20.0
    # the authors' schedule is over all T sampling steps, LODA takes its first n: step i = 20 sqrt(1 - 0.5 i / (T-1))
    T = 50
    want = [20 * math.sqrt(1 - 0.5 * i / (T - 1)) for i in range(5)]
    assert step_sizes(5, 20.0, T).tolist() == pytest.approx(want, rel=1e-6)
    masks = afg_masks(torch.stack([blob(3, 3), blob(12, 12)]))
    assert masks.dtype == torch.bool and masks[0, 3, 3] and not masks[0, 12, 12] and masks[1, 12, 12]
    assert 0.05 < float(masks.float().mean()) < 0.2  # about the top 10% of each map


def test_afg_masks_are_cut_from_the_authors_sigma_1_5_blur():
    """The authors blur the maps the AFG masks come from with sigma 1.5 (LODA's loss: sigma 1), kernel 7: scipy's
    Gaussian filter with radius 3 (truncate 2.0 at sigma 1.5) and whole-sample mirroring, then the 90th
    percentile."""
    import numpy as np
    from scipy.ndimage import gaussian_filter

    maps = torch.rand(2, 12, 12, generator=torch.Generator().manual_seed(3))
    for sigma, got in ((1.5, afg_masks(maps)), (1.0, afg_masks(maps, sigma=1.0))):
        for m, mask in zip(maps.double().numpy(), got):
            blurred = gaussian_filter(m, sigma, mode="mirror", truncate=3 / sigma)
            want = blurred >= np.quantile(blurred, 0.9)
            assert (torch.from_numpy(want) == mask).float().mean() > 0.98, sigma  # ties at the cut aside
    assert not torch.equal(afg_masks(maps), afg_masks(maps, sigma=1.0))


@pytest.mark.parametrize("latent,present,want", [
    ((96, 96), [(96, 96), (48, 48), (24, 24), (12, 12)], {(24, 24)}),  # SD2.1 at 768 px: the authors' 24x24
    ((128, 128), [(64, 64), (32, 32)], {(32, 32)}),  # SDXL at 1024 px (no attention at 128): the authors' 32x32
    ((64, 64), [(64, 64), (32, 32), (16, 16), (8, 8)], {(16, 16)}),  # SD1.5 at 512 px
    ((8, 8), [(8, 8), (4, 4)], {(4, 4)}),  # a tiny UNet: the nearest there is
])
def test_the_authors_map_layers_are_those_nearest_a_quarter_of_the_latent(latent, present, want):
    from editlab.models.conceptsplit.loda import quarter_resolution

    assert quarter_resolution(present, latent) == want


def test_map_tap_averages_only_the_chosen_layers():
    from editlab.models.conceptsplit.loda import MapTap

    tap = MapTap([[1], [2]], {}, (8, 8))
    a, b, c = torch.full((2, 8, 8), 1.0), torch.full((2, 2, 2), 2.0), torch.full((2, 2, 2), 4.0)
    tap.collected = [((8, 8), a), ((2, 2), b), ((2, 2), c)]
    # the two 2x2 layers only, at their own size (the authors blur and compare the maps there)
    assert torch.equal(tap.maps(), torch.full((2, 2, 2), 3.0))
    tap.map_layers = "all"
    assert torch.allclose(tap.maps(), torch.full((2, 8, 8), 7.0 / 3))
    with pytest.raises(ValueError, match="map_layers"):
        MapTap([[1]], {}, (8, 8), "some")
    # SDXL: the authors read the down (input) blocks only
    layers = {"input.7.0": 1, "middle.0.0": 2, "output.1.0": 3}
    assert set(MapTap([[1]], layers, (8, 8), down_only=True).layers) == {"input.7.0"}
    assert set(MapTap([[1]], layers, (8, 8)).layers) == set(layers)
