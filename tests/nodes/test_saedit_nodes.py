"""SAEdit nodes on the tiny Flux and tiny SD3: what the diffusion model receives, step by step."""
import math

import pytest
import torch

PROMPT = "a photo of a man on a beach with a dog"
PAIRS = "a man | a smiling man\na dog in a park | a smiling dog in a park\na woman | a smiling woman"


@pytest.fixture(scope="module")
def nodes(comfy_host, tmp_path_factory):
    import folder_paths

    from editlab.nodes import saedit

    root = tmp_path_factory.mktemp("models")
    for folder in (saedit.SAE_FOLDER, saedit.DIRECTION_FOLDER):
        (root / folder).mkdir()
        folder_paths.folder_names_and_paths[folder] = ([str(root / folder)], {".safetensors"})
    saedit.models_root = root
    return saedit


@pytest.fixture(scope="module", params=["flux", "sd3"])
def setup(request, nodes):
    from editlab.models.tiny import build_tiny_models

    tiny = build_tiny_models(request.param, 0)
    with torch.inference_mode():  # as the server runs every node
        sae, stats = nodes.EditLabSAETrain.execute(
            clip=tiny.clip, prompts="a man\na dog", prompts_file="", generated_prompts=200, part="auto",
            dict_size=128, top_k=8, matryoshka_groups="32,96", lr=1e-3, batch_size=256, epochs=2, seed=0,
            name=f"tiny_{request.param}").result
    direction, = nodes.EditLabSAEDirection.execute(clip=tiny.clip, sae=sae, pairs=PAIRS, pairs_file="", part="auto",
                                                   method="svd", percentile=99.5, name=f"smile_{request.param}").result
    cond = tiny.clip.encode_from_tokens_scheduled(tiny.clip.tokenize(PROMPT))
    neg = tiny.clip.encode_from_tokens_scheduled(tiny.clip.tokenize("blurry"))
    return {"tiny": tiny, "sae": sae, "direction": direction, "cond": cond, "neg": neg, "arch": request.param}


def slider(nodes, s, conditioning=None, word="man", strength=0.5, schedule="exponential", **kw):
    return nodes.EditLabSAESlider.execute(conditioning=conditioning or s["cond"], clip=s["tiny"].clip, sae=s["sae"],
                                          direction=s["direction"], prompt=PROMPT, word=word, strength=strength,
                                          schedule=schedule, part="auto", **kw).result[0]


def sample(s, positive, steps=6, cfg=2.0, sampler="euler"):
    """Sample on the tiny model; return the output and the contexts the diffusion model received, with
    which branch (0 cond, 1 uncond) each came from."""
    import comfy.sample

    seen = []

    def record(module, args, kwargs):
        branches = kwargs["transformer_options"]["cond_or_uncond"]
        for i, ctx in enumerate(kwargs["context"].chunk(len(branches))):
            seen.append((branches[i], ctx.cpu().clone()))  # where the test's tensors are (a GPU run)

    dm = s["tiny"].model.model.diffusion_model
    handle = dm.register_forward_pre_hook(record, with_kwargs=True)
    try:
        latent = torch.zeros(1, 16, 8, 8)
        out = comfy.sample.sample(s["tiny"].model, comfy.sample.prepare_noise(latent, 7), steps, cfg, sampler,
                                  "simple", positive, s["neg"], latent, disable_pbar=True)
    finally:
        handle.remove()
    return out, [c for b, c in seen if b == 0], [c for b, c in seen if b == 1]


def edited_positions(nodes, s, word="man"):
    from editlab.models.saedit.tokens import prompt_tokens, word_positions

    return word_positions(s["tiny"].clip, prompt_tokens(s["tiny"].clip, PROMPT), word)


def unit_delta(s):
    from editlab.models.saedit.edit import decoded_delta

    return decoded_delta(s["sae"].sae, s["direction"].direction)


def test_strength_zero_runs_the_slider_and_is_bit_identical(nodes, setup):
    edited = slider(nodes, setup, strength=0.0)
    # the slider's own path ran: new entries, split over the denoising as the schedule says (one range at 0)
    assert edited is not setup["cond"] and [(o["start_percent"], o["end_percent"]) for _, o in edited] == [(0.0, 1.0)]
    a, _, _ = sample(setup, edited)
    b, _, _ = sample(setup, setup["cond"])
    assert torch.equal(a, b)


def test_cond_and_uncond_run_in_one_batched_call_per_step(nodes, setup):
    """Under CFG the host batches the slid conditioning with the negative: one model call per step, as without the
    slider (a hook would split every step into two calls)."""
    calls = []
    dm = setup["tiny"].model.model.diffusion_model
    handle = dm.register_forward_pre_hook(
        lambda m, a, kw: calls.append(tuple(kw["transformer_options"]["cond_or_uncond"])), with_kwargs=True)
    try:
        sample(setup, setup["cond"], steps=6, cfg=3.5)
        plain, calls[:] = list(calls), []
        sample(setup, slider(nodes, setup, strength=0.5), steps=6, cfg=3.5)
    finally:
        handle.remove()
    assert len(plain) == 6 and all(len(c) == 2 for c in plain)
    assert calls == plain


def test_recorded_prompt_needs_no_retyping(nodes, setup):
    """CLIP Text Encode (records tokens) gives the stock encoder's conditioning plus its text; the slider then finds
    the word's tokens with the tokenizer alone and edits exactly what the typed-prompt path edits."""
    clip = setup["tiny"].clip
    recorded, = nodes.EditLabTextEncode.execute(clip=clip, text=PROMPT).result
    assert torch.equal(recorded[0][0], setup["cond"][0][0]) and recorded[0][1]["editlab_prompt"] == PROMPT
    encodes = []
    original = clip.encode_from_tokens
    clip.encode_from_tokens = lambda *a, **k: encodes.append(1) or original(*a, **k)
    try:
        no_retype = nodes.EditLabSAESlider.execute(
            conditioning=recorded, clip=clip, sae=setup["sae"], direction=setup["direction"], prompt="", word="man",
            strength=0.5, schedule="exponential", part="auto").result[0]
    finally:
        del clip.encode_from_tokens
    assert not encodes, "the text encoder ran again"
    typed = slider(nodes, setup, strength=0.5)
    assert len(no_retype) == len(typed)
    for (a, oa), (b, ob) in zip(no_retype, typed):
        assert torch.equal(a, b) and (oa["start_percent"], oa["end_percent"]) == (ob["start_percent"],
                                                                                   ob["end_percent"])


def test_a_prompt_that_is_not_the_conditionings_is_refused(nodes, setup):
    """The stock Flux conditioning is always 256 T5 tokens: a different typed prompt has the same shape and used to
    edit the wrong tokens silently."""
    from editlab.nodes.common import EditLabInputError

    other = "a photo of a dog on a beach with a man"  # same words, another order: 'man' sits elsewhere
    with pytest.raises(EditLabInputError, match="input 'prompt': expected the text this conditioning was encoded"):
        nodes.EditLabSAESlider.execute(conditioning=setup["cond"], clip=setup["tiny"].clip, sae=setup["sae"],
                                       direction=setup["direction"], prompt=other, word="man", strength=0.5,
                                       schedule="exponential", part="auto")
    recorded, = nodes.EditLabTextEncode.execute(clip=setup["tiny"].clip, text=PROMPT).result
    with pytest.raises(EditLabInputError, match="input 'prompt': expected empty, or the conditioning's own prompt"):
        nodes.EditLabSAESlider.execute(conditioning=recorded, clip=setup["tiny"].clip, sae=setup["sae"],
                                       direction=setup["direction"], prompt=other, word="man", strength=0.5,
                                       schedule="exponential", part="auto")


def test_only_the_edited_tokens_change_and_the_negative_is_untouched(nodes, setup):
    out, conds, unconds = sample(setup, slider(nodes, setup, strength=0.5))
    base = setup["cond"][0][0]
    pos = edited_positions(nodes, setup)
    assert pos
    others = [i for i in range(base.shape[1]) if i not in pos]
    assert len(conds) == 6 and len(unconds) == 6
    for ctx in conds:
        assert torch.equal(ctx[:, others], base[:, others])
    assert not torch.equal(conds[-1][:, pos], base[:, pos])
    for ctx in unconds:
        assert torch.equal(ctx, setup["neg"][0][0])


def test_change_grows_with_strength_and_flips_with_sign(nodes, setup):
    base = setup["cond"][0][0]
    pos = edited_positions(nodes, setup)
    changes = {}
    for strength in (-0.6, -0.2, 0.2, 0.6, 1.0):
        _, conds, _ = sample(setup, slider(nodes, setup, strength=strength), steps=4)
        changes[strength] = conds[-1][:, pos] - base[:, pos]
    norms = [float(changes[s].norm()) for s in (0.2, 0.6, 1.0)]
    assert norms[0] > 0 and norms == sorted(norms) and norms[0] < norms[-1]
    for s in (0.2, 0.6):
        assert torch.allclose(changes[-s], -changes[s], atol=1e-5)


def _measured_strengths(nodes, setup, steps, **kw):
    strength = 0.3
    _, conds, _ = sample(setup, slider(nodes, setup, strength=strength, **kw), steps=steps, cfg=1.0)
    assert len(conds) == steps
    pos = edited_positions(nodes, setup)[0]
    v = unit_delta(setup)
    base = setup["cond"][0][0][0, pos]
    return [float((ctx[0, pos] - base) @ v / (v @ v)) for ctx in conds]


@pytest.mark.parametrize("steps", [8, 20, 40])
def test_per_step_strength_is_the_authors_schedule_one_step_late(nodes, setup, steps):
    """The authors' factors, written out as their code builds them: x = linspace(0, 40, 40) / 40,
    exp(x * 15 f) - 1 capped at 15 f, and the factor of step k - 1 applied at step k (a step-end callback); step 0
    unedited. At 40 steps step k gets factor k - 1 exactly; at N steps step i sits at grid point 40 i / N."""
    import numpy as np

    f = 0.3
    factors = np.minimum(np.exp(np.linspace(0, 40, num=40) / 40.0 * 15 * f) - 1, 15 * f)
    want = [0.0] + [float(factors[40 * i // steps - 1]) for i in range(1, steps)]
    assert _measured_strengths(nodes, setup, steps) == pytest.approx(want, rel=1e-4, abs=1e-5)
    if steps == 40:
        assert want[1] == 0.0 and want[2] == pytest.approx(math.exp(15 * f / 39) - 1)


@pytest.mark.parametrize("steps", [8, 40])
def test_undelayed_timing_keeps_the_earlier_grid(nodes, setup, steps):
    want = [min(math.exp((i / steps) * 15 * 0.3) - 1, 15 * 0.3) for i in range(steps)]
    assert _measured_strengths(nodes, setup, steps, timing="undelayed") == pytest.approx(want, rel=1e-4, abs=1e-5)


def test_two_chained_sliders_add_up(nodes, setup):
    base = setup["cond"][0][0]
    one = slider(nodes, setup, word="man", strength=0.4)
    both = slider(nodes, setup, conditioning=one, word="dog", strength=-0.3)
    only_dog = slider(nodes, setup, word="dog", strength=-0.3)
    _, c_both, _ = sample(setup, both, steps=5, cfg=1.0)
    _, c_man, _ = sample(setup, one, steps=5, cfg=1.0)
    _, c_dog, _ = sample(setup, only_dog, steps=5, cfg=1.0)
    for x, m, d in zip(c_both, c_man, c_dog):
        assert torch.allclose(x - base, (m - base) + (d - base), atol=1e-6)
    assert set(edited_positions(nodes, setup, "man")).isdisjoint(edited_positions(nodes, setup, "dog"))


def test_works_with_a_multistep_sampler(nodes, setup):
    out, conds, _ = sample(setup, slider(nodes, setup, strength=0.5), steps=6, sampler="dpmpp_2m")
    assert torch.isfinite(out).all() and len(conds) == 6


def test_train_saves_with_metadata_and_loader_reads_it_back(nodes, setup):
    from editlab.models.saedit.files import load_sae

    name = f"tiny_{setup['arch']}.safetensors"
    path = nodes.models_root / "sae" / name
    sae, info = load_sae(path)
    assert info["stats"]["prompts"] == 202 and sae.config.group_sizes == [32, 96]
    loaded, = nodes.EditLabSAELoader.execute(sae_name=name).result
    x = setup["cond"][0][0][0, :5].float()
    assert torch.equal(loaded.sae.encode(x), setup["sae"].sae.encode(x))
    direction, = nodes.EditLabSAEDirectionLoader.execute(direction_name=f"smile_{setup['arch']}.safetensors").result
    assert torch.equal(direction.direction, setup["direction"].direction)
    assert len(direction.pairs) == 3


def test_bad_inputs_are_named_and_write_nothing(nodes, setup):
    from editlab.models.saedit.sae import SAEConfig, SparseAutoencoder
    from editlab.nodes.common import EditLabInputError

    wrong = nodes.LoadedSAE(SparseAutoencoder(SAEConfig(act_size=7, dict_size=128, top_k=4)), "wrong.safetensors",
                            "t5")
    with pytest.raises(EditLabInputError, match="input 'sae': expected an SAE as wide as"):
        nodes.EditLabSAESlider.execute(conditioning=setup["cond"], clip=setup["tiny"].clip, sae=wrong,
                                       direction=setup["direction"], prompt=PROMPT, word="man", strength=0.5,
                                       schedule="exponential", part="auto")
    with pytest.raises(EditLabInputError, match="input 'word'.*'cat' is not a word of the prompt"):
        slider(nodes, setup, word="cat")
    with pytest.raises(EditLabInputError, match="input 'strength': expected a finite number"):
        slider(nodes, setup, strength=float("nan"))
    with pytest.raises(EditLabInputError, match="input 'pairs': expected at least one"):
        nodes.EditLabSAEDirection.execute(clip=setup["tiny"].clip, sae=setup["sae"], pairs="  \n# none", pairs_file="",
                                          part="auto", method="svd", percentile=99.5, name="never_written")
    assert not (nodes.models_root / "sae_directions" / "never_written.safetensors").exists()
    with pytest.raises(EditLabInputError, match="input 'name'"):
        nodes.EditLabSAETrain.execute(clip=setup["tiny"].clip, prompts="a man", prompts_file="", generated_prompts=0,
                                      part="auto", dict_size=16, top_k=2, matryoshka_groups="", lr=1e-3,
                                      batch_size=8, epochs=1, seed=0, name="../escape")
    with pytest.raises(EditLabInputError, match="input 'prompts_file'"):
        nodes.EditLabSAETrain.execute(clip=setup["tiny"].clip, prompts="", prompts_file="../../etc/passwd",
                                      generated_prompts=0, part="auto", dict_size=16, top_k=2, matryoshka_groups="",
                                      lr=1e-3, batch_size=8, epochs=1, seed=0, name="x")
    sae_dir = nodes.models_root / "sae"
    (sae_dir / "truncated.safetensors").write_bytes((sae_dir / f"tiny_{setup['arch']}.safetensors").read_bytes()[:64])
    with pytest.raises(EditLabInputError, match="input 'sae_name'.*truncated.safetensors is not a readable"):
        nodes.EditLabSAELoader.execute(sae_name="truncated.safetensors")
    from safetensors.torch import save_file

    save_file({"lora_up.weight": torch.zeros(2, 2)}, str(sae_dir / "a_lora.safetensors"))
    with pytest.raises(EditLabInputError, match="input 'sae_name'.*a_lora.safetensors is not an SAE file"):
        nodes.EditLabSAELoader.execute(sae_name="a_lora.safetensors")
    assert sorted(p.name for p in sae_dir.iterdir() if p.name.endswith(".part")) == []


def test_a_part_the_conditioning_lacks_is_named(nodes, setup):
    from editlab.nodes.common import EditLabInputError

    # Flux conditions on T5 only; the tiny SD3 is built without T5 (CLIP-L/G padded to 4096).
    part, message = ("clip", "no CLIP tokens") if setup["arch"] == "flux" else ("t5", "no T5 tokens")
    with pytest.raises(EditLabInputError, match=f"input 'part'.*{message}"):
        nodes.EditLabSAESlider.execute(conditioning=setup["cond"], clip=setup["tiny"].clip, sae=setup["sae"],
                                       direction=setup["direction"], prompt=PROMPT, word="man", strength=0.5,
                                       schedule="exponential", part=part)


@pytest.fixture(scope="module")
def flux(comfy_host):
    from editlab.models.tiny import build_tiny_models

    return build_tiny_models("flux", 0)


def _invert_and_resample(flux, steps, iterations, cfg=1.0):
    import comfy.sample
    import comfy.samplers

    from editlab.nodes.saedit import EditLabFlowInversion

    cond = flux.clip.encode_from_tokens_scheduled(flux.clip.tokenize("a red fox"))
    neg = flux.clip.encode_from_tokens_scheduled(flux.clip.tokenize("blurry")) if cfg != 1.0 else cond
    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    latent = flux.vae.encode(image).detach()
    sigmas = comfy.samplers.calculate_sigmas(flux.model.get_model_object("model_sampling"), "simple", steps)
    extra = {} if cfg == 1.0 else {"cfg": cfg, "negative": neg}
    noise, inverted = EditLabFlowInversion.execute(model=flux.model, conditioning=cond, latent={"samples": latent},
                                                   sigmas=sigmas, iterations=iterations, **extra).result
    # sampled back by the host's own euler at the same cfg and negative
    back = comfy.sample.sample_custom(flux.model, noise.generate_noise({"samples": latent}), cfg,
                                      comfy.samplers.sampler_object("euler"), sigmas, cond, neg, latent)
    return latent, noise.noise, back


def test_inversion_under_cfg_reconstructs_the_latent_sampled_with_that_cfg(flux):
    """SD3 is sampled with CFG: the inversion runs the same CFG (positive and negative), and the host's euler at that
    cfg takes its noise back to the latent; an inversion at cfg 1 does not."""
    latent, noise, back = _invert_and_resample(flux, steps=20, iterations=10, cfg=3.5)
    assert float((back - latent).abs().max()) < 1e-3 * float(latent.std())
    import comfy.sample
    import comfy.samplers

    _, plain_noise, _ = _invert_and_resample(flux, steps=20, iterations=10)
    cond = flux.clip.encode_from_tokens_scheduled(flux.clip.tokenize("a red fox"))
    neg = flux.clip.encode_from_tokens_scheduled(flux.clip.tokenize("blurry"))
    sigmas = comfy.samplers.calculate_sigmas(flux.model.get_model_object("model_sampling"), "simple", 20)
    wrong = comfy.sample.sample_custom(flux.model, plain_noise, 3.5, comfy.samplers.sampler_object("euler"), sigmas,
                                       cond, neg, latent)
    assert float((wrong - latent).abs().max()) > 100 * float((back - latent).abs().max())


def test_inversion_then_euler_sampling_reconstructs_the_latent(flux):
    latent, noise, back = _invert_and_resample(flux, steps=20, iterations=10)
    # Measured: max error ~2e-6 against a latent std of ~1.2.
    assert float((back - latent).abs().max()) < 1e-4 * float(latent.std())
    assert float(noise.detach().std()) > 0.5 and not torch.allclose(noise, latent)  # it really went to noise
    _, _, rough = _invert_and_resample(flux, steps=20, iterations=3)
    assert float((rough - latent).abs().max()) > float((back - latent).abs().max())  # iterations matter


def test_inversion_rejects_non_flow_models_and_partial_schedules(comfy_host, flux):
    import comfy.samplers

    from editlab.models.tiny import build_tiny_models
    from editlab.nodes.common import EditLabInputError
    from editlab.nodes.saedit import EditLabFlowInversion

    sd15 = build_tiny_models("sd15", 0)
    with pytest.raises(EditLabInputError, match="input 'model': expected a rectified-flow model"):
        EditLabFlowInversion.execute(model=sd15.model, conditioning=[], latent={"samples": torch.zeros(1, 4, 8, 8)},
                                     sigmas=torch.tensor([1.0, 0.0]), iterations=1)
    cond = flux.clip.encode_from_tokens_scheduled(flux.clip.tokenize("x"))
    with pytest.raises(EditLabInputError, match="input 'negative': expected the negative prompt"):
        EditLabFlowInversion.execute(model=flux.model, conditioning=cond, latent={"samples": torch.zeros(1, 16, 8, 8)},
                                     sigmas=torch.tensor([1.0, 0.0]), iterations=1, cfg=3.5)
    with pytest.raises(EditLabInputError, match="input 'sigmas'.*end at 0"):
        EditLabFlowInversion.execute(model=flux.model, conditioning=cond, latent={"samples": torch.zeros(1, 16, 8, 8)},
                                     sigmas=torch.tensor([1.0, 0.5]), iterations=1)


def test_features_per_token_with_direction_labels(nodes, setup):
    import json

    image, text = nodes.EditLabSAEFeatures.execute(clip=setup["tiny"].clip, sae=setup["sae"], prompt=PROMPT,
                                                   part="auto", top_n=4, direction=setup["direction"]).result
    table = json.loads(text)
    positions = [row["position"] for row in table["tokens"]]
    from editlab.models.saedit.tokens import prompt_tokens

    assert positions == prompt_tokens(setup["tiny"].clip, PROMPT).content
    assert any("man" in row["token"] for row in table["tokens"])
    acts = [f["activation"] for row in table["tokens"] for f in row["features"]]
    assert acts and all(a > 0 for a in acts)
    for row in table["tokens"]:
        assert len(row["features"]) <= 4
        assert [f["activation"] for f in row["features"]] == sorted((f["activation"] for f in row["features"]),
                                                                  reverse=True)
    direction_ids = set(setup["direction"].feature_ids.tolist())
    labelled = {f["id"] for row in table["tokens"] for f in row["features"] if f["labels"]}
    assert labelled <= direction_ids  # only the direction's features carry its label (saved under this SAE)
    # a direction made of the features that fire most on 'man': they must show up labelled on that token
    from editlab.models.saedit.tokens import word_positions

    encoded = prompt_tokens(setup["tiny"].clip, PROMPT)
    man = word_positions(setup["tiny"].clip, encoded, "man")[0]
    codes = setup["sae"].sae.encode(encoded.embeddings[0, [man]].float())[0]
    top = codes.topk(2).indices
    vec = torch.zeros_like(codes)
    vec[top] = 1.0
    own = nodes.LoadedDirection(vec, top, vec[top], [], "man_features.safetensors")
    _, text = nodes.EditLabSAEFeatures.execute(clip=setup["tiny"].clip, sae=setup["sae"], prompt=PROMPT, part="auto",
                                               top_n=4, direction=own).result
    row, = [r for r in json.loads(text)["tokens"] if r["position"] == man]
    shown = {f["id"]: f["labels"] for f in row["features"]}
    assert all("man_features" in shown[int(i)] for i in top), shown
    assert image.ndim == 4 and image.shape[0] == 1 and image.shape[-1] == 3 and 0 <= image.min() <= image.max() <= 1
    assert image.shape[1] >= 40 + 14 * len(positions)


def test_the_sae_stores_its_resolved_part_and_is_refused_on_the_other(nodes, setup):
    from editlab.nodes.common import EditLabInputError

    # trained with part "auto": the tiny Flux conditions on T5, the tiny SD3 (built without T5) on CLIP
    resolved = "t5" if setup["arch"] == "flux" else "clip"
    assert setup["sae"].part == resolved
    loaded, = nodes.EditLabSAELoader.execute(sae_name=f"tiny_{setup['arch']}.safetensors").result
    assert loaded.part == resolved
    other = nodes.LoadedSAE(setup["sae"].sae, "other_part.safetensors", "clip" if resolved == "t5" else "t5")
    with pytest.raises(EditLabInputError, match=f"input 'part': expected the SAE's part \\({other.part}\\)"):
        nodes.EditLabSAESlider.execute(conditioning=setup["cond"], clip=setup["tiny"].clip, sae=other,
                                       direction=setup["direction"], prompt=PROMPT, word="man", strength=0.5,
                                       schedule="exponential", part=resolved)
    with pytest.raises(EditLabInputError, match=f"input 'part': expected the SAE's part \\({other.part}\\)"):
        nodes.EditLabSAEFeatures.execute(clip=setup["tiny"].clip, sae=other, prompt=PROMPT, part=resolved, top_n=4)
