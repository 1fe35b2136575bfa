"""Consistency report: zero change for identical images, numbers checked against hand-computed L1/PSNR and against
scikit-image's SSIM, a planted change localised by the heat-map, inside/outside split by the mask."""
import math

import numpy as np
import pytest
import torch

from editlab.models.layered import LayeredInputError
from editlab.models.layered.consistency import consistency_report


def photo(h=64, w=64):
    from skimage import data
    from skimage.transform import resize

    return torch.from_numpy(resize(data.astronaut(), (h, w), anti_aliasing=True)).float()[None]


def test_identical_images_report_no_change():
    img = photo()
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:48, 16:48] = 1
    report, heat = consistency_report(img, img.clone(), mask)
    for region in ("inside_mask", "outside_mask"):
        r = report["images"][0][region]
        assert r["l1"] == 0 and r["psnr_db"] == "inf" and r["ssim"] == pytest.approx(1.0, abs=1e-5)
    assert report["images"][0]["max_change"] == 0
    inner = torch.ones(64, 64, dtype=torch.bool)
    inner[15:49, 15:49] = False  # the outline ring is drawn in cyan
    inner[16:48, 16:48] = True
    assert float(heat[0][inner].max()) == 0


def test_planted_change_is_localised_and_split_by_the_mask():
    img = photo()
    edited = img.clone()
    edited[0, 40:52, 8:20] = 1.0 - edited[0, 40:52, 8:20]  # the change, outside the mask
    mask = torch.zeros(1, 64, 64)
    mask[:, 4:28, 30:60] = 1
    report, heat = consistency_report(img, edited, mask)
    inside, outside = report["images"][0]["inside_mask"], report["images"][0]["outside_mask"]
    assert inside["l1"] == 0 and inside["psnr_db"] == "inf"
    diff = (edited - img)[0].abs().mean(-1)
    out_sel = mask[0] < 0.5
    assert outside["l1"] == pytest.approx(float(diff[out_sel].mean()), rel=1e-5)
    mse = float((edited - img)[0].pow(2).mean(-1)[out_sel].mean())
    assert outside["psnr_db"] == pytest.approx(10 * math.log10(1 / mse), abs=1e-3)
    assert outside["ssim"] < 0.99
    # the heat-map's brightness: the planted square holds the brightest pixels, the rest stays dark
    lum = heat[0].sum(-1)
    planted = torch.zeros(64, 64, dtype=torch.bool)
    planted[40:52, 8:20] = True
    assert float(lum[planted].mean()) > 5 * float(lum[~planted & out_sel].mean() + 1e-6)
    top = torch.nonzero(lum == lum[out_sel].max())
    assert planted[top[:, 0], top[:, 1]].all()


def test_ssim_agrees_with_scikit_image():
    from skimage.metrics import structural_similarity

    img = photo()
    gen = torch.Generator().manual_seed(0)
    edited = (img + 0.05 * torch.randn(img.shape, generator=gen)).clamp(0, 1)
    report, _ = consistency_report(img, edited, None)
    ours = report["images"][0]["outside_mask"]["ssim"]
    ref = structural_similarity(img[0].numpy(), edited[0].numpy(), channel_axis=-1, data_range=1.0,
                                gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert ours == pytest.approx(ref, abs=0.03)
    assert report["images"][0]["inside_mask"] is None


def test_mismatched_inputs_are_named():
    img = photo()
    with pytest.raises(LayeredInputError) as info:
        consistency_report(img, img[:, :32], None)
    assert info.value.input_name == "edited"
    with pytest.raises(LayeredInputError) as info:
        consistency_report(img, img, torch.ones(1, 32, 32))
    assert info.value.input_name == "mask"
    with pytest.raises(LayeredInputError) as info:
        consistency_report(torch.cat([img] * 2), torch.cat([img] * 3), None)
    assert info.value.input_name == "original"
