"""Layered Edit Adapters on the tiny Flux with a reference latent: strength 0 equals the base model bit for bit with
the hooks really installed; each adapter acts only inside its step window, where the model equals what the host's own
LoraLoaderModelOnly gives on a fresh clone; it composes with a stock LoraLoader before or after; bad input named.

The model is probed through the whole sampling path (CFGGuider, hook registration, keyframes) by a sampler that
evaluates it at each sigma of the schedule on one fixed latent."""
import pytest
import torch

PROMPT = "replace the background with a beach"
STEPS = 8


pytestmark = pytest.mark.usefixtures("server_mode")  # nodes run as the server runs them


@pytest.fixture(scope="module")
def layered(comfy_host, tmp_path_factory):
    import folder_paths

    from editlab.nodes import layered

    folder = tmp_path_factory.mktemp("loras")
    folder_paths.folder_names_and_paths["loras"] = ([str(folder)], set(folder_paths.supported_pt_extensions))
    layered.lora_dir = folder
    return layered


@pytest.fixture(scope="module")
def flux(comfy_host):
    from editlab.models.tiny import build_tiny_models

    with torch.inference_mode():
        return build_tiny_models("flux", 0)


def random_lora(model, seed, scale=0.3, rank=2, every=1):
    """A LoRA file's tensors for the tiny Flux's block weights (the kohya/generic key format LoraLoader reads)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    keys = [k for k, v in model.model.state_dict().items()
            if k.startswith("diffusion_model.") and "blocks" in k and k.endswith(".weight") and v.ndim == 2]
    for k in keys[::every]:
        w = model.model.state_dict()[k]
        base = k[:-len(".weight")]
        out[f"{base}.lora_up.weight"] = torch.randn(w.shape[0], rank, generator=gen) * scale
        out[f"{base}.lora_down.weight"] = torch.randn(rank, w.shape[1], generator=gen) * scale
        out[f"{base}.alpha"] = torch.tensor(float(rank))
    return out


@pytest.fixture(scope="module")
def loras(layered, flux):
    from safetensors.torch import save_file

    names = {}
    for name, seed, every in (("pattern", 1, 1), ("consistency", 2, 2), ("other", 3, 3)):
        save_file(random_lora(flux.model, seed, every=every), str(layered.lora_dir / f"{name}.safetensors"))
        names[name] = f"{name}.safetensors"
    return names


class Probe:
    """A host sampler that evaluates the guided model at every sigma of the schedule on one fixed latent."""

    def __new__(cls, x):
        from editlab.nodes import host

        class _Probe(host.Sampler):
            def __init__(self, x):
                self.x, self.outs = x, []

            def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
                       disable_pbar=False):
                for s in sigmas[:-1]:
                    sig = s.reshape(1).expand(noise.shape[0]).to(noise)
                    self.outs.append(model_wrap(self.x.to(noise), sig, **extra_args).clone())
                return noise

        return _Probe(x)


def conditioning(flux, clip):
    from editlab.nodes import host

    cond = clip.encode_from_tokens_scheduled(clip.tokenize(PROMPT))
    gen = torch.Generator().manual_seed(5)
    ref = flux.vae.encode(torch.rand(1, 64, 64, 3, generator=gen))
    return host.conditioning_set_values(cond, {"reference_latents": [ref]}, append=True)


def probe(flux, model, clip):
    """The model's outputs at each of the STEPS sigmas (cfg 1: the positive branch, hooks and all)."""
    from editlab.nodes import host

    sigmas = host.sampling_sigmas(model, STEPS, "euler", "simple")
    x = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(7))
    p = Probe(x)
    pos = conditioning(flux, clip)
    host.sample_custom(model, torch.zeros_like(x), 1.0, p, sigmas, pos, pos, torch.zeros_like(x))
    return sigmas, p.outs


def stock_lora(model, name, strength):
    """LoraLoaderModelOnly, the host's own node, on a fresh clone."""
    import nodes as comfy_nodes

    return comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(model, name, strength)[0]


def adapters(layered, flux, model=None, clip=None, pattern="None", ps=1.0, p0=0.0, p1=1.0, consistency="None",
             cs=1.0, c0=0.0, c1=1.0):
    return layered.EditLabLayeredAdapters.execute(
        model=model or flux.model, clip=clip or flux.clip, pattern_shift_lora=pattern, pattern_shift_strength=ps,
        pattern_shift_start=p0, pattern_shift_end=p1, consistency_lora=consistency, consistency_strength=cs,
        consistency_start=c0, consistency_end=c1).result


def test_strength_zero_is_the_base_model_bit_for_bit_with_the_hooks_installed(layered, flux, loras):
    from editlab.nodes import host

    m, clip = adapters(layered, flux, pattern=loras["pattern"], ps=0.0, consistency=loras["consistency"], cs=0.0)
    assert len(m.hook_patches) == 2 and all(len(p) > 0 for p in m.hook_patches.values())
    hooks = host.conditioning_hooks(conditioning(flux, clip))
    assert hooks[0] is not None and len(hooks[0]) == 2
    _, base = probe(flux, flux.model, flux.clip)
    _, ours = probe(flux, m, clip)
    for a, b in zip(ours, base):
        assert torch.equal(a, b)
    # ... and at strength 1 the same path does change the output (the hooks are live)
    m1, clip1 = adapters(layered, flux, pattern=loras["pattern"], consistency=loras["consistency"])
    _, live = probe(flux, m1, clip1)
    assert all((a - b).abs().max() > 1e-4 for a, b in zip(live, base))


def test_each_adapter_acts_only_inside_its_window(layered, flux, loras):
    p0, p1, c0, c1 = 0.0, 0.45, 0.3, 1.0
    m, clip = adapters(layered, flux, pattern=loras["pattern"], ps=0.8, p0=p0, p1=p1,
                       consistency=loras["consistency"], cs=1.2, c0=c0, c1=c1)
    sigmas, ours = probe(flux, m, clip)
    ms = flux.model.model.model_sampling

    def inside(sig, start, end):  # the window in sigmas, from the model's own schedule, at the sigmas' precision
        at = lambda p: float(torch.tensor(float(ms.percent_to_sigma(p)), dtype=sigmas.dtype))  # noqa: E731
        return at(end) < sig <= at(start)

    refs = {}
    for a in (False, True):
        for b in (False, True):
            model = flux.model
            if a:
                model = stock_lora(model, loras["pattern"], 0.8)
            if b:
                model = stock_lora(model, loras["consistency"], 1.2)
            refs[a, b] = probe(flux, model, flux.clip)[1]
    seen = set()
    for i, sig in enumerate(sigmas[:-1].tolist()):
        key = (inside(sig, p0, p1), inside(sig, c0, c1))
        seen.add(key)
        others = [refs[k][i] for k in refs if k != key]
        if key == (False, False):
            assert torch.equal(ours[i], refs[key][i])
        else:
            assert torch.allclose(ours[i], refs[key][i], atol=1e-5, rtol=0), (i, key)
        assert all((ours[i] - o).abs().max() > 1e-4 for o in others), (i, key)
    assert {(True, False), (True, True), (False, True)} <= seen


@pytest.mark.parametrize("order", ["stock_first", "stock_after"])
def test_composes_with_a_stock_lora_loader(layered, flux, loras, order):
    import nodes as comfy_nodes

    loader = comfy_nodes.LoraLoader()
    if order == "stock_first":
        model, clip = loader.load_lora(flux.model, flux.clip, loras["other"], 0.7, 1.0)
        model, clip = adapters(layered, flux, model=model, clip=clip, pattern=loras["pattern"], ps=0.5)
    else:
        model, clip = adapters(layered, flux, pattern=loras["pattern"], ps=0.5)
        model, clip = loader.load_lora(model, clip, loras["other"], 0.7, 1.0)
    _, ours = probe(flux, model, clip)
    expected = stock_lora(stock_lora(flux.model, loras["other"], 0.7), loras["pattern"], 0.5)
    _, ref = probe(flux, expected, flux.clip)
    _, only_other = probe(flux, stock_lora(flux.model, loras["other"], 0.7), flux.clip)
    for a, b, c in zip(ours, ref, only_other):
        assert torch.allclose(a, b, atol=1e-5, rtol=0)
        assert (a - c).abs().max() > 1e-4


def test_none_leaves_the_model_as_it_was(layered, flux):
    m, clip = adapters(layered, flux)
    assert m is not flux.model and not m.hook_patches and clip.apply_hooks_to_conds is None


def test_bad_input_is_named(layered, flux, loras):
    from safetensors.torch import save_file

    from editlab.nodes.common import EditLabInputError

    with pytest.raises(EditLabInputError, match="pattern_shift_start"):
        adapters(layered, flux, pattern=loras["pattern"], p0=0.6, p1=0.4)
    with pytest.raises(EditLabInputError, match="consistency_start"):
        adapters(layered, flux, consistency=loras["consistency"], c0=0.5, c1=0.5)
    with pytest.raises(EditLabInputError, match="pattern_shift_lora"):
        adapters(layered, flux, pattern="missing.safetensors")
    save_file({"lora_unet_nothing_here.lora_up.weight": torch.zeros(2, 2),
               "lora_unet_nothing_here.lora_down.weight": torch.zeros(2, 2)},
              str(layered.lora_dir / "foreign.safetensors"))
    with pytest.raises(EditLabInputError, match="consistency_lora.*for this model"):
        adapters(layered, flux, consistency="foreign.safetensors")
    (layered.lora_dir / "broken.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(EditLabInputError, match="pattern_shift_lora"):
        adapters(layered, flux, pattern="broken.safetensors")
    with pytest.raises(EditLabInputError, match="pattern_shift_strength"):
        adapters(layered, flux, pattern=loras["pattern"], ps=float("nan"))


@pytest.mark.parametrize("dtype", ["bf16", "fp8_e4m3fn"])
def test_half_precision_storage(layered, loras, dtype):
    """Weights stored in bf16 / fp8. bf16: strength 0 is still the base model bit for bit. fp8: the host writes every
    patched weight back through ``comfy.float.stochastic_rounding``, which moves even exactly representable fp8
    values (a host property: LoraLoader does the same at any strength other than 0, where it skips patching), so
    strength 0 is the base model up to that re-rounding. Inside the window the output is what LoraLoaderModelOnly
    gives; outside, the base model (bit for bit in bf16; in fp8 up to the same re-rounding)."""
    import comfy.float

    from editlab.models.tiny import build_tiny_models

    tiny = build_tiny_models("flux", 0, dtype)
    m0, c0 = adapters(layered, tiny, pattern=loras["pattern"], ps=0.0, consistency=loras["consistency"], cs=0.0)
    _, base = probe(tiny, tiny.model, tiny.clip)
    _, zero = probe(tiny, m0, c0)
    w = tiny.model.model.diffusion_model.double_blocks[0].img_attn.qkv.weight
    rerounded = comfy.float.stochastic_rounding(w.float(), w.dtype, seed=1)
    if dtype == "bf16" or torch.equal(rerounded, w):
        # bf16; and fp8 on hosts whose re-rounding keeps representable values (0.33): the base bit for bit
        assert all(torch.equal(a, b) for a, b in zip(zero, base))
    else:  # 0.3.75's fp8 re-rounding moves even representable values: the base up to it
        assert all(torch.allclose(a, b, atol=0.05, rtol=0) for a, b in zip(zero, base))
    m1, c1 = adapters(layered, tiny, pattern=loras["pattern"], ps=1.0, p0=0.0, p1=0.5)
    sigmas, ours = probe(tiny, m1, c1)
    _, ref = probe(tiny, stock_lora(tiny.model, loras["pattern"], 1.0), tiny.clip)
    # the window ends at 0.5, which is exactly step 4's sigma here: that step is outside (sigma(end) < sigma)
    cut = float(torch.tensor(float(tiny.model.model.model_sampling.percent_to_sigma(0.5)), dtype=sigmas.dtype))
    assert cut in sigmas.tolist()
    for i, sig in enumerate(sigmas[:-1].tolist()):
        assert torch.isfinite(ours[i]).all()
        if sig > cut:
            assert torch.allclose(ours[i], ref[i], atol=2e-2, rtol=0), (i, (ours[i] - ref[i]).abs().max())
        elif dtype == "bf16":
            assert torch.equal(ours[i], base[i])
        else:  # the hook is installed at keyframe strength 0 there: base up to the host's fp8 re-rounding
            assert torch.allclose(ours[i], base[i], atol=0.05, rtol=0)
            assert (ours[i] - ref[i]).abs().max() > 10 * (ours[i] - base[i]).abs().max()


def test_a_rewritten_lora_file_is_read_again(layered, flux):
    import os

    from safetensors.torch import save_file

    path = layered.lora_dir / "rewritten.safetensors"
    save_file(random_lora(flux.model, 11), str(path))
    first = layered.EditLabLayeredAdapters.fingerprint_inputs(pattern_shift_lora="rewritten.safetensors",
                                                              consistency_lora="None")
    save_file(random_lora(flux.model, 12, rank=3), str(path))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    second = layered.EditLabLayeredAdapters.fingerprint_inputs(pattern_shift_lora="rewritten.safetensors",
                                                               consistency_lora="None")
    assert first != second
