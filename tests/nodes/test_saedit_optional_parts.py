"""SAE Slider and SAE Features with a direction that carries only its vector (no feature ids, no weights), as a
direction built in code is (bench/bench_saedit_slider.py makes one): the slider slides, and both panels list the
vector's non-zero features, labelled on the tokens (issue 27)."""
import json

import pytest
import torch

pytestmark = pytest.mark.usefixtures("server_mode")

PROMPT = "a portrait of a man in a park"


@pytest.fixture(scope="module")
def flux(comfy_host):
    from editlab.models.tiny import build_tiny_models

    with torch.inference_mode():
        return build_tiny_models("flux", 0)


def _vector_only(dict_size: int):
    from editlab.nodes.saedit import LoadedDirection

    vector = torch.zeros(dict_size)
    vector[[4, 11, 30]] = torch.tensor([0.3, -0.8, 0.5])
    return vector, LoadedDirection(vector, None, None, [], "vector_only")


def _sae(width: int, dict_size: int):
    from editlab.models.saedit.sae import SAEConfig, SparseAutoencoder
    from editlab.nodes.saedit import LoadedSAE

    sae = SparseAutoencoder(SAEConfig(act_size=width, dict_size=dict_size, top_k=8))
    sae.reset_parameters(torch.Generator().manual_seed(0))
    return LoadedSAE(sae, "vector_sae", "t5")


def _panel(output) -> dict:
    from editlab.models import panels

    (ref,) = output.ui[panels.UI_KEY]
    return json.loads(panels.STORE.get(ref["kind"], ref["id"]))


def test_the_slider_runs_with_a_direction_without_feature_ids_and_its_panel_lists_the_vector_s_features(flux):
    from editlab.models.saedit.edit import decoded_delta
    from editlab.models.saedit.slider import strength_ranges
    from editlab.nodes.saedit import EditLabSAESlider, EditLabTextEncode

    cond, = EditLabTextEncode.execute(clip=flux.clip, text=PROMPT).result
    sae = _sae(cond[0][0].shape[-1], 64)
    vector, direction = _vector_only(64)
    out = EditLabSAESlider.execute(conditioning=cond, clip=flux.clip, sae=sae, direction=direction, prompt="",
                                   word="man", strength=1.0, schedule="constant", part="auto")
    edited = out.result[0]
    changed = (edited[-1][0] - cond[0][0]).abs().sum(-1)[0].nonzero().flatten().tolist()
    assert changed, "the slider moved no token"
    # the constant schedule with the authors' timing: unedited at the first grid point, then one strength
    (_, _, zero), (_, _, scale) = strength_ranges("constant", 1.0)
    assert zero == 0.0 and torch.equal(edited[0][0], cond[0][0])
    delta = scale * decoded_delta(sae.sae, vector)
    for position in changed:
        assert torch.allclose(edited[-1][0][0, position] - cond[0][0][0, position], delta, atol=1e-4)
    view = _panel(out)
    assert view["direction"]["count"] == 3
    assert [(f["id"], f["weight"]) for f in view["direction"]["features"]] == [(11, -0.8), (30, 0.5), (4, 0.3)]
    assert all(f["labels"] == [] or f["labels"] == ["vector_only"] for r in view["tokens"] for f in r["features"])
    labelled = {f["id"] for r in view["tokens"] for f in r["features"] if f["labels"]}
    assert labelled <= {4, 11, 30}
    assert view["positions"] == changed


def test_sae_features_labels_the_vector_s_features_of_a_direction_without_feature_ids(flux):
    from editlab.models.saedit.tokens import prompt_tokens
    from editlab.nodes.saedit import EditLabSAEFeatures, LoadedDirection

    encoded = prompt_tokens(flux.clip, PROMPT)
    sae = _sae(encoded.embeddings.shape[-1], 64)
    codes = sae.sae.encode(encoded.embeddings[0, encoded.content].float())
    firing = codes.sum(0).topk(2).indices  # features that fire on the prompt: they must show up labelled
    vector = torch.zeros(64)
    vector[firing] = 1.0
    out = EditLabSAEFeatures.execute(clip=flux.clip, sae=sae, prompt=PROMPT, part="auto", top_n=8,
                                     direction=LoadedDirection(vector, None, None, [], "firing.safetensors"))
    table = json.loads(out.result[1])
    labelled = {f["id"] for r in table["tokens"] for f in r["features"] if "firing" in f["labels"]}
    assert labelled == set(firing.tolist())
    assert sorted(f["id"] for f in _panel(out)["direction"]["features"]) == sorted(firing.tolist())
