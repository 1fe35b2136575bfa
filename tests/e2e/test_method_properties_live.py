"""A method property checked through the live server, on what a user downloads (not only exit codes): the shipped
try-on workflow, run as a user would (--tiny), returns the photo with every pixel outside the saved mask unchanged."""
from pathlib import Path

import numpy as np
import pytest

from editlab.client.cli import run_workflow
from editlab.client.workflow import load_workflow

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def _pixels(path):
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).copy()


def test_tryon_paste_back_outside_the_mask_is_the_photo_through_the_server(server, workflow_inputs, tmp_path):
    files = run_workflow(server.client, load_workflow(REPO / "workflows" / "tryon_flux_fill.json"), [],
                         tmp_path, show_progress=False, tiny="always")
    by_prefix = {p.name.rsplit("_", 2)[0]: p for p in files if p.suffix == ".png"}
    result, mask = _pixels(by_prefix["shirt_result"]), _pixels(by_prefix["shirt_mask"])[..., 0]
    photo = _pixels(REPO / "workflows" / "input" / "editlab_photo.png")
    assert result.shape == photo.shape and mask.shape == photo.shape[:2]
    outside = mask == 0
    assert outside.mean() > 0.3 and (~outside).mean() > 0.05
    assert np.array_equal(result[outside], photo[outside])  # 8-bit PNGs: exact, not close
    assert not np.array_equal(result[~outside], photo[~outside])  # the garment region was regenerated


def test_sae_slider_at_strength_zero_is_the_plain_image_through_the_server(server, tmp_path):
    """SAEdit through the live server on the shipped SD3.5 slider workflow (--tiny): with the slider at strength 0
    the 'smiling' image equals the plain one bit for bit (the slider's path runs: its ranges reach the sampler), at
    the shipped strength it differs."""
    workflow = load_workflow(REPO / "workflows" / "saedit_sd35_slider.json")
    api = load_workflow(REPO / "workflows" / "api" / "saedit_sd35_slider.json")
    slider_id, = [k for k, v in api.items() if v["class_type"] == "EditLabSAESlider"]
    trains = [k for k, v in api.items() if v["class_type"] == "EditLabSAETrain"]
    sets = [f"{k}.overwrite=true" for k in trains]
    outs = {}
    for strength in ("0.0", None):
        extra = [f"{slider_id}.strength={strength}"] if strength else []
        files = run_workflow(server.client, workflow, sets + extra, tmp_path / str(strength), show_progress=False,
                             tiny="always")
        outs[strength] = {p.name.rsplit("_", 2)[0]: _pixels(p) for p in files if p.suffix == ".png"}
    assert np.array_equal(outs["0.0"]["sd35_smiling"], outs["0.0"]["sd35_plain"])
    assert np.array_equal(outs[None]["sd35_plain"], outs["0.0"]["sd35_plain"])
    assert not np.array_equal(outs[None]["sd35_smiling"], outs[None]["sd35_plain"])
