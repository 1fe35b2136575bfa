"""The panels' in-memory store and the data shaped for them: ids checked as the route checks them (path-like,
too long, foreign characters refused), unknown ids and kinds 404, old entries dropped, thumbnails real PNGs of the
image given, a direction's features strongest first."""
import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from editlab.models import panels
from editlab.models.panels import PanelError, PanelStore


@pytest.mark.parametrize("bad", ["", "../etc/passwd", "a/b", "a\\b", "..", "x" * 65, "id with space", "é", "a.b",
                                 "%2e%2e", None, 5])
def test_ids_that_are_not_plain_tokens_are_400(bad):
    with pytest.raises(PanelError) as err:
        panels.check_id(bad)
    assert err.value.status == 400


@pytest.mark.parametrize("bad", ["", "..", "nope", "face/../x", "SAE_FEATURES"])
def test_unknown_kinds_are_404(bad):
    with pytest.raises(PanelError) as err:
        panels.check_kind(bad)
    assert err.value.status == 404


def test_published_data_comes_back_only_under_its_kind_and_id():
    store = PanelStore()
    pid = store.publish("face", {"values": {"jawOpen": 0.5}})
    assert panels.ID_PATTERN.match(pid)
    assert store.get("face", pid) == '{"values": {"jawOpen": 0.5}}'
    for kind, other in (("sae_features", pid), ("face", "A" * 16)):
        with pytest.raises(PanelError) as err:
            store.get(kind, other)
        assert err.value.status == 404


def test_the_oldest_entries_are_dropped_and_oversized_or_non_finite_data_refused():
    store = PanelStore(max_entries=3, max_entry_bytes=100)
    ids = [store.publish("face", {"n": i}) for i in range(5)]
    assert len(store) == 3
    with pytest.raises(PanelError):
        store.get("face", ids[0])
    assert store.get("face", ids[-1]) == '{"n": 4}'
    with pytest.raises(ValueError):
        store.publish("face", {"x": "y" * 200})
    with pytest.raises(ValueError):
        store.publish("face", {"x": float("nan")})


def test_ui_for_names_the_panel_as_the_page_reads_it():
    store = PanelStore()
    out = panels.ui_for("attention_maps", {"maps": []}, store)
    (ref,) = out[panels.UI_KEY]
    assert ref["kind"] == "attention_maps" and store.get("attention_maps", ref["id"]) == '{"maps": []}'


def test_thumbnail_is_a_png_of_the_image_scaled_to_its_longer_side():
    image = torch.zeros(40, 80, 3)
    image[:, :40, 0] = 1.0  # left half red, right half black
    url = panels.thumbnail(image, side=20)
    assert url.startswith("data:image/png;base64,")
    pil = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert pil.size == (20, 10)
    pixels = np.asarray(pil.convert("RGB"))
    assert tuple(pixels[5, 2]) == (255, 0, 0) and tuple(pixels[5, 17]) == (0, 0, 0)
    gray = Image.open(io.BytesIO(base64.b64decode(panels.thumbnail(np.full((8, 8), 0.5)).split(",", 1)[1])))
    assert np.asarray(gray).max() == 128
    with pytest.raises(ValueError):
        panels.thumbnail(np.zeros((4, 4, 2)))


def test_direction_features_strongest_weight_first_and_the_feature_view_columns():
    d = panels.direction_features("smile", torch.tensor([3, 9, 1]),
                                  torch.tensor([0.1, -0.7, 0.4], requires_grad=True), limit=2)
    assert [f["id"] for f in d["features"]] == [9, 1] and d["count"] == 3
    assert d["features"][0] == {"id": 9, "weight": pytest.approx(-0.7), "labels": ["smile"]}
    table = {"tokens": [{"position": 1, "token": "a", "features": [{"id": 5, "activation": 1.0, "labels": []},
                                                                   {"id": 9, "activation": 0.5, "labels": []}]}]}
    view = panels.feature_view(table, d, sae="s")
    assert view["columns"] == [1, 5, 9] and view["sae"] == "s" and view["tokens"] == table["tokens"]


def test_agent_history_keeps_prompt_references_scores_and_a_thumbnail_per_iteration():
    history = {"prompt": "a red fox", "best": 1, "best_score": 0.3, "stopped": "iterations", "skipped": [],
               "iterations": [
                   {"index": 0, "prompt": "a red fox", "references": [], "scores": None, "notes": [], "queries": []},
                   {"index": 1, "prompt": "a red fox in snow", "queries": ["fox snow"], "notes": [],
                    "references": [{"url": "file:fox.png", "title": "Fox", "licence": "CC0", "source": "library:lib",
                                    "page": "", "creator": "", "query": "fox snow", "size": [64, 64]}],
                    "scores": {"judge": "clip", "combined": 0.3, "clip": 0.25, "missing_keywords": ["snow"]}}]}
    images = [torch.zeros(1, 16, 16, 3), torch.ones(1, 16, 16, 3)]
    out = panels.agent_history(history, images)
    assert [s["prompt"] for s in out["iterations"]] == ["a red fox", "a red fox in snow"]
    ref = out["iterations"][1]["references"][0]
    assert ref == {"url": "file:fox.png", "title": "Fox", "licence": "CC0", "source": "library:lib",
                   "query": "fox snow"}
    assert out["iterations"][1]["scores"] == {"combined": 0.3, "clip": 0.25, "judge": "clip"}
    assert out["iterations"][1]["missing_keywords"] == ["snow"] and out["best"] == 1
    white = Image.open(io.BytesIO(base64.b64decode(out["iterations"][1]["thumbnail"].split(",", 1)[1])))
    assert np.asarray(white.convert("RGB")).min() == 255


def test_attention_maps_one_thumbnail_per_word():
    out = panels.attention_maps(["dog", "cat"], torch.rand(2, 32, 32, 3))
    assert [m["word"] for m in out["maps"]] == ["dog", "cat"]
    with pytest.raises(ValueError):
        panels.attention_maps(["dog"], torch.rand(2, 8, 8, 3))
