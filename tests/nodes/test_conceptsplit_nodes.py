"""ConceptSplit nodes on the tiny SD1.5: ToVA equals changing the bound tokens' value vectors at the projection (every
other token's value bit-identical), adapters never interfere, strength 0 runs the patch and equals the base model,
bf16 / fp8 weight storage, and bad input named."""
import pytest
import torch

PROMPT = "a photo of a dog and a cat on a beach"


pytestmark = pytest.mark.usefixtures("server_mode")  # nodes run as the server runs them


@pytest.fixture(scope="module")
def nodes(comfy_host, tmp_path_factory):
    import folder_paths

    from editlab.nodes import conceptsplit

    folder = tmp_path_factory.mktemp("tova")
    folder_paths.folder_names_and_paths[conceptsplit.TOVA_FOLDER] = ([str(folder)], {".safetensors"})
    conceptsplit.tova_dir = folder
    return conceptsplit


def _tiny(dtype="fp32", arch="sd15"):
    from editlab.models.tiny import build_tiny_models

    with torch.inference_mode():
        return build_tiny_models(arch, 0, dtype)


@pytest.fixture(scope="module")
def sd15(comfy_host):
    return _tiny()


def _layers(models):
    from editlab.models.conceptsplit.patch import named_cross_attention_layers

    return named_cross_attention_layers(models.model.model.diffusion_model)


def make_adapter(token, layers, seed, family="sd15", width=None, scale=0.5):
    """A ToVA adapter with a non-zero up (as after training)."""
    from editlab.models.conceptsplit.tova import ValueLoRA

    with torch.inference_mode(False):
        width = width or next(iter(layers.values())).to_v.weight.shape[1]
        a = ValueLoRA(token, family, 4, width, {n: attn.to_v.weight.shape[0] for n, attn in layers.items()}, seed)
        with torch.no_grad():
            for p in a.up:
                p.normal_(generator=torch.Generator().manual_seed(seed + 1)).mul_(scale)
    return a.eval().requires_grad_(False)


def saved_adapter(nodes, adapter, name):
    from editlab.models.conceptsplit.tova import save_tova

    save_tova(adapter, nodes.tova_dir / f"{name}.safetensors")
    return nodes.EditLabToVALoader.execute(adapter_name=f"{name}.safetensors").result[0]


@pytest.fixture(scope="module")
def adapters(nodes, sd15):
    layers = _layers(sd15)
    return {"dog": saved_adapter(nodes, make_adapter("dog", layers, 1), "dog"),
            "cat": saved_adapter(nodes, make_adapter("cat", layers, 2), "cat")}


def apply(nodes, models, strength=1.0, prompt=PROMPT, **adapters):
    return nodes.EditLabToVAApply.execute(model=models.model, clip=models.clip, prompt=prompt, strength=strength,
                                          **adapters).result[0]


def _conds(models, prompt=PROMPT):
    clip = models.clip
    return (clip.encode_from_tokens_scheduled(clip.tokenize(prompt)),
            clip.encode_from_tokens_scheduled(clip.tokenize("")))


def _sample(model, models, steps=2, seed=3):
    import comfy.sample

    latent = torch.zeros(1, 4, 8, 8)
    return comfy.sample.sample(model, comfy.sample.prepare_noise(latent, seed), steps, 3.0, "euler", "simple",
                               *_conds(models), latent, disable_pbar=True)


def _on_layers(models, context, *adapters):
    """``context`` and the adapters on the device of the model's layers (the GPU, after a sampling there)."""
    device = next(iter(_layers(models).values())).to_v.weight.device
    for a in adapters:
        a.adapter.to(device)
    return context.to(device)


def _patch_of(model):
    return model.model_options["transformer_options"]["patches"]["attn2_output_patch"][-1].owner


def _positions(models, word):
    from editlab.models.saedit.tokens import prompt_tokens, word_positions

    return word_positions(models.clip, prompt_tokens(models.clip, PROMPT), word)


def test_loader_reads_the_token_and_family(nodes, sd15, adapters):
    a = adapters["dog"].adapter
    assert (a.token, a.family, a.rank, a.context_dim) == ("dog", "sd15", 4, 32)
    assert a.layer_names == list(_layers(sd15)) and len(a.layer_names) == 7


def test_values_change_only_at_the_bound_tokens_checked_at_the_projection(nodes, sd15, adapters):
    """A reference model that replaces the cross-attention (attn2 replace patch: it receives the host's own
    projections) and moves the bound rows of the projected values: its output equals the ToVA model's, and every
    other token's value vector there is bit-identical to the base projection."""
    from editlab.models.conceptsplit.tova import value_delta
    from editlab.models.conceptsplit.patch import cond_rows

    tova = apply(nodes, sd15, adapter_1=adapters["dog"])
    bindings = _patch_of(tova).bindings
    dog = _positions(sd15, "dog")
    assert bindings[0].positions == dog
    stash, checked = {}, []

    def keep(n, context, value, extra):
        stash["value_in"] = value
        return n, context, value

    def replace(q, k, v, extra):
        name = f"{extra['block'][0]}.{extra['block'][1]}.{extra.get('block_index', 0)}"
        rows = cond_rows(extra["cond_or_uncond"], q.shape[0])
        for b in bindings:
            b.adapter.to(v.device)  # the model's device (on a GPU run; the ToVA patch does the same)
        delta = value_delta(bindings, name, stash.pop("value_in"), rows)
        moved = (v.float() + delta).to(v.dtype)
        other = [t for t in range(v.shape[1]) if t not in dog]
        assert torch.equal(moved[:, other], v[:, other])  # x + 0.0 == x: the other tokens' values, bit for bit
        assert not torch.equal(moved[rows][:, dog], v[rows][:, dog])
        checked.append(name)
        heads = extra["n_heads"]
        b, n, inner = q.shape
        split = lambda t: t.reshape(b, -1, heads, inner // heads).transpose(1, 2)
        out = torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(moved))
        return out.transpose(1, 2).reshape(b, n, inner)

    reference = sd15.model.clone()
    reference.set_model_attn2_patch(keep)
    for name, _ in _layers(sd15).items():
        block, block_id, index = name.split(".")
        reference.set_model_attn2_replace(replace, block, int(block_id), int(index))
    want, got, base = _sample(reference, sd15), _sample(tova, sd15), _sample(sd15.model, sd15)
    assert set(checked) == set(_layers(sd15))
    scale = float(base.abs().max())  # latents here reach ~200: float32 rounding of two exact routes
    assert torch.allclose(got, want, atol=1e-5 * scale, rtol=0), float((got - want).abs().max())
    assert (got - base).abs().max() > 1e-3


def _first_layer_output(model, models):
    seen = {}

    def record(out, extra):
        if extra.get("block") == ("input", 1) and "out" not in seen:
            seen["out"] = out.clone()
        return out

    m = model.clone()
    m.set_model_attn2_output_patch(record)  # after ToVA's: sees its output
    _sample(m, models, steps=1)
    return seen["out"]


def test_two_adapters_equal_each_alone_on_its_own_token(nodes, sd15, adapters):
    from editlab.models.conceptsplit.tova import adapted_value

    both = apply(nodes, sd15, adapter_1=adapters["dog"], adapter_2=adapters["cat"])
    dog_only = apply(nodes, sd15, adapter_1=adapters["dog"])
    cat_only = apply(nodes, sd15, adapter_1=adapters["cat"])
    dog, cat = _positions(sd15, "dog"), _positions(sd15, "cat")
    context = _on_layers(sd15, _conds(sd15)[0][0][0], adapters["dog"], adapters["cat"])
    for name, attn in _layers(sd15).items():
        v_both = adapted_value(attn.to_v, _patch_of(both).bindings, name, context)
        v_dog = adapted_value(attn.to_v, _patch_of(dog_only).bindings, name, context)
        v_cat = adapted_value(attn.to_v, _patch_of(cat_only).bindings, name, context)
        assert torch.allclose(v_both[:, dog], v_dog[:, dog], atol=1e-6, rtol=0)
        assert torch.allclose(v_both[:, cat], v_cat[:, cat], atol=1e-6, rtol=0)
        assert torch.equal(v_dog[:, cat], attn.to_v(context)[:, cat])
    base = _first_layer_output(sd15.model, sd15)
    d_both, d_dog, d_cat = (_first_layer_output(m, sd15) - base for m in (both, dog_only, cat_only))
    assert d_dog.abs().max() > 1e-4 and d_cat.abs().max() > 1e-4
    assert torch.allclose(d_both, d_dog + d_cat, atol=1e-6, rtol=0)


def test_strength_zero_runs_the_patch_and_equals_the_base_model(nodes, sd15):
    adapter = make_adapter("dog", _layers(sd15), 5)
    calls = []
    term = adapter.term
    adapter.term = lambda name, context: (calls.append(name), term(name, context))[1]
    zero = apply(nodes, sd15, 0.0, adapter_1=nodes.LoadedToVA(adapter, "spy"))
    assert zero is not sd15.model and _patch_of(zero).bindings[0].strength == 0.0
    assert torch.equal(_sample(zero, sd15), _sample(sd15.model, sd15))
    assert len(calls) >= len(_layers(sd15)), "the patched path must have run"
    assert "attn2_output_patch" not in sd15.model.model_options["transformer_options"].get("patches", {})


def test_composes_with_another_packs_attention_patches(nodes, sd15, adapters):
    seen = []
    other = sd15.model.clone()
    other.set_model_attn2_output_patch(lambda out, extra: (seen.append(1), out * 1.0)[1])
    both = apply(nodes, type(sd15)(**{**sd15.__dict__, "model": other}), adapter_1=adapters["dog"])
    out = _sample(both, sd15)
    assert seen and not torch.equal(out, _sample(other, sd15))
    assert len(both.model_options["transformer_options"]["patches"]["attn2_output_patch"]) == 2


@pytest.mark.parametrize("arch,dtype", [("sd15", "bf16"), ("sd15", "fp8_e4m3fn"), ("sdxl", "fp32")])
def test_half_precision_weights_and_sdxl(nodes, arch, dtype):
    models = _tiny(dtype, arch)
    layers = _layers(models)
    adapter = nodes.LoadedToVA(make_adapter("dog", layers, 1, family=arch), "dog")
    zero = apply(nodes, models, 0.0, adapter_1=adapter)
    moved = apply(nodes, models, 1.0, adapter_1=adapter)
    base = _sample(models.model, models)
    assert torch.equal(_sample(zero, models), base)
    out = _sample(moved, models)
    assert out.isfinite().all() and not torch.equal(out, base)
    from editlab.models.conceptsplit.tova import adapted_value

    context = _on_layers(models, _conds(models)[0][0][0].to(torch.float32 if dtype == "fp32" else torch.bfloat16),
                         adapter)
    dog = _positions(models, "dog")
    for name, attn in layers.items():
        v = adapted_value(attn.to_v, _patch_of(moved).bindings, name, context)
        other = [t for t in range(v.shape[1]) if t not in dog]
        assert torch.equal(v[:, other], attn.to_v(context)[:, other])


def test_bad_inputs_name_the_input(nodes, sd15, adapters):
    from editlab.nodes.common import EditLabInputError

    layers = _layers(sd15)
    with pytest.raises(EditLabInputError, match="input 'prompt'.*'dog' is not a word of the prompt"):
        apply(nodes, sd15, prompt="a photo of a cat", adapter_1=adapters["cat"], adapter_2=adapters["dog"])
    with pytest.raises(EditLabInputError, match="input 'adapter_2'.*family \\(sd15\\)"):
        apply(nodes, sd15, adapter_1=adapters["cat"],
              adapter_2=nodes.LoadedToVA(make_adapter("dog", layers, 1, family="sdxl"), "x"))
    with pytest.raises(EditLabInputError, match="input 'adapter_1'.*32-wide text context"):
        apply(nodes, sd15, adapter_1=nodes.LoadedToVA(make_adapter("dog", layers, 1, width=64), "x"))
    with pytest.raises(EditLabInputError, match="input 'adapter_2'.*own tokens"):
        apply(nodes, sd15, adapter_1=adapters["dog"], adapter_2=adapters["dog"])
    flux = _tiny(arch="flux")
    with pytest.raises(EditLabInputError, match="input 'adapter_1'.*family \\(flux\\)"):
        apply(nodes, flux, prompt="a dog", adapter_1=adapters["dog"])
    sd3 = _tiny(arch="sd3")
    with pytest.raises(EditLabInputError, match="input 'model'.*SD1.5, SD2.1, SDXL or Flux"):
        apply(nodes, sd3, prompt="a dog", adapter_1=adapters["dog"])

    from safetensors.torch import save_file

    good = {f"{n}.{p}": t for n in layers for p, t in (("down", torch.zeros(4, 32)), ("up", torch.zeros(64, 4)))}
    save_file(good, str(nodes.tova_dir / "nometa.safetensors"))
    with pytest.raises(EditLabInputError, match="input 'adapter_name': expected a ToVA file.*lacks the ToVA metadata"):
        nodes.EditLabToVALoader.execute(adapter_name="nometa.safetensors")
    meta = {"format": "editlab.tova.v1", "token": "dog", "family": "sd15", "rank": "4", "context_dim": "32",
            "layers": '["input.1.0"]'}
    save_file({"input.1.0.down": torch.zeros(4, 31), "input.1.0.up": torch.zeros(64, 4)},
              str(nodes.tova_dir / "shape.safetensors"), metadata=meta)
    with pytest.raises(EditLabInputError, match="input 'adapter_name': expected a ToVA file.*has down \\(4, 31\\)"):
        nodes.EditLabToVALoader.execute(adapter_name="shape.safetensors")
    with pytest.raises(EditLabInputError, match="input 'adapter_name': expected (one of|a file in)"):
        nodes.EditLabToVALoader.execute(adapter_name="missing.safetensors")


@pytest.fixture
def concept_folder(tmp_path):
    import folder_paths
    from PIL import Image
    from skimage import data

    folder = tmp_path / "input" / "cat"
    folder.mkdir(parents=True)
    chelsea = Image.fromarray(data.chelsea())
    chelsea.save(folder / "a.png")
    chelsea.transpose(Image.FLIP_LEFT_RIGHT).save(folder / "b.png")
    (folder / "notes.png").write_bytes(b"not an image")
    old = folder_paths.get_input_directory()
    folder_paths.set_input_directory(str(tmp_path / "input"))
    yield "cat"
    folder_paths.set_input_directory(old)


def _train(nodes, models, folder, name, steps=30, **kw):
    args = dict(model=models.model, clip=models.clip, vae=models.vae, folder=folder, prompt="a photo of a cat",
                word="cat", resolution=64, rank=4, steps=steps, lr=5e-3, batch_size=2, seed=0, name=name)
    return nodes.EditLabToVATrain.execute(**{**args, **kw}).result


def test_training_lowers_the_loss_changes_only_the_lora_and_reads_back(nodes, concept_folder):
    import json

    models = _tiny()  # weights made under inference mode, as the stock loaders make them
    params = {k: v.clone() for k, v in models.model.model.state_dict().items()}
    flags = {k: (p.requires_grad, p.is_inference()) for k, p in models.model.model.named_parameters()}
    before = _sample(models.model, models)
    adapter, text = _train(nodes, models, concept_folder, "trained_cat")
    stats = json.loads(text)
    assert stats["loss_after"] < stats["loss_before"], stats
    assert stats["images"] == 2 and stats["skipped"] == ["notes.png: not a readable image (UnidentifiedImageError)"]
    # only the value LoRA trained: every weight of the shared MODEL bit-identical, flags and tensor kinds as before
    after = models.model.model.state_dict()
    assert all(torch.equal(params[k], after[k].to(params[k].device)) for k in params)
    assert {k: (p.requires_grad, p.is_inference()) for k, p in models.model.model.named_parameters()} == flags
    assert torch.equal(_sample(models.model, models), before)
    net = adapter.adapter
    assert all(p.abs().sum() > 0 for p in net.up) and (net.token, net.family, net.rank) == ("cat", "sd15", 4)
    # the saved file loads back to identical outputs
    loaded, = nodes.EditLabToVALoader.execute(adapter_name="trained_cat.safetensors").result
    outs = [_sample(apply(nodes, models, prompt="a photo of a cat", adapter_1=a), models) for a in (adapter, loaded)]
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], before)
    from editlab.nodes.common import EditLabInputError

    with pytest.raises(EditLabInputError, match="input 'name'.*not used yet"):
        _train(nodes, models, concept_folder, "trained_cat", steps=1)
    _train(nodes, models, concept_folder, "trained_cat", steps=1, overwrite=True)


# The templates and where "cat" lands in each, written out here (CLIP tokens: start token at 0, one token per word).
TEMPLATES = {"a photo of a {}": [5], "a drawing of the {}": [5], "my {} on a table": [2]}


def test_training_captions_each_example_with_a_template_filled_with_the_word(nodes, concept_folder, monkeypatch):
    """The authors caption each training example with a prompt template filled with the concept's word (example e:
    image e mod N, template e mod P). Every ToVA call of the training is recorded: each row's context is the encoding
    of one of the templates above with "cat" in it (encoded here with the host's CLIP), the adapter's positions on
    that row are the word's place in that template, and all three templates are seen; with 'prompt for every image'
    (the old behaviour) every row is the prompt's encoding at the prompt's positions. The old code, one caption for
    all images, fails the first part (one context, one set of positions)."""
    import json

    from editlab.models.conceptsplit import patch as tova_patch

    models = _tiny()
    clip = models.clip
    want = {t: clip.encode_from_tokens_scheduled(clip.tokenize(t.replace("{}", "cat")))[0][0][0] for t in TEMPLATES}
    calls = []
    original = tova_patch.value_delta

    def recording(bindings, name, context, active_rows=None):
        calls.append((context.detach().float().cpu().clone(), [list(bindings[0].positions[r]) if isinstance(
            bindings[0].positions[0], list) else list(bindings[0].positions) for r in range(context.shape[0])]))
        return original(bindings, name, context, active_rows)

    monkeypatch.setattr(tova_patch, "value_delta", recording)
    _, text = _train(nodes, models, concept_folder, "templated_cat", steps=12, templates="\n".join(TEMPLATES))
    stats = json.loads(text)
    assert (stats["images"], stats["captions"], stats["examples"]) == (2, 3, 3), stats
    used = set()
    for context, positions in calls:
        for row, pos in zip(context, positions):
            match = [t for t, c in want.items() if torch.allclose(row, c.float(), atol=1e-5)]
            assert len(match) == 1, "a training context that is no template filled with the word"
            assert pos == TEMPLATES[match[0]], (match[0], pos)
            used.add(match[0])
    assert used == set(TEMPLATES), used

    calls.clear()
    _, text = _train(nodes, models, concept_folder, "one_caption_cat", steps=3, captions="prompt for every image")
    prompt = clip.encode_from_tokens_scheduled(clip.tokenize("a photo of a cat"))[0][0][0].float()
    assert calls and all(torch.allclose(row, prompt, atol=1e-5) and pos == [5]
                         for context, positions in calls for row, pos in zip(context, positions))


def test_caption_templates_by_hand():
    """The authors' pairing (example e: image e mod N, template e mod P; max(N, P) examples), per-row positions."""
    from editlab.models.conceptsplit.train import fill_templates, parse_templates, template_examples
    from editlab.models.conceptsplit.tova import RowPositions, position_mask

    images, templates = template_examples(2, 3)
    assert images.tolist() == [0, 1, 0] and templates.tolist() == [0, 1, 2]
    images, templates = template_examples(4, 3)
    assert images.tolist() == [0, 1, 2, 3] and templates.tolist() == [0, 1, 2, 0]
    assert fill_templates(parse_templates("a {} here\n\n  my {}  "), " dog ") == ["a dog here", "my dog"]
    with pytest.raises(ValueError):
        parse_templates("no placeholder")
    mask = position_mask(RowPositions([[1], [0, 3]]), 2, 4)[..., 0]
    assert mask.tolist() == [[0, 1, 0, 0], [1, 0, 0, 1]]


def test_training_bad_input_and_interruption(nodes, concept_folder, monkeypatch):
    from editlab.nodes.common import EditLabInputError

    models = _tiny()
    with pytest.raises(EditLabInputError, match="input 'word'.*'dog'.*is not a word of the prompt"):
        _train(nodes, models, concept_folder, "never", word="dog", captions="prompt for every image")
    with pytest.raises(EditLabInputError, match="input 'templates'.*needs \\{\\}"):
        _train(nodes, models, concept_folder, "never", templates="a photo of a {}\na photo")
    with pytest.raises(EditLabInputError, match="input 'folder'"):
        _train(nodes, models, "../..", "never")
    with pytest.raises(EditLabInputError, match="input 'folder'"):
        _train(nodes, models, "missing", "never")
    calls = []

    def stop():
        calls.append(1)
        if len(calls) > 5:
            raise InterruptedError("interrupted")

    monkeypatch.setattr(nodes.host, "check_interrupted", stop)
    with pytest.raises(InterruptedError):
        _train(nodes, models, concept_folder, "stopped", steps=50)
    assert not (nodes.tova_dir / "stopped.safetensors").exists()


def _maps(nodes, models, **over):
    pos, neg = _conds(models)
    args = dict(model=models.model, clip=models.clip, positive=pos, negative=neg,
                latent_image={"samples": torch.zeros(1, 4, 8, 8)}, prompt=PROMPT, words="dog, cat", seed=3, steps=3,
                cfg=3.0, sampler_name="euler", scheduler="simple", start_step=0, end_step=10000)
    return nodes.EditLabAttentionMaps.execute(**{**args, **over}).result


def test_attention_maps_node(nodes, sd15):
    import comfy.sample

    latent, images, masks = _maps(nodes, sd15)
    plain = comfy.sample.sample(sd15.model, comfy.sample.prepare_noise(torch.zeros(1, 4, 8, 8), 3), 3, 3.0, "euler",
                                "simple", *_conds(sd15), torch.zeros(1, 4, 8, 8), disable_pbar=True)
    # recording changes no sampling: the recorded blocks' attention is the kernel's (the torch reference here, in
    # float32), the host's elsewhere: the same sums in another order
    err = float((latent["samples"] - plain).abs().max() / plain.abs().max())
    assert err <= 1e-5, f"recording changed sampling by {err:.2e} of the latent's largest entry"
    assert images.shape == (2, 64, 64, 3) and masks.shape == (2, 64, 64)  # one image per word, the decoded size
    assert masks.min() >= 0 and torch.allclose(masks.amax((1, 2)), torch.ones(2), atol=1e-3)
    assert not torch.equal(masks[0], masks[1])
    late, _, late_masks = _maps(nodes, sd15, start_step=2)  # another step range, other maps
    assert torch.equal(late["samples"], plain) and not torch.equal(late_masks, masks)
    from editlab.nodes.common import EditLabInputError

    with pytest.raises(EditLabInputError, match="input 'words'.*'horse'.*not a word of the prompt"):
        _maps(nodes, sd15, words="dog, horse")
    with pytest.raises(EditLabInputError, match="input 'start_step'"):
        _maps(nodes, sd15, start_step=3)
    with pytest.raises(EditLabInputError, match="input 'words'"):
        _maps(nodes, sd15, words=" , ")


# -- Flux: the text stream's values in the double blocks ------------------------------------------------------------

FLUX_PROMPT = "a photo of a dog and a cat"


def flux_adapter(models, token, seed, width=None):
    from editlab.models.conceptsplit.flux import double_block_layers, value_width
    from editlab.models.conceptsplit.tova import ValueLoRA

    blocks = double_block_layers(models.model.model.diffusion_model)
    hidden = value_width(next(iter(blocks.values())))
    with torch.inference_mode(False):
        a = ValueLoRA(token, "flux", 4, width or hidden, {n: hidden for n in blocks}, seed)
        with torch.no_grad():
            for p in a.up:
                p.normal_(generator=torch.Generator().manual_seed(seed + 1))
    from editlab.nodes.conceptsplit import LoadedToVA

    return LoadedToVA(a.eval().requires_grad_(False), f"{token}.safetensors")


def _flux_sample(model, models, record=None, cfg=2.0):
    import comfy.sample

    if record is not None:
        model = model.clone()
        model.model_options["transformer_options"]["optimized_attention_override"] = record
    pos, neg = _conds(models, FLUX_PROMPT)
    latent = torch.zeros(1, 16, 8, 8)
    return comfy.sample.sample(model, comfy.sample.prepare_noise(latent, 7), 2, cfg, "euler", "simple", pos, neg,
                               latent, disable_pbar=True)


def _first_double_block_v(models):
    """The v the first double block's attention sees at the first model call of the base model."""
    seen = {}

    def record(func, *args, **kwargs):
        options = kwargs.get("transformer_options") or {}
        if options.get("block_type") == "double" and options.get("block_index") == 0 and "v" not in seen:
            seen["v"] = args[2].clone()
            seen["order"] = list(options["cond_or_uncond"])
        return func(*args, **kwargs)

    _flux_sample(models.model, models, record)
    return seen


@pytest.fixture(scope="module")
def flux(comfy_host):
    with torch.inference_mode():
        return _tiny(arch="flux")


def _flux_apply_recorded(nodes, models, strength, **adapters):
    """ToVA applied over a recording override (ToVA wraps the override it finds): the first double block's v as the
    attention receives it, and the sampled latent."""
    seen = {}

    def record(func, *args, **kwargs):
        options = kwargs.get("transformer_options") or {}
        if options.get("block_type") == "double" and options.get("block_index") == 0 and "v" not in seen:
            seen["v"] = args[2].clone()
        return func(*args, **kwargs)

    base = models.model.clone()
    base.model_options["transformer_options"]["optimized_attention_override"] = record
    m = nodes.EditLabToVAApply.execute(model=base, clip=models.clip, prompt=FLUX_PROMPT, strength=strength,
                                       **adapters).result[0]
    out = _flux_sample(m, models)
    return seen["v"], out


def _flux_positions(models, word):
    from editlab.models.saedit.tokens import prompt_tokens, word_positions

    return word_positions(models.clip, prompt_tokens(models.clip, FLUX_PROMPT), word)


def test_flux_text_values_change_only_at_the_bound_tokens(nodes, flux):
    dog, cat = flux_adapter(flux, "dog", 1), flux_adapter(flux, "cat", 2)
    first = _first_double_block_v(flux)
    base, order = first["v"], first["order"]
    v_dog, out = _flux_apply_recorded(nodes, flux, 1.0, adapter_1=dog)
    v_cat, _ = _flux_apply_recorded(nodes, flux, 1.0, adapter_1=cat)
    v_both, _ = _flux_apply_recorded(nodes, flux, 1.0, adapter_1=dog, adapter_2=cat)
    p_dog, p_cat = _flux_positions(flux, "dog"), _flux_positions(flux, "cat")
    rows = [i for i, c in enumerate(order) if c == 0]
    other = [t for t in range(base.shape[2]) if t not in p_dog]
    assert torch.equal(v_dog[:, :, other], base[:, :, other])  # every other token (text and image), bit for bit
    assert not torch.equal(v_dog[rows][:, :, p_dog], base[rows][:, :, p_dog])
    uncond = [i for i, c in enumerate(order) if c != 0]
    assert torch.equal(v_dog[uncond], base[uncond])
    assert torch.allclose(v_both[:, :, p_dog], v_dog[:, :, p_dog], atol=1e-6, rtol=0)
    assert torch.allclose(v_both[:, :, p_cat], v_cat[:, :, p_cat], atol=1e-6, rtol=0)
    assert uncond and not torch.equal(out, _flux_sample(flux.model, flux))


def test_flux_strength_zero_runs_the_patch_and_equals_the_base(nodes, flux):
    a = flux_adapter(flux, "dog", 1)
    calls = []
    term = a.adapter.term
    a.adapter.term = lambda name, context: (calls.append(name), term(name, context))[1]
    _, out = _flux_apply_recorded(nodes, flux, 0.0, adapter_1=a)
    assert calls and torch.equal(out, _flux_sample(flux.model, flux))


def test_flux_bad_width(nodes, flux):
    from editlab.nodes.common import EditLabInputError

    with pytest.raises(EditLabInputError, match="input 'adapter_1'.*-wide text context"):
        apply(nodes, flux, prompt=FLUX_PROMPT, adapter_1=flux_adapter(flux, "dog", 1, width=7))


@pytest.mark.parametrize("dtype", ["bf16", "fp8_e4m3fn"])
def test_flux_half_precision_weights(nodes, dtype):
    models = _tiny(dtype, "flux")
    a = flux_adapter(models, "dog", 1)
    zero = apply(nodes, models, 0.0, prompt=FLUX_PROMPT, adapter_1=a)
    moved = apply(nodes, models, 1.0, prompt=FLUX_PROMPT, adapter_1=a)
    base = _flux_sample(models.model, models)
    assert torch.equal(_flux_sample(zero, models), base)
    out = _flux_sample(moved, models)
    assert out.isfinite().all() and not torch.equal(out, base)


def test_attention_maps_node_on_flux(nodes, flux):
    import comfy.sample

    pos, neg = _conds(flux, FLUX_PROMPT)
    latent0 = torch.zeros(1, 16, 8, 8)
    latent, images, masks = nodes.EditLabAttentionMaps.execute(
        model=flux.model, clip=flux.clip, positive=pos, negative=neg, latent_image={"samples": latent0},
        prompt=FLUX_PROMPT, words="dog, cat", seed=3, steps=3, cfg=2.0, sampler_name="euler", scheduler="simple",
        start_step=0, end_step=10000).result
    plain = comfy.sample.sample(flux.model, comfy.sample.prepare_noise(latent0, 3), 3, 2.0, "euler", "simple", pos,
                                neg, latent0, disable_pbar=True)
    # recording changes no sampling: the recorded blocks' attention is the kernel's (the torch reference here, in
    # float32), the host's elsewhere: the same sums in another order
    err = float((latent["samples"] - plain).abs().max() / plain.abs().max())
    assert err <= 1e-5, f"recording changed sampling by {err:.2e} of the latent's largest entry"
    assert images.shape == (2, 64, 64, 3) and masks.shape == (2, 64, 64)
    assert torch.allclose(masks.amax((1, 2)), torch.ones(2)) and not torch.equal(masks[0], masks[1])


def test_training_on_sdxl_runs_and_leaves_the_model_unchanged(nodes, concept_folder):
    import json

    models = _tiny(arch="sdxl")
    params = {k: v.clone() for k, v in models.model.model.state_dict().items()}
    adapter, text = _train(nodes, models, concept_folder, "sdxl_cat", steps=3, rank=2)
    stats = json.loads(text)
    assert stats["steps"] == 3 and all(map(lambda v: v == v, (stats["loss_before"], stats["loss_after"])))
    assert all(torch.equal(params[k], v.to(params[k].device)) for k, v in models.model.model.state_dict().items())
    loaded, = nodes.EditLabToVALoader.execute(adapter_name="sdxl_cat.safetensors").result
    assert (loaded.adapter.family, loaded.adapter.context_dim) == ("sdxl", 64)


def test_flux_training_lowers_the_loss_changes_only_the_lora_and_reads_back(nodes, concept_folder):
    """ToVA Train on the tiny Flux: the text stream's values in the double blocks, through the same override ToVA
    Apply installs; the shared MODEL is left exactly as it was."""
    import json

    models = _tiny(arch="flux")
    params = {k: v.clone() for k, v in models.model.model.state_dict().items()}
    before = _flux_sample(models.model, models)
    adapter, text = _train(nodes, models, concept_folder, "trained_flux_cat", steps=30, lr=1e-2)
    stats = json.loads(text)
    assert stats["loss_after"] < stats["loss_before"], stats
    after = models.model.model.state_dict()
    assert all(torch.equal(params[k], after[k].to(params[k].device)) for k in params)
    assert torch.equal(_flux_sample(models.model, models), before)
    net = adapter.adapter
    assert (net.token, net.family) == ("cat", "flux") and all(p.abs().sum() > 0 for p in net.up)
    assert set(net.inner_dims()) == {f"double.{i}" for i in range(len(models.model.model.diffusion_model.double_blocks))}
    loaded, = nodes.EditLabToVALoader.execute(adapter_name="trained_flux_cat.safetensors").result
    prompt = "a photo of a cat"
    outs = []
    for a in (adapter, loaded):
        m = nodes.EditLabToVAApply.execute(model=models.model, clip=models.clip, prompt=prompt, strength=1.0,
                                           adapter_1=a).result[0]
        pos, neg = _conds(models, prompt)
        import comfy.sample

        latent = torch.zeros(1, 16, 8, 8)
        outs.append(comfy.sample.sample(m, comfy.sample.prepare_noise(latent, 7), 2, 2.0, "euler", "simple", pos,
                                        neg, latent, disable_pbar=True))
    assert torch.equal(outs[0], outs[1])
