"""Every EditLab patch composed with every other, and with the host's common patches, on the tiny SD1.5 and the tiny
SDXL (one graph with both, under CFG 3, with euler and dpmpp_2m), the same pairs on both. For each pair (A, B):
  runs     both in one graph sample without error (both samplers);
  acts     each still acts: |out(A+B) - out(B)| >= ACTS * |out(A) - out(base)| (and the same with A and B swapped;
           both samplers);
  off      A's strength 0 (its off switch) with B equals B alone: bit for bit, else within 1e-6 (and swapped; euler);
  order    where the maths says the order does not matter (two ToVA concepts, two expression adapters, an
           EditLab attention patch with the host's or another pack's additive patch), both orders within 1e-4 on one
           CFG denoiser call at sigma 1 (fp32 rounding through the random UNet: 3e-5; a whole run amplifies it to
           4e-4 after two steps from sigma 14.6; at the layer itself both orders agree to float rounding,
           test_patch_layer.py).
The EditLab patches: SAE Slider (on the CLIP tokens: it edits the positive conditioning), ToVA Apply, Apply Expression
and Reference Adapter (both modes). The host's patches: a stock-format LoRA as LoraLoader applies it, FreeU_V2, PerturbedAttentionGuidance, another pack's
additive attn2 output patch and, on ComfyUI 0.33, its ModelAttentionBackend (0.3.75 has none: n/a there).
Samplers (LODA with AFG, Attention Maps) compose with every model patch: LODA is sampled on the patched model,
Attention Maps' latent equals plain sampling of the patched model (it only records).

The table the run fills is written to out/test-artifacts/composition_matrix.md; the README carries it, and the last
test fails when the README's table and the run disagree."""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from matrix_table import assert_readme_carries

PROMPT = "a photo of a dog and a cat"
SAMPLERS = ("euler", "dpmpp_2m")
STEPS, CFG, SEED = 2, 3.0, 7
ACTS = 0.5  # a patch composed keeps at least half of what it changes alone (fixed seed, tiny model)
EXACT = 1e-6
SLIDER = 1.0  # the SAE Slider's strength at the patch's strength 1
ORDER = 1e-4  # two additive output terms in either order, one fp32 denoiser call: rounding of (o + a) + b against
# (o + b) + a, carried through the rest of the tiny random UNet, reaches 3e-5 (the layer itself: test_patch_layer)
ROOT = Path(__file__).resolve().parents[2]
ARTIFACT = ROOT / "out" / "test-artifacts" / "composition_matrix.md"

pytestmark = pytest.mark.usefixtures("server_mode")  # nodes run as the server runs them

RESULTS: dict = {}  # (family, a, b) -> {check: "pass" | "n/a" | "FAIL"}


# -- the models and patches -------------------------------------------------------------------------------------------

FAMILIES = {"SD1.5": "sd15", "SDXL": "sdxl"}  # the table's name -> the tiny model's architecture


def _ip_adapter_file(context, seed=1):
    """An expression adapter file in diffusers' documented layout (tests/expression_files.py's, whose width is the
    tiny SD1.5's 32) for a model whose text context is ``context`` wide: the tiny SDXL's is 64, over the same layers."""
    from expression_files import DIFFUSERS_CROSS_ATTENTION, FLAME, TOKENS

    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen) / shape[-1] ** 0.5
    image_proj = {"proj.weight": rand(TOKENS * context, FLAME),
                  "proj.bias": 0.1 * torch.randn(TOKENS * context, generator=gen),
                  "norm.weight": 1 + 0.1 * torch.randn(context, generator=gen),
                  "norm.bias": 0.1 * torch.randn(context, generator=gen)}
    ip = {}
    for n, (_, _, inner) in enumerate(DIFFUSERS_CROSS_ATTENTION):
        k, v = rand(inner, context), rand(inner, context)
        ip[f"{2 * n + 1}.to_k_ip.weight"], ip[f"{2 * n + 1}.to_v_ip.weight"] = k, v
    return {"image_proj": image_proj, "ip_adapter": ip}


def _build_world(family, tmp_path_factory):
    import folder_paths

    from editlab.models.conceptsplit.patch import named_cross_attention_layers
    from editlab.models.conceptsplit.tova import ValueLoRA, save_tova
    from editlab.models.expression.patch import transformer_blocks
    from editlab.models.expression.reference_lora import ReferenceLoRA, ReferenceLoRAWeights
    from editlab.models.tiny import build_tiny_models
    from editlab.nodes import conceptsplit, expression, host

    with torch.inference_mode():
        tiny = build_tiny_models(FAMILIES[family], 0)
    tova_dir = tmp_path_factory.mktemp("tova")
    folder_paths.folder_names_and_paths[conceptsplit.TOVA_FOLDER] = ([str(tova_dir)], {".safetensors"})
    adapter_dir = tmp_path_factory.mktemp("expression_adapters")
    folder_paths.folder_names_and_paths[expression.ADAPTER_FOLDER] = ([str(adapter_dir)], {".bin"})

    layers = named_cross_attention_layers(tiny.model.model.diffusion_model)
    context = next(iter(layers.values())).to_v.weight.shape[1]  # SD1.5 tiny: 32, SDXL tiny: 64
    tova = {}
    for seed, word in ((1, "dog"), (2, "cat")):
        with torch.inference_mode(False):
            a = ValueLoRA(word, host.model_family(tiny.model), 4, context,
                          {n: attn.to_v.weight.shape[0] for n, attn in layers.items()}, seed)
            with torch.no_grad():
                for p in a.up:
                    p.normal_(generator=torch.Generator().manual_seed(seed + 1)).mul_(0.5)
        save_tova(a.eval().requires_grad_(False), tova_dir / f"{word}.safetensors")
        tova[word] = conceptsplit.EditLabToVALoader.execute(adapter_name=f"{word}.safetensors").result[0]

    if family == "SD1.5":
        from expression_files import diffusers_ip_adapter  # the authors' file layout, written independently

        data, _ = diffusers_ip_adapter()
    else:
        data = _ip_adapter_file(context)
    torch.save(data, adapter_dir / "exp_adapter.bin")
    exp_adapter = expression.EditLabExpressionAdapterLoader.execute(adapter_name="exp_adapter.bin").result[0]
    flame = lambda jaw: expression.EditLabFLAMEExpression.execute(
        expression="1.0, -0.5, 2", eyelid_left=0.2, eyelid_right=0.2, jaw_open=jaw, jaw_yaw=0.0,
        jaw_roll=0.0).result[0]

    with torch.inference_mode(False):
        self_layers = [(key, tb.attn1) for key, tb in transformer_blocks(tiny.model.model.diffusion_model)]
        ref_lora = ReferenceLoRA(self_layers, 2, seed=3)
        with torch.no_grad():
            for m in ref_lora.lora_layers():
                for p in m.lora_B.parameters():
                    p.normal_(generator=torch.Generator().manual_seed(4)).mul_(0.3)
        ref_weights = ReferenceLoRAWeights(ref_lora.state(), 2, 2.0, "matrix")
    reference = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(5))

    clip = tiny.clip
    conds = (clip.encode_from_tokens_scheduled(clip.tokenize(PROMPT)),
             clip.encode_from_tokens_scheduled(clip.tokenize("")))
    from editlab.models.saedit.sae import SAEConfig, SparseAutoencoder
    from editlab.nodes import saedit

    with torch.inference_mode(False):  # an SAE over the CLIP tokens (SD1.5: CLIP-L; SDXL: CLIP-L and -G together)
        sae = SparseAutoencoder(SAEConfig(act_size=int(conds[0][0][0].shape[-1]), dict_size=64, top_k=4))
        with torch.no_grad():
            for p in sae.parameters():
                p.normal_(generator=torch.Generator().manual_seed(5)).mul_(0.5)
            # unit-norm decoder rows, as the authors' SAE keeps them: a slider step of strength s moves the word's
            # token by about s (random rows of this width would make it several times the token embeddings' size,
            # and every other patch would be measured against a different network)
            sae.W_dec.div_(sae.W_dec.norm(dim=-1, keepdim=True))
    direction = torch.zeros(64)
    direction[[3, 17, 40]] = torch.tensor([1.0, -0.7, 0.5])
    return dict(tiny=tiny, conds=conds, tova=tova, exp_adapter=exp_adapter, flame=flame, ref_weights=ref_weights,
                reference=reference, conceptsplit=conceptsplit, expression=expression, saedit=saedit,
                sae=saedit.LoadedSAE(sae, "tiny_clip.safetensors", "clip"),
                direction=saedit.LoadedDirection(direction, None, None, [], "clip_direction.safetensors"))


@pytest.fixture(scope="module")
def worlds(comfy_host, tmp_path_factory):
    """family -> its tiny model, conditioning and EditLab adapters, built on first use (a -k selection of one family
    builds only that one)."""
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = _build_world(family, tmp_path_factory)
        return cache[family]
    return get


def _host_lora(model, strength):
    """A LoRA as the stock LoraLoader applies it (comfy.sd.load_lora_for_models), in the generic key layout, on
    every cross-attention value projection."""
    import comfy.sd

    lora = {}
    g = torch.Generator().manual_seed(11)
    for k, w in model.model.state_dict().items():
        if k.endswith("attn2.to_v.weight") or k.endswith("attn1.to_q.weight"):
            base = k[:-len(".weight")]
            lora[f"{base}.lora_up.weight"] = torch.randn(w.shape[0], 2, generator=g) * 0.3
            lora[f"{base}.lora_down.weight"] = torch.randn(2, w.shape[1], generator=g) * 0.3
    patched, _ = comfy.sd.load_lora_for_models(model, None, lora, strength, 0)
    return patched


def _freeu(model, strength):
    """FreeU_V2 (b 1.3, s 0.7 at strength 1); it has no off value (b = s = 1 still runs its Fourier filter): off is
    not applying it."""
    from comfy_extras.nodes_freelunch import FreeU_V2

    if strength == 0:
        return model
    b = 1.0 + 0.3 * strength
    s = 1.0 - 0.3 * strength
    if hasattr(FreeU_V2, "patch"):  # 0.3.75: a V1 node
        return FreeU_V2().patch(model, b, b, s, s)[0]
    return FreeU_V2.execute(model, b, b, s, s).result[0]


def _pag(model, strength):
    from comfy_extras.nodes_pag import PerturbedAttentionGuidance

    if hasattr(PerturbedAttentionGuidance, "patch"):
        return PerturbedAttentionGuidance().patch(model, strength)[0]
    return PerturbedAttentionGuidance.execute(model, strength).result[0]


def _pack_attn2(model, strength):
    """Another pack's list-style attn2 output patch that adds to the output."""
    m = model.clone()

    def add(out, extra):  # a term of its own (a fixed pattern per channel), whatever the output holds
        return out + strength * 0.5 * torch.sin(torch.arange(out.shape[-1], device=out.device, dtype=out.dtype))

    m.set_model_attn2_output_patch(add)
    return m


def _has_backend_node() -> bool:
    import comfy_extras.nodes_model_advanced as adv

    return hasattr(adv, "ModelAttentionBackend")


def _backend(model, strength):
    """ComfyUI 0.33's ModelAttentionBackend (PyTorch attention), which serves every attention call of the model
    through the host's override slot; off is not applying it. 0.3.75 has no such node: its rows are n/a there."""
    from comfy_extras.nodes_model_advanced import ModelAttentionBackend

    if strength == 0:
        return model
    node = ModelAttentionBackend
    return (node().patch(model, "pytorch attention") if hasattr(node, "patch")
            else node.execute(model, "pytorch attention").result)[0]


def _tova(w, word):
    def apply(model, strength):
        return w["conceptsplit"].EditLabToVAApply.execute(model=model, clip=w["tiny"].clip, prompt=PROMPT,
                                                          strength=strength,
                                                          adapter_1=w["tova"][word]).result[0]
    return apply


def _expression(w, jaw):
    def apply(model, strength):
        return w["expression"].EditLabApplyExpression.execute(model=model, adapter=w["exp_adapter"],
                                                              blendshapes=w["flame"](jaw), strength=strength,
                                                              start_percent=0.0, end_percent=1.0).result[0]
    return apply


def _reference(w, trained):
    def apply(model, strength):
        node = w["expression"].EditLabReferenceAdapter
        if trained:
            return node.execute(model=model, vae=w["tiny"].vae, reference=w["reference"], strength=strength,
                                mode="trained LoRA", lora=w["ref_weights"], lora_scale=0.8).result[0]
        return node.execute(model=model, vae=w["tiny"].vae, reference=w["reference"], strength=strength).result[0]
    return apply


class Graph(NamedTuple):
    """What a patch changes: the MODEL, and the positive conditioning (None: the world's, as encoded)."""
    model: object
    positive: object = None


def _on_model(apply):
    """A model patch as a graph patch: the MODEL changed, the conditioning passed on."""
    def on_graph(g, strength):
        g = g if isinstance(g, Graph) else Graph(g)
        return Graph(apply(g.model, strength), g.positive)
    return on_graph


def _slider(w):
    """SAE Slider on the positive (CLIP tokens, the word "dog", constant strength 4 at strength 1): a conditioning
    edit, the MODEL passed on."""
    def on_graph(g, strength):
        g = g if isinstance(g, Graph) else Graph(g)
        positive = w["saedit"].EditLabSAESlider.execute(
            conditioning=g.positive if g.positive is not None else w["conds"][0], clip=w["tiny"].clip, sae=w["sae"],
            direction=w["direction"], prompt=PROMPT, word="dog", strength=SLIDER * strength, schedule="constant",
            part="clip", timing="undelayed").result[0]
        return Graph(g.model, positive)
    return on_graph


def model_patches(w) -> dict:
    """name -> patch(graph or MODEL, strength) -> Graph."""
    on_model = {"ToVA Apply (dog)": _tova(w, "dog"), "ToVA Apply (cat)": _tova(w, "cat"),
                "Apply Expression": _expression(w, 0.3), "Apply Expression (2nd)": _expression(w, 0.9),
                "Reference Adapter (training-free)": _reference(w, False),
                "Reference Adapter (trained LoRA)": _reference(w, True),
                "host LoraLoader": lambda m, s: _host_lora(m, s), "host FreeU_V2": _freeu,
                "host PerturbedAttentionGuidance": _pag, "pack attn2 output patch": _pack_attn2,
                **({"host ModelAttentionBackend": _backend} if _has_backend_node() else {})}
    return {"SAE Slider": _slider(w), **{name: _on_model(apply) for name, apply in on_model.items()}}


def _parts(w, g):
    """(model, positive, negative) of a graph (or of a bare MODEL, with the world's conditioning)."""
    g = g if isinstance(g, Graph) else Graph(g)
    return g.model, g.positive if g.positive is not None else w["conds"][0], w["conds"][1]


# Pairs whose composition is order-independent by the maths: EditLab terms added at an attention layer's output
# (linear in the values, or a separate attention) commute with each other and with another additive output patch.
ADDITIVE = {"ToVA Apply (dog)", "ToVA Apply (cat)", "Apply Expression", "Apply Expression (2nd)"}


def _sample(w, graph, sampler_name, sampler=None):
    import comfy.sample
    import comfy.samplers

    model, positive, negative = _parts(w, graph)
    latent = torch.zeros(1, 4, 8, 8)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", STEPS)
    sampler = sampler or comfy.samplers.sampler_object(sampler_name)
    return comfy.sample.sample_custom(model, comfy.sample.prepare_noise(latent, SEED), CFG, sampler, sigmas,
                                      positive, negative, latent, disable_pbar=True, seed=SEED)


def _one_call(w, graph):
    """One CFG denoiser call at sigma 1 (euler from sigma 1 to 0 returns the denoised latent): where an order check
    looks, so float rounding is not amplified by a whole sampling run."""
    import comfy.sample
    import comfy.samplers

    model, positive, negative = _parts(w, graph)
    latent = torch.zeros(1, 4, 8, 8)
    return comfy.sample.sample_custom(model, comfy.sample.prepare_noise(latent, SEED), CFG,
                                      comfy.samplers.sampler_object("euler"), torch.tensor([1.0, 0.0]), positive,
                                      negative, latent, disable_pbar=True, seed=SEED)


def _same(a, b) -> bool:
    return torch.equal(a, b) or float((a - b).abs().max()) <= EXACT


def _record(key, check, ok, na=False):
    RESULTS.setdefault(key, {})[check] = "n/a" if na else ("pass" if ok else "FAIL")


PATCH_NAMES = [
    "SAE Slider", "ToVA Apply (dog)", "Apply Expression", "Reference Adapter (training-free)", "Reference Adapter (trained LoRA)",
    "host LoraLoader", "host FreeU_V2", "host PerturbedAttentionGuidance", "pack attn2 output patch",
    "host ModelAttentionBackend"]
EDITLAB = [n for n in PATCH_NAMES if not n.startswith(("host", "pack"))]
# every EditLab patch with every other and with each host / pack patch, and two of one kind (two ToVA Apply nodes on
# two concepts, two Apply Expression nodes)
PAIRS = [(a, b) for a, b in itertools.combinations(PATCH_NAMES, 2) if a in EDITLAB] + [
    ("ToVA Apply (dog)", "ToVA Apply (cat)"), ("Apply Expression", "Apply Expression (2nd)")]
# The tiny SDXL takes every patch too (ToVA Apply, Apply Expression and both Reference Adapter modes take its 64-wide
# context and pooled ADM input; the host's FreeU_V2 reads its 1280/640-channel skips through the tiny UNet's own
# widths, PAG its middle block's self-attention): the same pairs and samplers as SD1.5.
PAIRS_BY_FAMILY = {"SD1.5": PAIRS, "SDXL": PAIRS}
SAMPLED_ON = {"SD1.5": PATCH_NAMES, "SDXL": PATCH_NAMES}  # the patches LODA + AFG and Attention Maps sample
FULL_CHECKS = SAMPLERS[:1]  # off and order with euler; runs and acts with every sampler
MODEL_PAIRS = [(f, a, b) for f in FAMILIES for a, b in PAIRS_BY_FAMILY[f]]
SAMPLED = [(f, b) for f in FAMILIES for b in SAMPLED_ON[f]]


def _alone(world):
    """out(base) and out(each patch alone) per sampler."""
    base = world["tiny"].model
    patches = model_patches(world)
    table = {}
    with torch.inference_mode():  # as the server runs nodes
        for s in SAMPLERS:
            table[(s, None)] = _sample(world, base, s)
            for name, apply in patches.items():
                table[(s, name)] = _sample(world, apply(base, 1.0), s)
    return table


@pytest.fixture(scope="module")
def alones(worlds):
    """family -> its table of out(base) and out(each patch alone), computed once per family."""
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = _alone(worlds(family))
        return cache[family]
    return get


@pytest.mark.parametrize("family,a,b", MODEL_PAIRS, ids=[f"{f}:{a}+{b}" for f, a, b in MODEL_PAIRS])
def test_model_patch_pair(worlds, alones, family, a, b):
    key = (family, a, b)
    if "host ModelAttentionBackend" in (a, b) and not _has_backend_node():
        for c in CHECKS:
            _record(key, c, True, na=True)
        pytest.skip("ComfyUI 0.3.75 has no attention-backend node (ModelAttentionBackend is 0.33's)")
    world, alone = worlds(family), alones(family)
    patches = model_patches(world)
    base = world["tiny"].model
    failures = []
    for s in SAMPLERS:
        ab = _sample(world, patches[b](patches[a](base, 1.0), 1.0), s)
        _record(key, "runs", bool(torch.isfinite(ab).all()))
        for this, other in ((a, b), (b, a)):
            alone_change = float((alone[(s, this)] - alone[(s, None)]).norm())
            kept = float((ab - alone[(s, other)]).norm())
            ok = alone_change > 0 and kept >= ACTS * alone_change
            _record(key, "acts", ok and RESULTS[key].get("acts") != "FAIL")
            if not ok:
                failures.append(f"{s}: {this} changes {alone_change:.3g} alone, {kept:.3g} composed with {other}")
        if s not in FULL_CHECKS:
            continue
        for off, on in ((a, b), (b, a)):
            if off not in EDITLAB and off not in ADDITIVE:
                continue  # the host's patches: their off switch is not applying them
            first, second = (off, on) if off == a else (on, off)
            m = patches[second](patches[first](base, 0.0 if first == off else 1.0), 0.0 if second == off else 1.0)
            ok = _same(_sample(world, m, s), alone[(s, on)])
            _record(key, "off", ok and RESULTS[key].get("off") != "FAIL")
            if not ok:
                failures.append(f"{s}: {off} at strength 0 with {on} is not {on} alone")
        if a in ADDITIVE and (b in ADDITIVE or b in ("pack attn2 output patch", "host LoraLoader")):
            ab1 = _one_call(world, patches[b](patches[a](base, 1.0), 1.0))
            ba = _one_call(world, patches[a](patches[b](base, 1.0), 1.0))
            ok = float((ab1 - ba).abs().max()) <= ORDER
            _record(key, "order", ok and RESULTS[key].get("order") != "FAIL")
            if not ok:
                failures.append(f"{s}: order changes one denoiser call by {float((ab1 - ba).abs().max()):.3g}")
        else:
            _record(key, "order", True, na=True)
    assert not failures, failures


def _loda(world, sampler_name, afg=2.0, steps=1):
    import comfy.samplers

    return world["conceptsplit"].EditLabLODA.execute(
        sampler=comfy.samplers.sampler_object(sampler_name), clip=world["tiny"].clip, prompt=PROMPT,
        concepts="dog, cat", loda_steps=steps, step_size=20.0, threshold=3.0, afg_strength=afg).result[0]


@pytest.mark.parametrize("family,b", SAMPLED, ids=[f"{f}:{b}" for f, b in SAMPLED])
def test_loda_with_afg_on_a_patched_model(worlds, alones, family, b):
    """LODA (1 step) + AFG sampled on a model carrying patch B: LODA still acts (differs from B alone by at least
    half of what it changes on the base model), B still acts, and LODA at 0 steps is B alone bit for bit. On SDXL
    LODA reads the down blocks' maps only (the authors' SDXL layers, models/conceptsplit/loda.py)."""
    if b == "host ModelAttentionBackend" and not _has_backend_node():
        for c in CHECKS:
            _record((family, "LODA + AFG (sampler)", b), c, True, na=True)
        pytest.skip("ComfyUI 0.3.75 has no attention-backend node")
    world, alone = worlds(family), alones(family)
    patches = model_patches(world)
    base = world["tiny"].model
    key = (family, "LODA + AFG (sampler)", b)
    failures = []
    for s in SAMPLERS:
        loda_base = _sample(world, base, s, _loda(world, s))
        patched = patches[b](base, 1.0)
        both = _sample(world, patched, s, _loda(world, s))
        _record(key, "runs", bool(torch.isfinite(both).all()))
        loda_change = float((loda_base - alone[(s, None)]).norm())
        kept = float((both - alone[(s, b)]).norm())
        b_change = float((alone[(s, b)] - alone[(s, None)]).norm())
        b_kept = float((both - loda_base).norm())
        ok = loda_change > 0 and kept >= ACTS * loda_change and b_kept >= ACTS * b_change
        _record(key, "acts", ok and RESULTS[key].get("acts") != "FAIL")
        if not ok:
            failures.append(f"{s}: LODA {loda_change:.3g} alone / {kept:.3g} with {b}; {b} {b_change:.3g} / "
                            f"{b_kept:.3g}")
        if s in FULL_CHECKS:
            off = _sample(world, patched, s, _loda(world, s, afg=0.0, steps=0))
            ok = torch.equal(off, alone[(s, b)])
            _record(key, "off", ok and RESULTS[key].get("off") != "FAIL")
            if not ok:
                failures.append(f"{s}: LODA at 0 steps with {b} is not {b} alone")
        _record(key, "order", True, na=True)
    assert not failures, failures


@pytest.mark.parametrize("family,b", SAMPLED, ids=[f"{f}:{b}" for f, b in SAMPLED])
def test_attention_maps_sampling_a_patched_model(worlds, alones, family, b):
    """Attention Maps samples as KSampler does and only records: on a model carrying patch B its latent is plain
    sampling of that model (so B acts exactly as alone), and it records maps."""
    if b == "host ModelAttentionBackend" and not _has_backend_node():
        for c in CHECKS:
            _record((family, "Attention Maps (sampler)", b), c, True, na=True)
        pytest.skip("ComfyUI 0.3.75 has no attention-backend node")
    world, alone = worlds(family), alones(family)
    patches = model_patches(world)
    key = (family, "Attention Maps (sampler)", b)
    node = world["conceptsplit"].EditLabAttentionMaps
    failures = []
    for s in SAMPLERS:
        model, positive, negative = _parts(world, patches[b](world["tiny"].model, 1.0))
        latent = {"samples": torch.zeros(1, 4, 8, 8)}
        out = node.execute(model=model, clip=world["tiny"].clip, positive=positive,
                           negative=negative, latent_image=latent, prompt=PROMPT, words="dog, cat",
                           seed=SEED, steps=STEPS, cfg=CFG, sampler_name=s, scheduler="simple", start_step=0,
                           end_step=10000)
        got, heat = out.result[0]["samples"], out.result[1]
        _record(key, "runs", bool(torch.isfinite(got).all()))
        ok = _same(got, alone[(s, b)]) and float(heat.max()) > 0
        _record(key, "acts", ok and RESULTS[key].get("acts") != "FAIL")
        _record(key, "off", True, na=True)
        _record(key, "order", True, na=True)
        if not ok:
            failures.append(f"{s}: with {b} the latent moved by {float((got - alone[(s, b)]).abs().max()):.3g}")
    assert not failures, failures


CHECKS = ("runs", "acts", "off", "order")


def table() -> str:
    lines = ["| family | patch A | patch B | " + " | ".join(CHECKS) + " |", "|---|---|---|" + "---|" * len(CHECKS)]
    for (family, a, b), cells in sorted(RESULTS.items()):
        lines.append(f"| {family} | {a} | {b} | " + " | ".join(cells.get(c, "not run") for c in CHECKS) + " |")
    return "\n".join(lines)


def test_the_readme_carries_this_runs_table():
    """Last: the table this run filled (written to out/test-artifacts/, a part of it too) is the README's, row for
    row. The README shows the ComfyUI 0.33 run; on 0.3.75 the ModelAttentionBackend rows are n/a (no such node)."""
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    ARTIFACT.write_text(table() + "\n", encoding="utf-8")
    if len(RESULTS) < len(MODEL_PAIRS) + 2 * len(SAMPLED):
        pytest.skip("only part of the matrix ran (a -k selection): nothing to compare")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert_readme_carries(readme, "composition-matrix", table(), ARTIFACT)
