"""The layered background-replacement workflow through the live server, run as a user would (--tiny, which scales
its 1024 px down to 64): the saved edit holds the product's pixels exactly as the scaled photo (computed here
independently: the same centre crop and bilinear resize in torch, 8-bit as SaveImage writes), while the consistency
report and its heat-map measure the model's edit before the lock, so they show the change the (random tiny) model
made inside the product: the report that would read zero by construction on the locked image does not."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from editlab.client.cli import run_workflow
from editlab.client.workflow import load_workflow

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def _pixels(path):
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).copy()


def _scaled(path, size=64):
    """ImageScale(bilinear, size x size, crop center) by hand, as floats in [0, 1]."""
    x = torch.from_numpy(_pixels(path)).float().div(255).permute(2, 0, 1)[None]
    h, w = x.shape[-2:]
    side = min(h, w)
    y0, x0 = round((h - side) / 2), round((w - side) / 2)
    x = x[..., y0:y0 + side, x0:x0 + side]
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear")[0].permute(1, 2, 0).numpy()


def test_background_replacement_keeps_the_product_exactly_through_the_server(server, workflow_inputs, tmp_path):
    files = run_workflow(server.client, load_workflow(REPO / "workflows" / "layered_background_replacement.json"),
                         [], tmp_path, show_progress=False, tiny="always")
    images = {p.name.rsplit("_", 2)[0]: p for p in files if p.suffix == ".png"}
    texts = [p for p in files if p.suffix == ".txt"]
    edit, heat = _pixels(images["background"]), _pixels(images["background_heatmap"])
    photo = _scaled(REPO / "workflows" / "input" / "editlab_product_bag.png")
    # inside the product: the scaled mask clearly above 0.5 (the bilinear scale puts a row at exactly 0.5, where the
    # host's float path decides: 0.33 rounds it below, 0.3.75 not)
    product = _scaled(REPO / "workflows" / "input" / "editlab_product_bag_mask.png")[..., 0] > 0.5 + 1e-3
    assert edit.shape == (64, 64, 3) and 0.1 < product.mean() < 0.9
    expected = np.clip(255.0 * photo, 0, 255).astype(np.uint8)
    assert np.array_equal(edit[product], expected[product])
    assert not np.array_equal(edit[~product], expected[~product])  # the tiny model did change the background
    (report,) = [json.loads(p.read_text()) for p in texts if "inside_mask" in p.read_text()]
    inside, outside = report["images"][0]["inside_mask"], report["images"][0]["outside_mask"]
    # the saved (locked) edit differs from the photo nowhere inside the product, yet the report sees a change there:
    # it measures the model's own edit, which repainted the product region (random weights change every pixel)
    assert inside["pixels"] >= product.sum() and inside["l1"] > 1e-3 and inside["psnr_db"] != "inf"
    assert outside["l1"] > 1e-3
    # the heat-map (black = unchanged) lights up inside the product too, not only outside it
    assert (heat[product].sum(-1) > 0).mean() > 0.5
