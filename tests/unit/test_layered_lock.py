"""Product lock: inside the mask the original bit for bit, outside the edit bit for bit except the seam band (whose
pixels are checked by hand at each distance), colour match, and clear errors for bad masks and batches."""
import pytest
import torch

from editlab.models.layered import LayeredInputError
from editlab.models.layered.lock import product_lock, seam_band


def images(b=1, h=40, w=48, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(b, h, w, 3, generator=gen), torch.rand(b, h, w, 3, generator=gen)


def box_mask(h=40, w=48, top=10, left=12, bottom=25, right=30, soft=False):
    m = torch.zeros(1, h, w)
    m[:, top:bottom, left:right] = 1.0
    if soft:  # a soft edge: 0.4 just outside (not product), 0.6 just inside (product)
        m[:, top - 1, left:right] = 0.4
        m[:, top, left:right] = 0.6
    return m


@pytest.mark.parametrize("feather", [0, 1, 4])
def test_inside_original_outside_edit_except_the_band(feather):
    original, edited = images()
    mask = box_mask()
    out = product_lock(original, edited, mask, feather)
    region = mask[0] >= 0.5
    assert torch.equal(out[0][region], original[0][region])
    # the band by hand: chessboard distance from the box (rows 10..24, cols 12..29)
    ys, xs = torch.meshgrid(torch.arange(40), torch.arange(48), indexing="ij")
    dy = torch.clamp(torch.maximum(10 - ys, ys - 24), min=0)
    dx = torch.clamp(torch.maximum(12 - xs, xs - 29), min=0)
    dist = torch.maximum(dy, dx)
    far = dist > feather
    assert torch.equal(out[0][far], edited[0][far])
    for d in range(1, feather + 1):
        sel = dist == d
        a = 1 - d / (feather + 1)
        assert torch.allclose(out[0][sel], a * original[0][sel] + (1 - a) * edited[0][sel], atol=1e-6)
    assert torch.equal(seam_band(mask, feather)[0], (dist > 0) & (dist <= feather))


def test_soft_mask_edge_thresholded_at_half_and_batches():
    original, edited = images(b=3)
    mask = box_mask(soft=True)
    out = product_lock(original[:1], edited, mask, 0)
    region = mask[0] >= 0.5
    for b in range(3):
        assert torch.equal(out[b][region], original[0][region])
        assert torch.equal(out[b][~region], edited[b][~region])


def test_colour_match_moves_outside_towards_the_original_and_keeps_the_product():
    original, _ = images()
    edited = (original * 0.5 + 0.4).clamp(0, 1)  # a relit surrounding
    mask = box_mask()
    plain = product_lock(original, edited, mask, 2)
    matched = product_lock(original, edited, mask, 2, colour_match=1.0)
    region = mask[0] >= 0.5
    assert torch.equal(matched[0][region], original[0][region])
    far = ~seam_band(mask, 2)[0] & ~region
    err = lambda x: (x[0][far] - original[0][far]).abs().mean()  # noqa: E731
    assert err(matched) < 0.5 * err(plain)


@pytest.mark.parametrize("mask, words", [
    (torch.zeros(1, 40, 48), "empty"),
    (torch.ones(1, 40, 48), "covers all"),
    (torch.ones(1, 20, 48), "images' size"),
    (torch.ones(2, 40, 48), "one mask or one per image"),
    (torch.full((1, 40, 48), float("nan")), "finite"),
])
def test_bad_masks_are_named(mask, words):
    original, edited = images(b=3)
    with pytest.raises(LayeredInputError, match=words) as info:
        product_lock(original, edited, mask, 4)
    assert info.value.input_name == "mask"


def test_bad_images_and_settings_are_named():
    original, edited = images(b=2)
    with pytest.raises(LayeredInputError, match="original"):
        product_lock(torch.cat([original, original]), edited, box_mask(), 4)
    with pytest.raises(LayeredInputError, match="edited"):
        product_lock(original, edited[:, :30], box_mask(), 4)
    with pytest.raises(LayeredInputError, match="feather"):
        product_lock(original, edited, box_mask(), 999)
    with pytest.raises(LayeredInputError, match="colour_match"):
        product_lock(original, edited, box_mask(), 4, colour_match=2.0)
