"""Every EditLab patch for the DiT families composed with every other, and with the host's common patches, on the
tiny models (one graph with both; the model of tests/nodes/test_composition_matrix.py, which covers SD1.5).

Families, each sampled the way it runs:
  Flux                the tiny Flux (guidance-distilled, ``guidance_embed``): cfg 1 with FluxGuidance 3.5 on the
                      conditioning, as Flux dev workflows run (KSampler cfg 1: the host evaluates the positive only).
  Kontext-style Flux  the same tiny Flux with a reference latent on the positive (Reference Tokens, the host's
                      ReferenceLatent mechanism), cfg 1 with FluxGuidance 2.5 as Kontext workflows run.
  Flux Fill           the tiny Flux Fill through the host's InpaintModelConditioning (a centre mask), cfg 1 with
                      FluxGuidance 30 as Fill workflows run; noise mask as KSampler applies it.
  Wan I2V             the tiny Wan 2.1 I2V through ChronoEdit Conditioning and the ChronoEdit sampler, under real
                      CFG 2 (Wan is not distilled).
For each pair (A, B) of patches that apply to a family, with euler and dpmpp_2m, each as the family runs (cfg 1) and
under real CFG 2 with an empty negative (the host then batches the conditional and unconditional rows in one call):
  runs     the graph with both samples without error, finite;
  acts     |out(A+B) - out(B)| >= ACTS * |out(A) - out(base)|, and swapped, in each of the four runs;
  off      A at strength 0 (its off switch) with B equals B alone, bit for bit or within 1e-6 (euler; a host patch's
           off is not applying it, so only EditLab patches are switched off);
  order    where the maths says the order of the nodes does not matter (two ToVA concepts on other tokens or on
           one word; ToVA or Layered Adapters with a weight patch: an attention override commutes with changed
           weights), both orders equal within 1e-6 (euler); two ToVA terms added in either order within 1e-4 (fp32
           rounding of the sum through the run: 3e-6).
Samplers (LODA with AFG, Attention Maps) are sampled on each patched model; Attention Maps only records, so its
latent must equal plain sampling of that model, up to the rounding of the recorded blocks' attention, which the
token-map kernel computes (the maps come out of that pass): within ``RECORDED`` of the latent's largest entry.
A pair that cannot compose is refused with an error naming both nodes (tested here, listed in the README).

The table the run fills is written to out/test-artifacts/composition_matrix_dit.md; the README carries it between
<!-- composition-matrix-dit --> markers, and the last test fails when they disagree."""
from __future__ import annotations

import itertools
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from matrix_table import assert_readme_carries

PROMPT = "a photo of a dog and a cat"
SAMPLERS = ("euler", "dpmpp_2m")
# the Flux families as they run (cfg 1, the positive alone), then under real CFG 2 with an empty negative: the host
# batches the conditional and unconditional rows into one call, where each patch must act on its rows only
FLUX_RUNS = SAMPLERS + tuple(f"{s}@cfg2" for s in SAMPLERS)
STEPS, SEED = 2, 7
ACTS = 0.5
EXACT = 1e-6
RECORDED = 1e-5  # Attention Maps: the recorded blocks' attention in another order of the same sums (measured 4e-7)
ORDER = 1e-4  # two ToVA terms added in either order: (v + a) + b against (v + b) + a in fp32, carried through two
# steps of the tiny Flux, reaches 3e-6 (reading the already-moved values instead, the old way, gave 5e-2)
ROOT = Path(__file__).resolve().parents[2]
ARTIFACT = ROOT / "out" / "test-artifacts" / "composition_matrix_dit.md"
GUIDANCE = {"Flux": 3.5, "Kontext-style Flux": 2.5, "Flux Fill": 30.0}

pytestmark = pytest.mark.usefixtures("server_mode")  # nodes run as the server runs them

RESULTS: dict = {}  # (family, a, b) -> {check: "pass" | "n/a" | "FAIL"}


def _has_backend_node() -> bool:
    import comfy_extras.nodes_model_advanced as adv

    return hasattr(adv, "ModelAttentionBackend")


# -- the models and what the patches need ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def world(comfy_host, tmp_path_factory):
    import folder_paths

    from editlab.models.conceptsplit.flux import double_block_layers, value_width
    from editlab.models.conceptsplit.tova import ValueLoRA
    from editlab.models.saedit.sae import SAEConfig, SparseAutoencoder
    from editlab.models.tiny import build_tiny_models
    from editlab.nodes import conceptsplit, layered, saedit, tryon

    with torch.inference_mode():
        flux = build_tiny_models("flux", 0)
        fill = build_tiny_models("flux_fill", 0)

    def tova(models, word, seed):
        blocks = double_block_layers(models.model.model.diffusion_model)
        hidden = value_width(next(iter(blocks.values())))
        with torch.inference_mode(False):
            a = ValueLoRA(word, "flux", 4, hidden, {n: hidden for n in blocks}, seed)
            with torch.no_grad():
                for p in a.up:
                    p.normal_(generator=torch.Generator().manual_seed(seed + 1))
        return conceptsplit.LoadedToVA(a.eval().requires_grad_(False), f"{word}.safetensors")

    folder = tmp_path_factory.mktemp("loras")
    folder_paths.folder_names_and_paths["loras"] = ([str(folder)], set(folder_paths.supported_pt_extensions))
    layered.lora_dir = folder
    from safetensors.torch import save_file

    for name, models in (("flux", flux), ("fill", fill)):
        # every block weight at 0.1 (at 0.3 the tiny Fill's output moved by more than its own norm, and any other
        # patch's change was measured against a different network)
        save_file(_random_lora(models.model, 1, 0.1, lambda k: "blocks" in k),
                  str(folder / f"layer_{name}.safetensors"))

    with torch.inference_mode(False):
        width = int(flux.clip.encode_from_tokens_scheduled(flux.clip.tokenize("a"))[0][0].shape[-1])
        torch.manual_seed(4)
        sae = SparseAutoencoder(SAEConfig(act_size=width, dict_size=64, top_k=4))
        with torch.no_grad():
            for p in sae.parameters():
                p.normal_(generator=torch.Generator().manual_seed(5)).mul_(0.5)
    direction = torch.zeros(64)
    direction[[3, 17, 40]] = torch.tensor([1.0, -0.7, 0.5])
    reference = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(6))
    return SimpleNamespace(
        flux=flux, fill=fill, tova={"flux": {**{w: tova(flux, w, s) for w, s in (("dog", 1), ("cat", 2))},
                                             "dog2": tova(flux, "dog", 3)},
                                    "fill": {w: tova(fill, w, s) for w, s in (("dog", 1), ("cat", 2))}},
        sae=saedit.LoadedSAE(sae, "tiny.safetensors", "t5"),
        direction=saedit.LoadedDirection(direction, None, None, [], "test_direction.safetensors"),
        reference=reference, conceptsplit=conceptsplit, layered=layered, saedit=saedit, tryon=tryon)


def _random_lora(model, seed, scale, keep):
    """A LoRA in the generic key layout LoraLoader reads, on the 2-D block weights ``keep`` selects."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, w in model.model.state_dict().items():
        if k.startswith("diffusion_model.") and k.endswith(".weight") and w.ndim == 2 and keep(k):
            base = k[:-len(".weight")]
            out[f"{base}.lora_up.weight"] = torch.randn(w.shape[0], 2, generator=g) * scale
            out[f"{base}.lora_down.weight"] = torch.randn(2, w.shape[1], generator=g) * scale
            out[f"{base}.alpha"] = torch.tensor(2.0)
    return out


# -- the patches: each changes a graph state (model, clip, conditioning edits) ----------------------------------------

def _models(w, family):
    return w.fill if family == "Flux Fill" else w.flux


def _slider(w, family, st, s):
    def edit(cond, clip):
        return w.saedit.EditLabSAESlider.execute(
            conditioning=cond, clip=clip, sae=w.sae, direction=w.direction, prompt=PROMPT, word="dog",
            strength=4.0 * s, schedule="constant", part="t5", timing="undelayed").result[0]
    st.cond_ops.append(edit)


def _tova(word, adapter=None):
    def apply(w, family, st, s):
        key = "fill" if family == "Flux Fill" else "flux"
        st.model = w.conceptsplit.EditLabToVAApply.execute(model=st.model, clip=st.clip, prompt=PROMPT, strength=s,
                                                           adapter_1=w.tova[key][adapter or word]).result[0]
    return apply


def _layered(w, family, st, s):
    name = "layer_fill.safetensors" if family == "Flux Fill" else "layer_flux.safetensors"
    st.model, st.clip = w.layered.EditLabLayeredAdapters.execute(
        model=st.model, clip=st.clip, pattern_shift_lora=name, pattern_shift_strength=s, pattern_shift_start=0.0,
        pattern_shift_end=1.0, consistency_lora=w.layered.NONE, consistency_strength=1.0, consistency_start=0.0,
        consistency_end=1.0).result


def _host_lora(w, family, st, s):
    import comfy.sd

    if s == 0:
        return
    lora = _random_lora(st.model, 11, 0.3, lambda k: "double_blocks" in k and ("attn.qkv" in k or "mlp.0" in k))
    st.model, _ = comfy.sd.load_lora_for_models(st.model, None, lora, s, 0)


def _backend(w, family, st, s):
    """ComfyUI 0.33's ModelAttentionBackend (PyTorch attention): off is not applying it."""
    from comfy_extras.nodes_model_advanced import ModelAttentionBackend

    if s == 0:
        return
    node = ModelAttentionBackend
    st.model = (node().patch(st.model, "pytorch attention") if hasattr(node, "patch")
                else node.execute(st.model, "pytorch attention").result)[0]


def _reference_tokens(w, family, st, s):
    """Reference Tokens on the positive (its off switch is not applying it)."""
    if s == 0:
        return

    def edit(cond, clip):
        return w.tryon.EditLabReferenceTokens.execute(
            conditioning=cond, vae=w.flux.vae, image=w.reference, method="offset", max_size=64).result[0]
    st.cond_ops.append(edit)


PATCHES = {"SAE Slider": _slider, "ToVA Apply (dog)": _tova("dog"), "ToVA Apply (cat)": _tova("cat"),
           "ToVA Apply (dog, 2nd adapter)": _tova("dog", "dog2"),
           "Layered Adapters": _layered, "Reference Tokens": _reference_tokens, "host LoraLoader": _host_lora,
           "host ModelAttentionBackend": _backend}
HOST = {"host LoraLoader", "host ModelAttentionBackend"}
NO_OFF = HOST | {"Reference Tokens"}  # off = not applying it: no off cell of their own
FAMILY_PATCHES = {
    "Flux": ["SAE Slider", "ToVA Apply (dog)", "Layered Adapters", "host LoraLoader", "host ModelAttentionBackend"],
    "Kontext-style Flux": ["Reference Tokens", "SAE Slider", "ToVA Apply (dog)", "Layered Adapters",
                           "host LoraLoader", "host ModelAttentionBackend"],
    "Flux Fill": ["SAE Slider", "ToVA Apply (dog)", "Layered Adapters", "host LoraLoader",
                  "host ModelAttentionBackend"],
}
# Order-independent by the maths: an attention override (ToVA), hook-keyframed weight patches (Layered) and a
# conditioning edit (the slider) commute with weight patches and each other; two ToVA concepts on other tokens move
# disjoint rows; two ToVA adapters on one word each add their term to the values as the block made them.
ORDER_FREE = {frozenset({"ToVA Apply (dog)", "ToVA Apply (cat)"}),
              frozenset({"ToVA Apply (dog)", "ToVA Apply (dog, 2nd adapter)"}), frozenset({"ToVA Apply (dog)", "host LoraLoader"}),
              frozenset({"ToVA Apply (dog)", "Layered Adapters"}), frozenset({"Layered Adapters", "host LoraLoader"})}


def _pairs():
    out = []
    for family, names in FAMILY_PATCHES.items():
        editlab = [n for n in names if n not in HOST]
        pairs = [(a, b) for a, b in itertools.combinations(names, 2) if a in editlab]
        if family == "Kontext-style Flux":  # the pairs without Reference Tokens are the Flux family's
            pairs = [(a, b) for a, b in pairs if "Reference Tokens" in (a, b)]
        if family == "Flux":
            pairs += [("ToVA Apply (dog)", "ToVA Apply (cat)"), ("ToVA Apply (dog)", "ToVA Apply (dog, 2nd adapter)")]
        out += [(family, a, b) for a, b in pairs]
    return out


PAIRS = _pairs()
# ToVA Apply then ModelAttentionBackend: the backend replaces ToVA's override (refused; test below); the matrix
# composes them in the order that works, the backend first.
REFUSED_ORDER = {("ToVA Apply (dog)", "host ModelAttentionBackend")}


def _graph(w, family, patches, noise_mask=True):
    """(model, positive, negative, latent, noise_mask): ``patches`` [(name, strength)] applied in order, the prompt
    encoded with the resulting CLIP, the conditioning edits applied, then FluxGuidance (and Fill's inpaint
    conditioning)."""
    import node_helpers

    models = _models(w, family)
    st = SimpleNamespace(model=models.model, clip=models.clip, cond_ops=[])
    for name, s in patches:
        PATCHES[name](w, family, st, s)
    pos = st.clip.encode_from_tokens_scheduled(st.clip.tokenize(PROMPT))
    neg = st.clip.encode_from_tokens_scheduled(st.clip.tokenize(""))
    for op in st.cond_ops:
        pos = op(pos, st.clip)
    pos = node_helpers.conditioning_set_values(pos, {"guidance": GUIDANCE[family]})
    neg = node_helpers.conditioning_set_values(neg, {"guidance": GUIDANCE[family]})
    latent = torch.zeros(1, 16, 8, 8)
    mask = None
    if family == "Flux Fill":
        from nodes import InpaintModelConditioning

        pixels = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(8))
        m = torch.zeros(1, 64, 64)
        m[:, 16:48, 16:48] = 1.0
        node = InpaintModelConditioning
        out = (node().encode(pos, neg, pixels, models.vae, m, noise_mask) if hasattr(node, "encode")
               else node.execute(pos, neg, pixels, models.vae, m, noise_mask).result)
        pos, neg, lat = out
        latent, mask = lat["samples"], lat.get("noise_mask")
    return st.model, st.clip, pos, neg, latent, mask


def _setting(run: str) -> tuple[str, float]:
    """("euler", 1.0) from "euler"; ("euler", 2.0) from "euler@cfg2"."""
    name, _, cfg = run.partition("@cfg")
    return name, float(cfg) if cfg else 1.0


def _sample(model, pos, neg, latent, mask, run, sampler=None):
    import comfy.sample
    import comfy.samplers

    name, cfg = _setting(run)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", STEPS)
    sampler = sampler or comfy.samplers.sampler_object(name)
    return comfy.sample.sample_custom(model, comfy.sample.prepare_noise(latent, SEED), cfg, sampler, sigmas, pos, neg,
                                      latent, noise_mask=mask, disable_pbar=True, seed=SEED)


_CACHE: dict = {}


def _out(w, family, patches, sampler_name, noise_mask=True):
    key = (family, tuple(patches), sampler_name, noise_mask)
    if key not in _CACHE:
        with torch.inference_mode():
            model, _, pos, neg, latent, mask = _graph(w, family, list(patches), noise_mask)
            _CACHE[key] = _sample(model, pos, neg, latent, mask, sampler_name)
    return _CACHE[key]


def _same(a, b) -> bool:
    return torch.equal(a, b) or float((a - b).abs().max()) <= EXACT


def _record(key, check, ok, na=False):
    cell = RESULTS.setdefault(key, {})
    if na:
        cell.setdefault(check, "n/a")
        return
    cell[check] = "pass" if ok and cell.get(check) in (None, "pass", "n/a") else "FAIL"


def _applies(family, name) -> bool:
    return name != "host ModelAttentionBackend" or _has_backend_node()


@pytest.mark.parametrize("family,a,b", PAIRS, ids=[f"{f}:{a}+{b}" for f, a, b in PAIRS])
def test_patch_pair(world, family, a, b):
    key = (family, a, b)
    if not (_applies(family, a) and _applies(family, b)):
        for c in CHECKS:
            _record(key, c, True, na=True)
        pytest.skip("ComfyUI 0.3.75 has no attention-backend node (ModelAttentionBackend is 0.33's)")
    base = ()
    first, second = (b, a) if (a, b) in REFUSED_ORDER else (a, b)
    failures = []
    for s in FLUX_RUNS:
        both = _out(world, family, base + ((first, 1.0), (second, 1.0)), s)
        _record(key, "runs", bool(torch.isfinite(both).all()))
        plain = _out(world, family, base, s)
        for this, other in ((a, b), (b, a)):
            alone_change = float((_out(world, family, base + ((this, 1.0),), s) - plain).norm())
            kept = float((both - _out(world, family, base + ((other, 1.0),), s)).norm())
            ok = alone_change > 0 and kept >= ACTS * alone_change
            _record(key, "acts", ok)
            if not ok:
                failures.append(f"{s}: {this} changes {alone_change:.3g} alone, {kept:.3g} composed with {other}")
        if s != "euler":
            continue
        offs = [(o, n) for o, n in ((a, b), (b, a)) if o not in NO_OFF]
        if not offs:
            _record(key, "off", True, na=True)
        for off, on in offs:
            graph = tuple((n, 0.0 if n == off else 1.0) for n in (first, second))
            ok = _same(_out(world, family, base + graph, s), _out(world, family, base + ((on, 1.0),), s))
            _record(key, "off", ok)
            if not ok:
                failures.append(f"{s}: {off} at strength 0 with {on} is not {on} alone")
        if frozenset({a, b}) in ORDER_FREE:
            ba = _out(world, family, base + ((second, 1.0), (first, 1.0)), s)
            two_tova = a.startswith("ToVA") and b.startswith("ToVA")
            ok = _same(both, ba) or (two_tova and float((both - ba).abs().max()) <= ORDER)
            _record(key, "order", ok)
            if not ok:
                failures.append(f"{s}: the order of the nodes moves the result by {float((both - ba).abs().max()):.3g}")
        else:
            _record(key, "order", True, na=True)
    assert not failures, failures


SAMPLER_PATCHES = ([("Flux", n) for n in FAMILY_PATCHES["Flux"]] + [("Kontext-style Flux", "Reference Tokens")]
                   + [("Flux Fill", n) for n in FAMILY_PATCHES["Flux Fill"]])


def _loda(w, family, clip, sampler_name, afg=2.0, steps=1):
    import comfy.samplers

    return w.conceptsplit.EditLabLODA.execute(
        sampler=comfy.samplers.sampler_object(_setting(sampler_name)[0]), clip=clip, prompt=PROMPT, concepts="dog, cat",
        loda_steps=steps, step_size=20.0, threshold=3.0, afg_strength=afg).result[0]


@pytest.mark.parametrize("family,b", SAMPLER_PATCHES, ids=[f"{f}:{b}" for f, b in SAMPLER_PATCHES])
def test_loda_with_afg_on_a_patched_model(world, family, b):
    """LODA (1 step) + AFG sampled on a graph carrying patch B: LODA still acts (differs from B alone by at least
    half of what it changes on the base graph), B still acts, and LODA at 0 steps / AFG 0 is B alone bit for bit.
    Flux Fill: InpaintModelConditioning with noise_mask off (LODA refuses a denoise mask: the refusal test)."""
    key = (family, "LODA + AFG (sampler)", b)
    if not _applies(family, b):
        for c in CHECKS:
            _record(key, c, True, na=True)
        pytest.skip("ComfyUI 0.3.75 has no attention-backend node")
    base = ()
    graph = ((b, 1.0),)
    failures = []
    for s in FLUX_RUNS:
        with torch.inference_mode():
            model0, clip0, pos0, neg0, lat0, mask0 = _graph(world, family, list(base), noise_mask=False)
            loda_base = _sample(model0, pos0, neg0, lat0, mask0, s, _loda(world, family, clip0, s))
            model, clip, pos, neg, latent, mask = _graph(world, family, list(graph), noise_mask=False)
            both = _sample(model, pos, neg, latent, mask, s, _loda(world, family, clip, s))
        _record(key, "runs", bool(torch.isfinite(both).all()))
        plain, b_alone = _out(world, family, base, s, False), _out(world, family, graph, s, False)
        loda_change = float((loda_base - plain).norm())
        kept = float((both - b_alone).norm())
        b_change = float((b_alone - plain).norm())
        b_kept = float((both - loda_base).norm())
        ok = loda_change > 0 and kept >= ACTS * loda_change and b_kept >= ACTS * b_change
        _record(key, "acts", ok)
        if not ok:
            failures.append(f"{s}: LODA {loda_change:.3g} alone / {kept:.3g} with {b}; {b} {b_change:.3g} / "
                            f"{b_kept:.3g}")
        if s == "euler":
            with torch.inference_mode():
                off = _sample(model, pos, neg, latent, mask, s, _loda(world, family, clip, s, afg=0.0, steps=0))
            ok = torch.equal(off, b_alone)
            _record(key, "off", ok)
            if not ok:
                failures.append(f"{s}: LODA at 0 steps with {b} is not {b} alone")
        _record(key, "order", True, na=True)
    assert not failures, failures


@pytest.mark.parametrize("family,b", SAMPLER_PATCHES, ids=[f"{f}:{b}" for f, b in SAMPLER_PATCHES])
def test_attention_maps_sampling_a_patched_model(world, family, b):
    """Attention Maps samples as KSampler does and only records: on a graph carrying patch B its latent is plain
    sampling of that graph (B acts exactly as alone), and it records maps."""
    key = (family, "Attention Maps (sampler)", b)
    if not _applies(family, b):
        for c in CHECKS:
            _record(key, c, True, na=True)
        pytest.skip("ComfyUI 0.3.75 has no attention-backend node")
    graph = ((b, 1.0),)
    failures = []
    for s in FLUX_RUNS:
        with torch.inference_mode():
            model, clip, pos, neg, latent, mask = _graph(world, family, list(graph))
            lat = {"samples": latent} if mask is None else {"samples": latent, "noise_mask": mask}
            out = world.conceptsplit.EditLabAttentionMaps.execute(
                model=model, clip=clip, positive=pos, negative=neg, latent_image=lat, prompt=PROMPT,
                words="dog, cat", seed=SEED, steps=STEPS, cfg=_setting(s)[1], sampler_name=_setting(s)[0],
                scheduler="simple", start_step=0,
                end_step=10000)
        got, heat = out.result[0]["samples"], out.result[1]
        _record(key, "runs", bool(torch.isfinite(got).all()))
        want = _out(world, family, graph, s)
        ok = float((got - want).abs().max()) <= RECORDED * float(want.abs().max()) and float(heat.max()) > 0
        _record(key, "acts", ok and RESULTS[key].get("acts") != "FAIL")
        _record(key, "off", True, na=True)
        _record(key, "order", True, na=True)
        if not ok:
            failures.append(f"{s}: with {b} the latent moved by {float((got - want).abs().max()):.3g}, "
                            f"heat max {float(heat.max()):.3g}")
    assert not failures, failures


# -- Wan I2V: the ChronoEdit sampler with a host LoRA, the slider and the host's attention backend ------------

WAN_W, WAN_H, WAN_FRAMES, WAN_CFG = 48, 32, 5, 2.0
WAN_PROMPT = "the dog is now red"


@pytest.fixture(scope="module")
def wan(comfy_host):
    from editlab.models.saedit.sae import SAEConfig, SparseAutoencoder
    from editlab.models.tiny import build_tiny_models
    from editlab.nodes import chronoedit, saedit

    with torch.inference_mode():
        models = build_tiny_models("wan21_i2v", 0)
    with torch.inference_mode(False):
        width = int(models.clip.encode_from_tokens_scheduled(models.clip.tokenize("a"))[0][0].shape[-1])
        sae = SparseAutoencoder(SAEConfig(act_size=width, dict_size=64, top_k=4))
        with torch.no_grad():
            for p in sae.parameters():
                p.normal_(generator=torch.Generator().manual_seed(5)).mul_(0.5)
    direction = torch.zeros(64)
    direction[[3, 17, 40]] = torch.tensor([1.0, -0.7, 0.5])
    image = torch.rand(1, WAN_H, WAN_W, 3, generator=torch.Generator().manual_seed(3))
    return SimpleNamespace(models=models, chronoedit=chronoedit, saedit=saedit, image=image,
                           sae=saedit.LoadedSAE(sae, "tiny_wan.safetensors", "t5"),
                           direction=saedit.LoadedDirection(direction, None, None, [], "wan_direction.safetensors"))


def _wan_out(w, patch, strength, k, sampler_name):
    """The ChronoEdit graph (Conditioning with reasoning, then the sampler at ``k`` reasoning steps of 2) on a graph
    with ``patch`` (None, "host LoraLoader", "SAE Slider", "host ModelAttentionBackend") at ``strength``."""
    import comfy.sd

    key = ("wan", patch, strength, k, sampler_name)
    if key in _CACHE:
        return _CACHE[key]
    model, clip = w.models.model, w.models.clip
    with torch.inference_mode():
        if patch == "host LoraLoader" and strength:
            lora = _random_lora(model, 12, 0.3, lambda name: "blocks.0." in name and ("self_attn" in name
                                                                                      or "ffn.0" in name))
            model, _ = comfy.sd.load_lora_for_models(model, None, lora, strength, 0)
        if patch == "host ModelAttentionBackend" and strength:
            st = SimpleNamespace(model=model)
            _backend(None, "Wan I2V", st, strength)
            model = st.model
        pos = clip.encode_from_tokens_scheduled(clip.tokenize(WAN_PROMPT))
        neg = clip.encode_from_tokens_scheduled(clip.tokenize(""))
        if patch == "SAE Slider":
            pos = w.saedit.EditLabSAESlider.execute(
                conditioning=pos, clip=clip, sae=w.sae, direction=w.direction, prompt=WAN_PROMPT, word="dog",
                strength=4.0 * strength, schedule="constant", part="t5", timing="undelayed").result[0]
        c = w.chronoedit.EditLabChronoEditConditioning.execute(
            positive=pos, negative=neg, vae=w.models.vae, image=w.image, target_area=WAN_W * WAN_H, width=WAN_W,
            height=WAN_H, reasoning=True, reasoning_frames=WAN_FRAMES).result
        out = w.chronoedit.EditLabTemporalReasoningSampler.execute(
            model=model, positive=c[0], negative=c[1], latent=c[2], seed=SEED, steps=STEPS, cfg=WAN_CFG,
            sampler_name=sampler_name, scheduler="simple", reasoning_steps=k, without_clip_vision=True).result
    _CACHE[key] = out[0]["samples"]
    return _CACHE[key]


WAN_PAIRS = ["host LoraLoader", "SAE Slider", "host ModelAttentionBackend"]


@pytest.mark.parametrize("b", WAN_PAIRS)
def test_chronoedit_sampler_with_a_patch(wan, b):
    """The ChronoEdit sampler (1 reasoning step of 2) on a Wan graph carrying B, under CFG 2: both act (ChronoEdit's
    change is its run against its own 0-reasoning-step run, which its tests show is the host's plain 2-frame
    sampling), and B at strength 0 is ChronoEdit alone bit for bit (the slider; a host LoRA's off is not applying
    it)."""
    key = ("Wan I2V", "ChronoEdit sampler", b)
    if not _applies("Wan I2V", b):
        for c in CHECKS:
            _record(key, c, True, na=True)
        pytest.skip("ComfyUI 0.3.75 has no attention-backend node")
    failures = []
    for s in SAMPLERS:
        both = _wan_out(wan, b, 1.0, 1, s)
        _record(key, "runs", bool(torch.isfinite(both).all()))
        chrono_change = float((_wan_out(wan, None, 0.0, 1, s) - _wan_out(wan, None, 0.0, 0, s)).norm())
        chrono_kept = float((both - _wan_out(wan, b, 1.0, 0, s)).norm())
        b_change = float((_wan_out(wan, b, 1.0, 0, s) - _wan_out(wan, None, 0.0, 0, s)).norm())
        b_kept = float((both - _wan_out(wan, None, 0.0, 1, s)).norm())
        ok = chrono_change > 0 and b_change > 0 and chrono_kept >= ACTS * chrono_change and b_kept >= ACTS * b_change
        _record(key, "acts", ok)
        if not ok:
            failures.append(f"{s}: ChronoEdit {chrono_change:.3g} alone / {chrono_kept:.3g} with {b}; {b} "
                            f"{b_change:.3g} / {b_kept:.3g}")
        if s == "euler" and b not in NO_OFF:
            ok = _same(_wan_out(wan, b, 0.0, 1, s), _wan_out(wan, None, 0.0, 1, s))
            _record(key, "off", ok)
            if not ok:
                failures.append(f"{s}: {b} at 0 with ChronoEdit is not ChronoEdit alone")
        else:
            _record(key, "off", True, na=True)
        _record(key, "order", True, na=True)
    assert not failures, failures


# -- refusals ----------------------------------------------------------------------------------------------------------

def test_tova_then_the_hosts_attention_backend_is_refused_naming_both(world):
    """ModelAttentionBackend applied after ToVA Apply replaces ToVA's override (ToVA would silently stop acting):
    sampling stops with an error naming both nodes. The other order composes (the matrix row)."""
    key = ("Flux", "ToVA Apply (dog) then host ModelAttentionBackend", "(refused)")
    if not _has_backend_node():
        for c in CHECKS:
            _record(key, c, True, na=True)
        pytest.skip("ComfyUI 0.3.75 has no attention-backend node")
    with pytest.raises(RuntimeError, match=r"ToVA Apply.*ModelAttentionBackend.*apply that node before"):
        _out(world, "Flux", (("ToVA Apply (dog)", 1.0), ("host ModelAttentionBackend", 1.0)), "euler")
    for c in CHECKS:
        _record(key, c, True, na=c != "runs")
    RESULTS[key]["runs"] = "refused"


def test_loda_on_a_latent_with_a_noise_mask_is_refused_naming_both(world):
    """Flux Fill through InpaintModelConditioning with noise_mask on: LODA's steps have no masked form, so sampling
    stops with an error naming LODA and the mask's node (never a silently unmasked edit)."""
    from editlab.nodes.errors import EditLabInputError

    key = ("Flux Fill", "LODA + AFG (sampler)", "InpaintModelConditioning noise_mask (refused)")
    with torch.inference_mode():
        model, clip, pos, neg, latent, mask = _graph(world, "Flux Fill", [], noise_mask=True)
        assert mask is not None
        with pytest.raises(EditLabInputError, match=r"LODA does not take a denoise.*InpaintModelConditioning"):
            _sample(model, pos, neg, latent, mask, "euler", _loda(world, "Flux Fill", clip, "euler"))
    for c in CHECKS:
        _record(key, c, True, na=c != "runs")
    RESULTS[key]["runs"] = "refused"


def test_reference_tokens_on_flux_fill_are_refused_naming_the_node(world):
    """Flux Fill's image tokens carry the inpaint channels, so reference latents cannot join them: sampling stops with
    an error naming Reference Tokens, Flux Fill and what to use instead (Try-On Stitch), not the host's shape error."""
    from editlab.models.tryon.references import ReferenceTokensError

    key = ("Flux Fill", "Reference Tokens", "InpaintModelConditioning (refused)")
    with pytest.raises(ReferenceTokensError, match=r"Reference Tokens.*Flux Fill.*Try-On Stitch"):
        _out(world, "Flux Fill", (("Reference Tokens", 1.0),), "euler", noise_mask=False)
    for c in CHECKS:
        _record(key, c, True, na=c != "runs")
    RESULTS[key]["runs"] = "refused"


# -- the table ---------------------------------------------------------------------------------------------------------

CHECKS = ("runs", "acts", "off", "order")


def table() -> str:
    lines = ["| family | patch A | patch B | " + " | ".join(CHECKS) + " |", "|---|---|---|" + "---|" * len(CHECKS)]
    for (family, a, b), cells in sorted(RESULTS.items()):
        lines.append(f"| {family} | {a} | {b} | " + " | ".join(cells.get(c, "not run") for c in CHECKS) + " |")
    return "\n".join(lines)


def test_the_readme_carries_this_runs_table():
    """Last: the table this run filled (written to out/test-artifacts/) is the README's, row for row. Cells that
    are n/a on one host (the 0.33-only backend node) are 'n/a (0.3.75)' in the README and compared as such."""
    if len(RESULTS) < len(PAIRS) + 2 * len(SAMPLER_PATCHES) + len(WAN_PAIRS) + 3:
        pytest.skip("only part of the matrix ran (a -k selection): nothing to compare")
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    ARTIFACT.write_text(table() + "\n", encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert_readme_carries(readme, "composition-matrix-dit", table(), ARTIFACT)

