"""World-To-Image nodes on the tiny Flux with loopback stand-ins for the LLM/VLM and the image search.

- iteration 0 is the host's own text-to-image pipeline (CLIPTextEncode + KSampler + VAEDecode), bit for bit;
- references reach the model: with ``reference_mode`` none an iteration with a reference equals iteration 0 (same
  prompt, same seed), with reference latents it differs;
- the full loop with a scripted LLM and a web stand-in: expected calls, early stop, the history;
- no LLM: keyword retrieval from the library, the history says what was skipped;
- a planted API key never appears in any output, history or log;
- same seed, library and script: the node's history bit for bit."""
import json
import logging
import re

import pytest
import torch
from PIL import Image
from standins import ChatStandIn, Reply, StandIn, png_bytes

KEY = "sk-planted-worldtoimage-KEY-0123456789"


@pytest.fixture(autouse=True)
def server_mode(comfy_host, monkeypatch):
    from editlab.models.llm import client

    monkeypatch.setattr(client, "RETRY_PAUSE", 0.0)
    monkeypatch.setenv("EDITLAB_W2I_KEY", KEY)
    with torch.inference_mode():
        yield


@pytest.fixture(scope="module")
def w2i(comfy_host):
    from editlab.nodes import llm, worldtoimage

    return worldtoimage, llm


@pytest.fixture(scope="module")
def flux(comfy_host):
    from editlab.models.tiny import build_tiny_models

    with torch.inference_mode():
        return build_tiny_models("flux", 0)


@pytest.fixture
def inputs(tmp_path, comfy_host):
    import folder_paths

    old = folder_paths.get_input_directory()
    folder = tmp_path / "input"
    (folder / "lib").mkdir(parents=True)
    Image.new("RGB", (64, 48), (250, 10, 10)).save(folder / "lib" / "red_zorblax_lamp.png")
    Image.new("RGB", (48, 64), (10, 10, 250)).save(folder / "lib" / "blue_chair.png")
    (folder / "lib" / "blue_chair.licence.txt").write_text("CC0 1.0")
    folder_paths.set_input_directory(str(folder))
    yield folder
    folder_paths.set_input_directory(old)


def bind_key(monkeypatch, base_url, name="stand-in"):
    """The server owner's binding of EDITLAB_W2I_KEY to the stand-in LLM (issue 22: a workflow can not bind one)."""
    monkeypatch.setenv("EDITLAB_LLM_ENDPOINTS", json.dumps({name: {"base_url": base_url,
                                                                   "key_env": "EDITLAB_W2I_KEY"}}))


GEN = dict(width=64, height=64, steps=2, cfg=1.0, sampler_name="euler", scheduler="simple", seed=5, candidates=5)


def agent(w2i, flux, prompt, **kw):
    nodes, _ = w2i
    args = {**GEN, "iterations": 2, "threshold": 10.0, "references": 1, "reference_mode": "reference_latents", **kw}
    return nodes.EditLabWorldToImage.execute(model=flux.model, clip=flux.clip, vae=flux.vae, prompt=prompt,
                                             **args).result


def library(w2i, folder="lib"):
    return w2i[0].EditLabImageLibrary.execute(folder=folder, recursive=True).result[0]


def host_pipeline(flux, prompt, seed):
    """The host's own nodes: CLIPTextEncode, EmptyLatentImage, KSampler, VAEDecode."""
    import nodes as host_nodes

    pos = host_nodes.CLIPTextEncode().encode(flux.clip, prompt)[0]
    neg = host_nodes.CLIPTextEncode().encode(flux.clip, "")[0]
    latent = host_nodes.EmptyLatentImage().generate(64, 64, 1)[0]
    out = host_nodes.KSampler().sample(flux.model, seed, 2, 1.0, "euler", "simple", pos, neg, latent)[0]
    return host_nodes.VAEDecode().decode(flux.vae, out)[0]


def test_iteration_zero_is_the_host_pipeline_and_references_condition_generation(w2i, flux, inputs):
    lib = library(w2i)
    with_refs = agent(w2i, flux, "a red zorblax lamp", source_1=lib)
    without = agent(w2i, flux, "a red zorblax lamp", source_1=lib, reference_mode="none")
    reference = host_pipeline(flux, "a red zorblax lamp", 5)
    best, final_prompt, history, batch = with_refs
    assert batch.shape == (2, 64, 64, 3)
    assert torch.equal(batch[0:1], reference)  # iteration 0: plain text-to-image, bit for bit
    h = json.loads(history)
    assert h["iterations"][1]["references"][0]["url"] == "file:red_zorblax_lamp.png"
    # same prompt and seed: a recorded-only reference changes nothing, a reference latent changes the image
    assert torch.equal(without[3][1], without[3][0])
    assert not torch.equal(batch[1], batch[0])
    assert final_prompt == "a red zorblax lamp" and torch.equal(best, batch[0:1])  # nothing scored: first kept
    assert any("no LLM" in s for s in h["skipped"]) and any("no scorer" in s for s in h["skipped"])


def _scripted(script_kinds, alignments):
    from editlab.models.worldtoimage import judge as J

    def respond(body):
        system = body["messages"][0]["content"]
        if system == J.JUDGE_SYSTEM:
            script_kinds.append("judge")
            a = alignments.pop(0)
            return {"alignment": a, "visible_keywords": ["lamp"], "reason": f"a={a}"}
        if system == J.PLAN_SYSTEM:
            script_kinds.append("plan")
            return {"diagnosis": "understanding", "prompt": f"a tall red desk lamp (try {len(script_kinds)})",
                    "queries": ["zorblax lamp"], "reason": "unknown brand"}
        script_kinds.append("pick")
        return {"choice": 0, "reason": "first"}
    return respond


def test_full_loop_with_llm_web_source_scorer_early_stop(w2i, flux, inputs, monkeypatch):
    nodes, llm_nodes = w2i
    kinds = []
    with ChatStandIn(responder=_scripted(kinds, [2, 4, 9, 9])) as llm_site, StandIn() as site:
        bind_key(monkeypatch, llm_site.base_url)
        site.routes["/v1/images/"] = Reply(200, {"results": [
            {"url": site.url + "/a.png", "title": "Zorblax lamp", "license": "by", "license_version": "4.0",
             "foreign_landing_url": "https://example.org/a"},
            {"url": site.url + "/b.png", "title": "lamp", "license": "cc0", "license_version": "1.0"}]})
        site.routes["/a.png"] = Reply(200, png_bytes(40, 40, (0, 200, 0)), {"Content-Type": "image/png"})
        site.routes["/b.png"] = Reply(200, png_bytes(40, 40, (0, 0, 200)), {"Content-Type": "image/png"})
        llm = llm_nodes.EditLabLLM.execute(base_url=llm_site.base_url, model="stand-in", api_key_env="EDITLAB_W2I_KEY",
                                           temperature=0.0, timeout=5.0, max_retries=1, vision=True).result[0]
        web = nodes.EditLabWebImageSearch.execute(service="openverse", endpoint=site.url + "/v1/images/",
                                                  allow_loopback=True, use_cache=False, timeout=5.0,
                                                  max_megabytes=1.0, max_megapixels=1.0).result[0]
        scorer = nodes.EditLabImageScorer.execute(judge="vlm", formula="authors_gated", vlm_aesthetic=False,
                                                  llm=llm).result[0]
        best, final_prompt, history, batch = agent(w2i, flux, "a zorblax lamp on a desk", iterations=5,
                                                   threshold=-0.5, llm=llm, scorer=scorer, source_1=web)
        chats = llm_site.chats()
    # coverage 1/3 each time; s = 0.04*(a + 10/3)/2, combined = 0.5*min(20s - 5.6, 0) (the authors' formula, no
    # aesthetic, no HPSv2): 0: judge (a=2: -1.733); 1: plan, pick, judge (a=4: -1.333); 2: plan, (a.png used: one
    # candidate, no pick), judge (a=9: -0.333 >= -0.5: stop before iterations 3 and 4)
    assert kinds == ["judge", "plan", "pick", "judge", "plan", "judge"]
    h = json.loads(history)
    assert h["stopped"] == "threshold" and h["best"] == 2 and batch.shape[0] == 3
    assert [it["scores"]["combined"] for it in h["iterations"]] == pytest.approx([-1.733333, -1.333333, -0.333333])
    assert torch.equal(best, batch[2:3]) and final_prompt == h["iterations"][2]["prompt"]
    refs = [it["references"] for it in h["iterations"]]
    assert refs[0] == [] and refs[1][0]["licence"] == "BY 4.0" and refs[1][0]["source"] == "openverse"
    assert refs[2][0]["url"].endswith("/b.png")  # a.png used already
    assert [it["seed"] for it in h["iterations"]] == [5, 5, 5]
    assert all(it["scores"]["judge"] == "vlm" for it in h["iterations"])
    assert h["scorer"]["aesthetic"].startswith("no predictor")
    # the judge saw the image: a PNG data URL in a vision message
    assert chats[0]["body"]["messages"][1]["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")


def test_planted_key_never_in_outputs_history_or_logs(w2i, flux, inputs, caplog, monkeypatch):
    nodes, llm_nodes = w2i
    caplog.set_level(logging.DEBUG)
    outputs = []
    with ChatStandIn([Reply(500, {"error": {"message": f"down, and here is your key: {KEY}"}}), "not json",
                      '{"alignment": 11}']) as llm_site:
        bind_key(monkeypatch, llm_site.base_url)
        llm = llm_nodes.EditLabLLM.execute(base_url=llm_site.base_url, model="stand-in",
                                           api_key_env="EDITLAB_W2I_KEY", temperature=0.0, timeout=5.0,
                                           max_retries=2, vision=True).result[0]
        scorer = nodes.EditLabImageScorer.execute(judge="vlm", formula="authors_gated", vlm_aesthetic=False,
                                                  llm=llm).result[0]
        res = agent(w2i, flux, "a zorblax lamp", llm=llm, scorer=scorer, source_1=library(w2i))
        outputs += [res[1], res[2], repr(llm), json.dumps(llm.public())]
        with pytest.raises(RuntimeError) as err:
            llm_nodes.EditLabVIEScore.execute(llm=llm, instruction="make it blue", source_image=res[0],
                                              edited_image=res[0])
        outputs.append(str(err.value))
        sent = [r["headers"] for r in llm_site.requests]
    text = "\n".join(outputs) + caplog.text
    assert "scoring failed" in res[2] and "LLM planning failed" in res[2]  # the failures are in the history
    assert any(KEY in json.dumps(h) for h in sent)  # the key was really used (in the Authorization header) ...
    assert KEY not in text  # ... and appears nowhere else


def test_same_inputs_same_history_bit_for_bit(w2i, flux, inputs):
    nodes, llm_nodes = w2i

    def once():
        kinds = []
        with ChatStandIn(responder=_scripted(kinds, [2, 4, 6])) as llm_site:
            llm = llm_nodes.EditLabLLM.execute(base_url=llm_site.base_url, model="stand-in", api_key_env="",
                                               temperature=0.0, timeout=5.0, max_retries=0, vision=True).result[0]
            scorer = nodes.EditLabImageScorer.execute(judge="vlm", formula="authors_gated", vlm_aesthetic=False,
                                                      llm=llm).result[0]
            out = agent(w2i, flux, "a red zorblax lamp", iterations=3, llm=llm, scorer=scorer,
                        source_1=library(w2i))
            return out[2].replace(llm_site.url, "<llm>"), out[3]

    (h1, b1), (h2, b2) = once(), once()
    assert h1 == h2 and torch.equal(b1, b2)
    assert json.loads(h1)["iterations"][1]["references"]  # not an empty run


def test_library_index_and_bad_inputs(w2i, inputs):
    from editlab.nodes.common import EditLabInputError

    nodes, llm_nodes = w2i
    out = nodes.EditLabImageLibrary.execute(folder="lib", recursive=True).result
    assert out[1].startswith("2 images") and "blue_chair.png: blue chair [CC0 1.0]" in out[1]
    with pytest.raises(EditLabInputError, match="input 'folder'"):
        nodes.EditLabImageLibrary.execute(folder="../..", recursive=True)
    with pytest.raises(EditLabInputError, match="input 'api_key_env'") as err:
        llm_nodes.EditLabLLM.execute(base_url="http://127.0.0.1:1/v1", model="m", api_key_env=KEY,
                                     temperature=0.0, timeout=5.0, max_retries=0, vision=True)
    assert KEY not in str(err.value)
    with pytest.raises(EditLabInputError, match="input 'base_url'.*without user:password") as err:
        llm_nodes.EditLabLLM.execute(base_url=f"https://me:{KEY}@llm.example.com/v1", model="m", api_key_env="",
                                     temperature=0.0, timeout=5.0, max_retries=0, vision=True)
    assert KEY not in str(err.value)
    with pytest.raises(EditLabInputError, match="input 'base_url'"):
        llm_nodes.EditLabLLM.execute(base_url="file:///etc/passwd", model="m", api_key_env="", temperature=0.0,
                                     timeout=5.0, max_retries=0, vision=True)
    with pytest.raises(EditLabInputError, match="input 'endpoint'"):
        nodes.EditLabWebImageSearch.execute(service="custom_json", endpoint="http://127.0.0.1/no-placeholder",
                                            allow_loopback=True, use_cache=False, timeout=5.0, max_megabytes=1.0,
                                            max_megapixels=1.0)
    with pytest.raises(EditLabInputError, match="input 'llm'"):
        nodes.EditLabImageScorer.execute(judge="vlm", formula="authors_gated", vlm_aesthetic=False)


def _tiny_clip_vision(tmp_path, projection_dim):
    """A CLIP vision model of the host's own class (comfy.clip_vision.ClipVisionModel) at a tiny size, seeded."""
    import comfy.clip_vision

    config = {"hidden_act": "quick_gelu", "hidden_size": 32, "image_size": 28, "intermediate_size": 64,
              "layer_norm_eps": 1e-5, "model_type": "clip_vision_model", "num_attention_heads": 2,
              "num_channels": 3, "num_hidden_layers": 2, "patch_size": 14, "projection_dim": projection_dim}
    path = tmp_path / f"tiny_clip_vision_{projection_dim}.json"
    path.write_text(json.dumps(config))
    cv = comfy.clip_vision.ClipVisionModel(str(path))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in cv.model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return cv


def test_clip_vision_scorer_is_the_cosine_with_the_projected_text_and_the_authors_formula(w2i, flux, tmp_path,
                                                                                          monkeypatch):
    """Flux pools its CLIP-L unprojected; the image embedding is projected: the text vector must go through the
    CLIP-L text projection (the host's own layer, applied here by hand) before the cosine. The user's CLIP still
    pools as before afterwards."""
    import numpy as np

    from editlab.nodes.common import EditLabInputError

    nodes, _ = w2i
    cv = _tiny_clip_vision(tmp_path, 32)  # tiny Flux's CLIP-L pools to 32 wide
    monkeypatch.setattr(nodes.host, "clip_vision_files", lambda: ["tiny.safetensors"])
    monkeypatch.setattr(nodes.host, "load_clip_vision", lambda name: cv)
    image = torch.randint(0, 256, (1, 40, 40, 3), generator=torch.Generator().manual_seed(1)).float() / 255.0
    tokens = flux.clip.tokenize("a red lamp")
    _, before = flux.clip.encode_from_tokens(tokens, return_pooled=True)
    out = nodes.EditLabImageScorer.execute(judge="clip_vision", formula="authors_gated", vlm_aesthetic=False,
                                           clip_vision_name="tiny.safetensors", clip=flux.clip, image=image,
                                           prompt="a red lamp").result
    img = cv.encode_image(image).image_embeds.flatten().double().numpy()
    _, unprojected = flux.clip.encode_from_tokens(tokens, return_pooled="unprojected")
    weight = flux.clip.cond_stage_model.clip_l.transformer.text_projection.weight.detach().double().numpy()
    txt = weight @ unprojected.flatten().double().numpy()  # nn.Linear without bias: W x
    cos = float(img @ txt / np.linalg.norm(img) / np.linalg.norm(txt))
    raw = unprojected.flatten().double().numpy()
    cos_unprojected = float(img @ raw / np.linalg.norm(img) / np.linalg.norm(raw))
    assert abs(cos - cos_unprojected) > 1e-3  # the two spaces give different cosines: the test tells them apart
    record = json.loads(out[2])[0]
    assert record["judge"] == "clip" and record["clip"] == pytest.approx(cos, abs=1e-5)
    assert out[1] == pytest.approx(0.5 * min(20 * cos - 5.6, 0.0), abs=1e-5)  # no aesthetic, no HPSv2
    assert any("aesthetic" in n for n in record["notes"]) and any("HPSv2" in n for n in record["notes"])
    _, after = flux.clip.encode_from_tokens(tokens, return_pooled=True)
    assert torch.equal(before, after) and torch.equal(before, unprojected)  # the user's CLIP is as it was
    wrong = _tiny_clip_vision(tmp_path, 16)
    monkeypatch.setattr(nodes.host, "load_clip_vision", lambda name: wrong)
    with pytest.raises(EditLabInputError, match="input 'clip'.*as wide as the CLIP vision embedding \\(16\\)"):
        nodes.EditLabImageScorer.execute(judge="clip_vision", formula="authors_gated", vlm_aesthetic=False,
                                         clip_vision_name="tiny.safetensors", clip=flux.clip, image=image,
                                         prompt="a red lamp")


def test_progress_preview_per_iteration_and_interruption(w2i, flux, inputs, monkeypatch):
    nodes, _ = w2i
    previews = []
    monkeypatch.setattr(nodes.host, "progress_preview",
                        lambda bar, value, total, pil: previews.append((value, total, pil.size)))
    agent(w2i, flux, "a red zorblax lamp", iterations=3, source_1=library(w2i))
    assert previews == [(1, 3, (64, 64)), (2, 3, (64, 64)), (3, 3, (64, 64))]

    class Interrupted(Exception):
        pass

    calls = []

    def check():
        calls.append(1)
        if len(calls) > 3:  # after the first iteration's checks
            raise Interrupted()

    previews.clear()
    monkeypatch.setattr(nodes.host, "check_interrupted", check)
    with pytest.raises(Interrupted):
        agent(w2i, flux, "a red zorblax lamp", iterations=5, source_1=library(w2i))
    assert len(previews) == 1  # stopped during the second iteration


def test_image_prompt_mode_equals_the_hosts_style_model_apply(w2i, flux, inputs, tmp_path):
    """reference_mode = image_prompt (Flux Redux style): iteration 1 equals the host's own CLIPVisionEncode +
    StyleModelApply + KSampler + VAEDecode on the retrieved image, bit for bit, and differs from iteration 0."""
    import comfy.sd
    import nodes as host_nodes
    from comfy.ldm.flux.redux import ReduxImageEncoder

    from editlab.nodes.common import EditLabInputError

    nodes, _ = w2i
    cv = _tiny_clip_vision(tmp_path, 32)
    context = flux.clip.encode_from_tokens(flux.clip.tokenize("x"))[0].shape[-1]
    redux = ReduxImageEncoder(redux_dim=32, txt_in_features=context)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in redux.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    style = comfy.sd.StyleModel(redux)
    out = agent(w2i, flux, "a red zorblax lamp", reference_mode="image_prompt", source_1=library(w2i),
                style_model=style, clip_vision=cv)
    batch, h = out[3], json.loads(out[2])
    assert h["iterations"][1]["references"][0]["url"] == "file:red_zorblax_lamp.png"
    with Image.open(inputs / "lib" / "red_zorblax_lamp.png") as im:
        ref = nodes.pil_to_tensor(im.convert("RGB"), 64, 64)
    pos = host_nodes.CLIPTextEncode().encode(flux.clip, "a red zorblax lamp")[0]
    seen = host_nodes.CLIPVisionEncode().encode(cv, ref, "center")[0]
    pos = host_nodes.StyleModelApply().apply_stylemodel(pos, style, seen, 1.0, "multiply")[0]
    neg = host_nodes.CLIPTextEncode().encode(flux.clip, "")[0]
    latent = host_nodes.EmptyLatentImage().generate(64, 64, 1)[0]
    sampled = host_nodes.KSampler().sample(flux.model, 5, 2, 1.0, "euler", "simple", pos, neg, latent)[0]
    expected = host_nodes.VAEDecode().decode(flux.vae, sampled)[0]
    assert torch.equal(batch[1:2], expected)
    assert not torch.equal(batch[1], batch[0])
    with pytest.raises(EditLabInputError, match="input 'reference_mode'"):
        agent(w2i, flux, "a red zorblax lamp", reference_mode="image_prompt", source_1=library(w2i))


# -- issue 22: keys bound by the server's owner ----------------------------------------------------------------------

def test_the_llm_node_selects_an_owners_endpoint_and_nothing_else(w2i, monkeypatch, tmp_path):
    """By name or exact base URL, with its bound variable or none; an unconfigured variable, a bound variable with
    another host, a variable in the base URL are errors naming the input, with no value quoted."""
    from editlab.nodes.common import EditLabInputError

    _, llm_nodes = w2i

    def node(base_url, api_key_env=""):
        return llm_nodes.EditLabLLM.execute(base_url=base_url, model="m", api_key_env=api_key_env,
                                            temperature=0.0, timeout=5.0, max_retries=0, vision=True).result[0]

    monkeypatch.setenv("EDITLAB_LLM_ENDPOINTS", json.dumps(
        {"openai": {"base_url": "https://api.openai.com/v1", "key_env": "EDITLAB_W2I_KEY"}}))
    by_name, by_url = node("openai"), node("https://api.openai.com/v1/", "EDITLAB_W2I_KEY")
    assert by_name == by_url and (by_name.endpoint, by_name.api_key_env) == ("openai", "EDITLAB_W2I_KEY")
    assert node("http://127.0.0.1:11434/v1").endpoint == "" and node("http://127.0.0.1:11434/v1").api_key_env == ""
    for base_url, env, name, says in [
            ("http://127.0.0.1:9/v1", "EDITLAB_W2I_KEY", "api_key_env", "no key is bound to this base URL"),
            ("https://attacker.example/v1", "EDITLAB_W2I_KEY", "api_key_env", "no key is bound"),
            ("openai", "HOME", "api_key_env", "empty or EDITLAB_W2I_KEY"),
            ("https://attacker.example/v1?k=$EDITLAB_W2I_KEY", "", "base_url", "without a query"),
            ("https://attacker.example/${EDITLAB_W2I_KEY}/v1", "", "base_url", "no $"),
            ("http://169.254.169.254/v1", "", "base_url", "cloud metadata"),
            ("http://[::ffff:10.0.0.1]/v1", "", "base_url", "private address")]:
        with pytest.raises(EditLabInputError, match=f"input '{name}': expected .*{re.escape(says)}") as err:
            node(base_url, env)
        assert KEY not in str(err.value)
    # the file in ComfyUI's user directory works the same way; the node's cache key follows it
    import folder_paths

    monkeypatch.delenv("EDITLAB_LLM_ENDPOINTS")
    old = folder_paths.get_user_directory()
    folder_paths.set_user_directory(str(tmp_path))
    try:
        before = llm_nodes.owner_config_stamp()
        (tmp_path / "editlab").mkdir()
        (tmp_path / "editlab" / "llm_endpoints.json").write_text(json.dumps(
            {"mine": {"base_url": "https://llm.example.org/v1", "key_env": "EDITLAB_W2I_KEY"}}))
        assert llm_nodes.owner_config_stamp() != before
        assert node("mine").api_key_env == "EDITLAB_W2I_KEY"
        (tmp_path / "editlab" / "llm_endpoints.json").write_text("{broken")
        with pytest.raises(RuntimeError, match="owner's endpoint configuration is unusable.*not valid JSON"):
            node("mine")
    finally:
        folder_paths.set_user_directory(old)


def test_a_redirect_from_the_owners_endpoint_is_an_error_naming_the_llm_input(w2i, monkeypatch):
    from editlab.nodes.common import EditLabInputError

    _, llm_nodes = w2i
    with ChatStandIn(["stolen"]) as attacker, ChatStandIn(["x"]) as endpoint:
        endpoint.script = [Reply(307, b"", {"Location": attacker.base_url + "/chat/completions"})]
        bind_key(monkeypatch, endpoint.base_url, "judge")
        llm = llm_nodes.EditLabLLM.execute(base_url="judge", model="m", api_key_env="", temperature=0.0,
                                           timeout=5.0, max_retries=2, vision=True).result[0]
        with pytest.raises(EditLabInputError, match="input 'llm': expected an endpoint requests may go to;.*"
                                                    "HTTP 307, a redirect to .* not followed") as err:
            llm_nodes.EditLabVIEScore.execute(llm=llm, instruction="x", source_image=torch.zeros(1, 32, 32, 3),
                                              edited_image=torch.zeros(1, 32, 32, 3))
        assert attacker.requests == [] and endpoint.calls == 1 and KEY not in str(err.value)
