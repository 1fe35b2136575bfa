"""The LODA sampler on the tiny SD1.5: with 0 steps it is the wrapped sampler bit for bit; it runs around euler,
dpmpp_2m, uni_pc and an ancestral sampler; its step raises the maps' separation (harmonic-mean pairwise KL) by what
its gradient promises, on 5 seeds; bad input named."""
import pytest
import torch

PROMPT = "a photo of a dog and a cat"


pytestmark = pytest.mark.usefixtures("server_mode")  # nodes run as the server runs them


@pytest.fixture(scope="module")
def nodes(comfy_host):
    from editlab.nodes import conceptsplit

    return conceptsplit


@pytest.fixture(scope="module")
def sd15(comfy_host):
    from editlab.models.tiny import build_tiny_models

    with torch.inference_mode():
        return build_tiny_models("sd15", 0)


def _conds(models):
    clip = models.clip
    return (clip.encode_from_tokens_scheduled(clip.tokenize(PROMPT)),
            clip.encode_from_tokens_scheduled(clip.tokenize("")))


def _loda(nodes, models, sampler, n, **over):
    args = dict(sampler=sampler, clip=models.clip, prompt=PROMPT, concepts="dog, cat", loda_steps=n, step_size=20.0,
                threshold=3.0, afg_strength=0.0)
    return nodes.EditLabLODA.execute(**{**args, **over}).result[0]


def _run(model, models, sampler, seed=0, steps=4, cfg=3.0):
    import comfy.sample
    import comfy.samplers

    latent = torch.zeros(1, 4, 8, 8)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", steps)
    return comfy.sample.sample_custom(model, comfy.sample.prepare_noise(latent, seed), cfg, sampler, sigmas,
                                      *_conds(models), latent, disable_pbar=True, seed=seed)


def test_zero_steps_is_the_wrapped_sampler_bit_for_bit(nodes, sd15):
    import comfy.samplers

    for name in ("euler", "dpmpp_2m"):
        plain = comfy.samplers.sampler_object(name)
        assert torch.equal(_run(sd15.model, sd15, _loda(nodes, sd15, plain, 0)), _run(sd15.model, sd15, plain))


@pytest.mark.parametrize("name", ["euler", "dpmpp_2m", "uni_pc", "euler_ancestral"])
def test_runs_around_any_sampler(nodes, sd15, name):
    import comfy.samplers

    plain = comfy.samplers.sampler_object(name)
    out = _run(sd15.model, sd15, _loda(nodes, sd15, plain, 2))
    assert out.isfinite().all() and not torch.equal(out, _run(sd15.model, sd15, plain))


def _by_hand(sampler_name: str, n: int, concepts: list, layers: dict, gradient: bool = True,
             chunk_seeds: bool = True):
    """LODA around ``sampler_name`` written out as a plain k-diffusion sampler function (not through loda_sample): for
    each of the first n steps the latent moves by -eta_i (1 + sigma_i^2) grad (the authors' step on the model's own
    latent, eta_i = 20 sqrt(linspace(1, 0.5, T))[i]), then one step of the sampler from that latent, its history
    restarted; then the rest in one run. Euler: x + (x - D) / sigma * (sigma' - sigma); DPM-Solver++(2M): the
    published two-step update in t = -log(sigma); Euler ancestral (eta 1): down to sigma_down = sqrt(sigma'^2 -
    sigma_up^2), sigma_up = min(sigma', sqrt(sigma'^2 (sigma^2 - sigma'^2) / sigma^2)), then fresh noise times sigma_up
    from the host's noise sampler (its seeding differs between hosts) seeded with the run's seed + the chunk's first
    step (``chunk_seeds``; else the seed itself in every chunk). ``gradient`` False: the same steps and restarts without the latent moves. The gradient itself comes
    from ``loda_gradient`` (tested apart)."""
    import math

    import comfy.samplers

    from editlab.models.conceptsplit.loda import loda_gradient
    from editlab.models.frozen import frozen_for_autograd

    def euler(model, x, sigmas, extra, seed):
        s_in = x.new_ones([x.shape[0]])
        for i in range(len(sigmas) - 1):
            d = (x - model(x, sigmas[i] * s_in, **extra)) / sigmas[i]
            x = x + d * (sigmas[i + 1] - sigmas[i])
        return x

    def dpmpp_2m(model, x, sigmas, extra, seed):
        s_in = x.new_ones([x.shape[0]])
        t = lambda sigma: -sigma.log()
        old = None
        for i in range(len(sigmas) - 1):
            denoised = model(x, sigmas[i] * s_in, **extra)
            h = t(sigmas[i + 1]) - t(sigmas[i])
            if old is None or sigmas[i + 1] == 0:
                used = denoised
            else:
                r = (t(sigmas[i]) - t(sigmas[i - 1])) / h
                used = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old
            x = (sigmas[i + 1] / sigmas[i]) * x - torch.expm1(-h) * used
            old = denoised
        return x

    def euler_ancestral(model, x, sigmas, extra, seed):
        from comfy.k_diffusion.sampling import default_noise_sampler

        s_in = x.new_ones([x.shape[0]])
        noise_sampler = default_noise_sampler(x, seed=seed)
        for i in range(len(sigmas) - 1):
            s, s1 = float(sigmas[i]), float(sigmas[i + 1])
            denoised = model(x, sigmas[i] * s_in, **extra)
            up = min(s1, math.sqrt(s1 ** 2 * (s ** 2 - s1 ** 2) / s ** 2))
            down = math.sqrt(s1 ** 2 - up ** 2)
            if down == 0:
                x = denoised
            else:
                x = x + (x - denoised) / s * (down - s) + noise_sampler(sigmas[i], sigmas[i + 1]) * up
        return x

    step = {"euler": euler, "dpmpp_2m": dpmpp_2m, "euler_ancestral": euler_ancestral}[sampler_name]

    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None):
        total = len(sigmas) - 1
        seed = int(extra_args["seed"])
        for i in range(n):
            grad, _ = loda_gradient(model.inner_model, x, sigmas[i], extra_args, concepts, layers, 3.0,
                                    frozen_for_autograd)
            eta = 20.0 * math.sqrt(1.0 - 0.5 * i / (total - 1))
            if gradient:
                x = x - eta * (1.0 + float(sigmas[i]) ** 2) * grad
            x = step(model, x, sigmas[i:i + 2], extra_args, seed + i if chunk_seeds else seed)
        return step(model, x, sigmas[n:], extra_args, seed + n if chunk_seeds else seed)

    return comfy.samplers.KSAMPLER(sample)


@pytest.mark.parametrize("name", ["euler", "dpmpp_2m", "euler_ancestral"])
def test_loda_around_a_sampler_equals_the_steps_written_out(nodes, sd15, name):
    """LODA wrapping euler, a multistep sampler and an ancestral one gives what the hand-written sampler above gives
    (CFG 3, 2 of 4 steps with LODA): the chunking, the noise scaling between chunks, the step schedule and space, the
    restart of the multistep history and the fresh noise of each chunk are the wrapper's."""
    import comfy.samplers

    from editlab.models.conceptsplit.patch import named_cross_attention_layers
    from editlab.models.saedit.tokens import prompt_tokens, word_positions

    encoded = prompt_tokens(sd15.clip, PROMPT)
    concepts = [word_positions(sd15.clip, encoded, w) for w in ("dog", "cat")]
    layers = named_cross_attention_layers(sd15.model.model.diffusion_model)
    got = _run(sd15.model, sd15, _loda(nodes, sd15, comfy.samplers.sampler_object(name), 2))
    want = _run(sd15.model, sd15, _by_hand(name, 2, concepts, layers))
    steps_only = _run(sd15.model, sd15, _by_hand(name, 2, concepts, layers, gradient=False))
    # The tiny model's maps are nearly uniform: the LODA steps move the result by ~1e-2 on latents of ~200 (fp32
    # rounding: ~1e-4 there). The wrapper must match the hand-written sampler to 5% of what the latent moves alone
    # change (the same sampler, chunks and restarts without them), so a step of another size or in another space, or
    # a wrong chunk join, fails; the restarted history alone (dpmpp_2m) is not counted as the steps' effect.
    effect, gap = float((want - steps_only).abs().max()), float((got - want).abs().max())
    assert effect > 1e-3 and gap <= 0.05 * effect, (gap, effect)
    if name == "euler_ancestral":  # one noise stream per chunk: the run's seed would repeat the first chunk's noise
        same_seed = _run(sd15.model, sd15, _by_hand(name, 2, concepts, layers, chunk_seeds=False))
        assert float((got - same_seed).abs().max()) > 20 * max(gap, 1e-4)


def _layer_sizes(models):
    """{layer name: (h, w)} of the UNet's cross-attention layers for an 8x8 latent, read from the host's own patch
    arguments during one sampling run."""
    sizes = {}

    def seen(out, extra):
        block = extra["block"]
        sizes[f"{block[0]}.{block[1]}.{extra.get('block_index', 0)}"] = tuple(extra["activations_shape"][-2:])
        return out

    m = models.model.clone()
    m.set_model_attn2_output_patch(seen)
    import comfy.samplers

    _run(m, models, comfy.samplers.sampler_object("euler"), steps=1)
    return sizes


def test_the_loda_step_moves_the_maps_apart_by_what_its_gradient_promises(sd15):
    """The authors' first step (20 on the model's own latent: 20 (1 + sigma^2) on the sampler's, at sigma_max, CFG
    3) measured where it acts: the harmonic-mean KL of the smoothed maps LODA reads (the authors' quarter-resolution
    layers, conditional rows), re-read through the host's model after the move, rises by what first order promises,
    |step| * |dL/dx|^2, to 10%, on each of 5 seeds. A step up the loss, none, or one in the sampler's space (1 / (1 +
    sigma^2) of it) fails. Measured: within 1-4% (float32 rounding of the re-read maps is ~3e-10 of KL; the step moves
    it by 1.3e-8 to 6e-8, KL ~1e-5 to 1e-4).

    Why not the maps some sampler steps later, with and without LODA: on the tiny model's nearly uniform random maps
    that difference is ~1e-4 of KL and its sign follows the machine's float rounding (the same torch on AVX2, AVX-512
    and ATEN_CPU_CAPABILITY=default gives different signs). The node takes exactly these steps
    (``test_loda_around_a_sampler_equals_the_steps_written_out``)."""
    import comfy.samplers

    from editlab.models.conceptsplit.loda import gaussian_smooth, harmonic_mean_kl, loda_gradient, loda_step
    from editlab.models.conceptsplit.patch import named_cross_attention_layers
    from editlab.models.frozen import frozen_for_autograd
    from editlab.models.saedit.tokens import prompt_tokens, word_positions

    encoded = prompt_tokens(sd15.clip, PROMPT)
    concepts = [word_positions(sd15.clip, encoded, w) for w in ("dog", "cat")]
    layers = named_cross_attention_layers(sd15.model.model.diffusion_model)
    measured = []

    def kl(maps):
        return float(harmonic_mean_kl(gaussian_smooth(maps.double())))

    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None):
        def read(at):
            return loda_gradient(model.inner_model, at, sigmas[0], extra_args, concepts, layers, 3.0,
                                 frozen_for_autograd)

        grad, before = read(x)
        _, after = read(loda_step(model.inner_model.inner_model.model_sampling, x, sigmas[0], grad, 20.0))
        promised = 20.0 * (1.0 + float(sigmas[0]) ** 2) * float(grad.double().square().sum())
        measured.append((kl(after) - kl(before), promised))
        return x

    for seed in range(5):
        _run(sd15.model, sd15, comfy.samplers.KSAMPLER(sample), seed)
    assert all(promised > 0 and abs(moved - promised) <= 0.1 * promised for moved, promised in measured), measured


@pytest.mark.parametrize("family", ["sd15", "flux"])
def test_the_step_is_taken_in_the_models_own_latent(comfy_host, family):
    """The authors step the network's input z; ComfyUI samples x = z / c_in. Written out from the parametrisation:
    eps/v models (SD) have z = x / sqrt(1 + sigma^2), so the step on x is -eta (1 + sigma^2) dL/dx; flow models
    (Flux) have z = x, the step unscaled. Checked on the host's own model_sampling of each family."""
    from editlab.models.conceptsplit.loda import loda_step
    from editlab.models.tiny import build_tiny_models

    sampling = build_tiny_models(family, 0).model.get_model_object("model_sampling")
    x, grad = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    for sigma in (float(sampling.sigma_max), 1.0, 0.3):
        factor = (1.0 + sigma ** 2) if family == "sd15" else 1.0
        want = x - 20.0 * factor * grad
        assert torch.allclose(loda_step(sampling, x, torch.tensor(sigma), grad, 20.0), want, rtol=1e-5, atol=1e-5)


def test_the_gradient_runs_the_conditional_pass_only(nodes, sd15):
    """The authors take LODA's gradient on the conditional branch; the unconditional one costs memory for nothing.
    The diffusion model's calls are recorded: with gradients on, one row (cond); the sampling steps keep CFG (two)."""
    import comfy.samplers

    calls = []

    def record(apply, args):
        calls.append((torch.is_grad_enabled(), args["input"].shape[0]))
        return apply(args["input"], args["timestep"], **args["c"])

    m = sd15.model.clone()
    m.set_model_unet_function_wrapper(record)
    _run(m, sd15, _loda(nodes, sd15, comfy.samplers.sampler_object("euler"), 2))
    with_grad = [rows for grad, rows in calls if grad]
    assert with_grad == [1, 1], calls
    assert all(rows == 2 for grad, rows in calls if not grad), calls


def test_the_gradient_pass_keeps_nothing_past_the_maps_it_reads(nodes, sd15, monkeypatch):
    """The loss reads the authors' layers only (the tiny UNet at an 8x8 latent: its 4x4 level): the up blocks above
    that resolution run with autograd off in the gradient pass (nothing of them kept for backward: on the full-size
    SDXL at 1024 px that pass held 1.63x plain sampling's peak), and the LODA steps land on the same latent, bit for
    bit, as with the whole network recorded."""
    import comfy.samplers

    from editlab.models.conceptsplit import loda

    net = sd15.model.model.diffusion_model
    top = [m for block in net.output_blocks for m in block if type(m).__name__ == "SpatialTransformer"][-1]
    grad_modes = []
    hook = top.register_forward_pre_hook(lambda m, a: grad_modes.append(torch.is_grad_enabled()))
    try:
        plain = comfy.samplers.sampler_object("euler")
        stopped = _run(sd15.model, sd15, _loda(nodes, sd15, plain, 2), steps=3)
        stopped_modes, grad_modes[:] = list(grad_modes), []
        monkeypatch.setattr(loda.MapTap, "STOP_EARLY", False)
        whole = _run(sd15.model, sd15, _loda(nodes, sd15, plain, 2), steps=3)
    finally:
        hook.remove()
    assert True in grad_modes  # the whole network recorded: the top up block too, in the gradient passes
    assert stopped_modes and True not in stopped_modes  # stopped before it
    assert torch.equal(stopped, whole)


def test_afg_acts_after_the_loda_steps_and_strength_zero_is_off(nodes, sd15):
    """AFG runs at every cross-attention layer of the steps after LODA's, on masks covering part of the image, and
    changes the result; afg_strength 0 installs nothing. (What it does to the attention is measured apart, from the
    block's output: test_afg_confines_the_tova_features_measured_at_the_blocks_output.)"""
    import comfy.samplers

    plain = comfy.samplers.sampler_object("euler")
    guided = _loda(nodes, sd15, plain, 2, afg_strength=5.0)
    out = _run(sd15.model, sd15, guided)
    afg, = guided.afg_patches
    assert len(afg.outside) >= 2 * 7  # every cross-attention layer of the two remaining steps
    assert 0.0 < float(afg.masks.mean()) < 0.5
    unguided = _run(sd15.model, sd15, _loda(nodes, sd15, plain, 2))
    assert not torch.equal(out, unguided)
    zero = _loda(nodes, sd15, plain, 2, afg_strength=0.0)
    assert torch.equal(_run(sd15.model, sd15, zero), unguided) and not zero.afg_patches


@pytest.mark.parametrize("mode", ["soft", "hard (authors)"])
def test_afg_confines_the_tova_features_measured_at_the_blocks_output(nodes, sd15, tmp_path, mode):
    """With ToVA Apply on the model, LODA's attention fixing guidance lowers the attention a concept's personalised
    value gets outside the concept's mask: measured from what the host's own transformer block hands on (the input of
    its norm3, x + attn1 + attn2 after every patch), never from AFG's bookkeeping. A conditional call after the LODA
    steps, in a real sampling run through both nodes, is recorded at the first cross-attention layer AFG acts on and
    run again on the same inputs with the patches the nodes installed, ToVA's removed or AFG's removed. ToVA's
    contribution at each position is the difference with and without its patch (to_out(P' delta), delta on the dog's
    tokens); its share outside the dog's mask falls with AFG (hard: to ~0). AFG over the base values (P'v + P delta)
    would leave that contribution as it is: this test fails on it."""
    import comfy.samplers
    import folder_paths

    from editlab.models.conceptsplit.loda import AFGPatch
    from editlab.models.conceptsplit.patch import ToVAPatch, named_cross_attention_layers
    from editlab.models.conceptsplit.tova import ValueLoRA, save_tova

    layers = named_cross_attention_layers(sd15.model.model.diffusion_model)
    with torch.inference_mode(False):
        a = ValueLoRA("dog", "sd15", 4, next(iter(layers.values())).to_v.weight.shape[1],
                      {n: attn.to_v.weight.shape[0] for n, attn in layers.items()}, 1)
        with torch.no_grad():
            for p in a.up:
                p.normal_(generator=torch.Generator().manual_seed(2))
    save_tova(a.eval().requires_grad_(False), tmp_path / "dog_afg.safetensors")
    folder_paths.folder_names_and_paths[nodes.TOVA_FOLDER] = ([str(tmp_path)], {".safetensors"})
    adapter, = nodes.EditLabToVALoader.execute(adapter_name="dog_afg.safetensors").result
    tova_model, = nodes.EditLabToVAApply.execute(model=sd15.model, clip=sd15.clip, prompt=PROMPT, strength=1.0,
                                                 adapter_1=adapter).result

    def at_an_afg_layer(options):
        owners = [getattr(p, "owner", None) for p in options.get("patches", {}).get("attn2_patch", [])]
        afg = [o for o in owners if isinstance(o, AFGPatch)]
        return bool(afg) and f"{options['block'][0]}.{options['block'][1]}.{options.get('block_index', 0)}" \
            in afg[0].layers

    blocks = [m for m in sd15.model.model.diffusion_model.modules() if type(m).__name__ == "BasicTransformerBlock"]
    guided = _loda(nodes, sd15, comfy.samplers.sampler_object("euler"), 2, afg_strength=3.0, afg_mode=mode)
    block, args, kwargs, options = _first_call(blocks, at_an_afg_layer, lambda: _run(tova_model, sd15, guided))
    afg_patch, = guided.afg_patches

    def handed_on(keep):
        """norm3's input when the block runs with the installed attn2 patches whose owner ``keep`` accepts."""
        patches = dict(options["patches"])
        for kind in ("attn2_patch", "attn2_output_patch"):
            patches[kind] = [p for p in patches.get(kind, []) if keep(getattr(p, "owner", None))]
        return _input_of(block.norm3, lambda: block(args[0], context=kwargs["context"],
                                                    transformer_options={**options, "patches": patches}))

    every = lambda o: True
    no_tova = lambda o: not isinstance(o, ToVAPatch)
    no_afg = lambda o: not isinstance(o, AFGPatch)
    neither = lambda o: no_tova(o) and no_afg(o)
    rows = _conditional_rows(options, args[0].shape[0])
    with_afg = (handed_on(every) - handed_on(no_tova))[rows].norm(dim=-1)  # (rows, positions)
    without_afg = (handed_on(no_afg) - handed_on(neither))[rows].norm(dim=-1)
    hw = tuple(int(v) for v in options["activations_shape"][-2:])
    assert hw[0] * hw[1] == with_afg.shape[-1]
    mask = torch.nn.functional.interpolate(afg_patch.masks[None].float(), size=hw, mode="nearest")[0, 0] \
        .reshape(-1) > 0.5  # the dog's mask at this layer
    assert 0 < int(mask.sum()) < mask.numel()
    _assert_confined(with_afg, without_afg, mask, mode, f"rows {rows}, layer {hw}")


def share_of(contribution, mask) -> float:
    """The share of a (rows, positions) contribution that lies outside ``mask`` (positions)."""
    return float(contribution[:, ~mask].sum() / contribution.sum())


def _assert_confined(with_afg, without_afg, mask, mode, where):
    """ToVA's contribution outside the concept's mask: a smaller share with AFG than without (hard: ~none)."""
    print(f"{mode}: ToVA's share outside the dog's mask {share_of(with_afg, mask):.4f} with AFG, "
          f"{share_of(without_afg, mask):.4f} without; {where}")
    assert float(without_afg.sum()) > 0
    assert share_of(with_afg, mask) < 0.9 * share_of(without_afg, mask)
    if mode == "hard (authors)":
        assert share_of(with_afg, mask) < 1e-4


def _first_call(modules, wanted, run):
    """(module, args, kwargs, transformer options) of the first forward call of one of ``modules`` whose transformer
    options ``wanted`` accepts while ``run()`` runs; the tensors cloned, the options copied (the host updates its dict
    block by block)."""
    recorded = []

    def record(module, args, kwargs):
        options = kwargs.get("transformer_options", {})
        if not recorded and wanted(options):
            clone = lambda v: v.clone() if torch.is_tensor(v) else v
            recorded.append((module, [clone(a) for a in args],
                             {k: clone(v) for k, v in kwargs.items() if k != "transformer_options"}, dict(options)))

    hooks = [m.register_forward_pre_hook(record, with_kwargs=True) for m in modules]
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    assert recorded, "no such call was recorded"
    return recorded[0]


def _input_of(module, call):
    """What ``module`` is called with (its first argument) while ``call()`` runs, without autograd."""
    seen = []
    hook = module.register_forward_pre_hook(lambda m, a: seen.append(a[0].clone()))
    try:
        with torch.no_grad():
            call()
    finally:
        hook.remove()
    return seen[0]


def _conditional_rows(options, batch: int) -> list[int]:
    """The batch rows of the conditional chunks (``cond_or_uncond`` 0), written out."""
    chunks = options["cond_or_uncond"]
    per = batch // len(chunks)
    return [i * per + j for i, c in enumerate(chunks) if c == 0 for j in range(per)]


@pytest.mark.parametrize("arch,down_only", [("sdxl", True), ("sd15", False)])
def test_the_node_reads_sdxls_maps_from_its_down_blocks_only(nodes, sd15, arch, down_only, monkeypatch):
    """The LODA node, given an SDXL model, reads the concepts' maps from the down (input) blocks only, as the authors
    do on SDXL; on SD1.5 the up blocks' layers at that resolution count too."""
    import comfy.samplers

    from editlab.models.conceptsplit import loda
    from editlab.models.tiny import build_tiny_models

    if arch == "sd15":
        models = sd15
    else:
        with torch.inference_mode():
            models = build_tiny_models("sdxl", 0)
    taps = []
    real_init = loda.MapTap.__init__

    def spy(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        taps.append(self)

    monkeypatch.setattr(loda.MapTap, "__init__", spy)
    _run(models.model, models, _loda(nodes, models, comfy.samplers.sampler_object("euler"), 1), steps=2)
    assert taps and all(t.down_only is down_only for t in taps)
    names = {n for t in taps for n in t.layers}
    assert names and all(n.startswith("input.") for n in names) == down_only, sorted(names)


def test_bad_input(nodes, sd15):
    import comfy.samplers

    from editlab.nodes.common import EditLabInputError

    plain = comfy.samplers.sampler_object("euler")
    with pytest.raises(EditLabInputError, match="input 'concepts'.*2 to"):
        _loda(nodes, sd15, plain, 2, concepts="dog")
    with pytest.raises(EditLabInputError, match="input 'concepts'.*'horse'.*not a word"):
        _loda(nodes, sd15, plain, 2, concepts="dog, horse")
    with pytest.raises(EditLabInputError, match="input 'loda_steps'.*at most the 4"):
        _run(sd15.model, sd15, _loda(nodes, sd15, plain, 5))


# -- Flux: maps from the double blocks' joint attention --------------------------------------------------------------

@pytest.fixture(scope="module")
def flux(comfy_host):
    from editlab.models.tiny import build_tiny_models

    with torch.inference_mode():
        return build_tiny_models("flux", 0)


def _flux_run(model, models, sampler, seed=0, steps=4, cfg=2.0):
    import comfy.sample
    import comfy.samplers

    latent = torch.zeros(1, 16, 8, 8)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", steps)
    return comfy.sample.sample_custom(model, comfy.sample.prepare_noise(latent, seed), cfg, sampler, sigmas,
                                      *_conds(models), latent, disable_pbar=True, seed=seed)


def test_flux_zero_steps_is_the_wrapped_sampler_and_steps_run(nodes, flux):
    import comfy.samplers

    for name in ("euler", "dpmpp_2m", "uni_pc", "euler_ancestral"):
        plain = comfy.samplers.sampler_object(name)
        base = _flux_run(flux.model, flux, plain)
        assert torch.equal(_flux_run(flux.model, flux, _loda(nodes, flux, plain, 0)), base)
        out = _flux_run(flux.model, flux, _loda(nodes, flux, plain, 2, step_size=20.0))
        assert out.isfinite().all() and not torch.equal(out, base)


def test_flux_maps_are_further_apart_after_the_loda_steps(nodes, flux):
    import comfy.samplers

    from editlab.models.conceptsplit.flux import FluxMapTap, double_block_layers, image_grid, installed
    from editlab.models.conceptsplit.loda import gaussian_smooth, harmonic_mean_kl
    from editlab.models.saedit.tokens import prompt_tokens, word_positions

    net = flux.model.model.diffusion_model
    blocks = double_block_layers(net)
    encoded = prompt_tokens(flux.clip, PROMPT)
    concepts = [word_positions(flux.clip, encoded, w) for w in ("dog", "cat")]
    sigmas = comfy.samplers.calculate_sigmas(flux.model.get_model_object("model_sampling"), "simple", 4)
    n = 2

    def kl_at_step_n(sampler, seed):
        at_n = lambda options: abs(float(options["sigmas"].reshape(-1)[0]) - float(sigmas[n])) < 1e-6
        tap = FluxMapTap(concepts, blocks, (8, 8), image_grid(net, (8, 8)), when=at_n)
        m = flux.model.clone()
        m.model_options["transformer_options"] = installed(m.model_options["transformer_options"], tap)
        with torch.no_grad():
            _flux_run(m, flux, sampler, seed)
        assert tap.collected
        return float(harmonic_mean_kl(gaussian_smooth(tap.maps())))

    plain = comfy.samplers.sampler_object("euler")
    ratios = []
    for seed in range(5):
        with_loda = kl_at_step_n(_loda(nodes, flux, plain, n, step_size=20.0), seed)
        without = kl_at_step_n(plain, seed)
        ratios.append(with_loda / without)
    # measured 1.19 to 2.28 (the tiny Flux's maps move far more than the tiny UNet's): each seed apart, and the mean
    # by at least 10%; a step up the loss, none, or a hundredth of the authors' fails
    assert all(r > 1.0 for r in ratios) and sum(ratios) / len(ratios) > 1.1, ratios


def test_flux_afg_acts_after_the_loda_steps(nodes, flux):
    """Flux AFG runs in the double blocks of the steps after LODA's and changes the result. (What it does to the
    attention is measured apart, from the block's attention output:
    test_flux_afg_confines_the_tova_features_measured_at_the_blocks_attention.)"""
    import comfy.samplers

    plain = comfy.samplers.sampler_object("euler")
    guided = _loda(nodes, flux, plain, 2, step_size=20.0, afg_strength=5.0)
    guided.inspect_afg = 8  # record the first calls (dense products: off unless asked)
    out = _flux_run(flux.model, flux, guided)
    afg, = guided.afg_patches
    assert 0 < len(afg.outside) <= 8  # the calls it served (the first 8 at most are recorded)
    unguided = _flux_run(flux.model, flux, _loda(nodes, flux, plain, 2, step_size=20.0))
    assert out.isfinite().all() and not torch.equal(out, unguided)


@pytest.mark.parametrize("mode", ["soft", "hard (authors)"])
def test_flux_afg_confines_the_tova_features_measured_at_the_blocks_attention(nodes, flux, mode):
    """Flux: with ToVA Apply on the model, LODA's AFG lowers the attention image tokens give a concept's personalised
    text values outside the concept's mask, measured from the host's own double block (the image tokens' attention
    output, the input of its img_attn.proj), never from AFG's bookkeeping. A conditional call after the LODA steps is
    recorded at the first double block AFG acts on and run again on the same inputs with the installed attention
    override chain (AFG in front of ToVA), ToVA's link removed, AFG's removed, or neither: ToVA's contribution at each
    image token is the difference with and without ToVA (P' delta on the dog's text tokens); its share outside the
    dog's mask falls with AFG (hard: to ~0)."""
    import copy

    import comfy.samplers

    from editlab.models.conceptsplit.flux import FluxAFG, double_block_layers, value_width
    from editlab.models.conceptsplit.tova import ValueLoRA

    net = flux.model.model.diffusion_model
    blocks = double_block_layers(net)
    hidden = value_width(next(iter(blocks.values())))
    with torch.inference_mode(False):
        a = ValueLoRA("dog", "flux", 4, hidden, {n: hidden for n in blocks}, 1)
        with torch.no_grad():
            for p in a.up:
                p.normal_(generator=torch.Generator().manual_seed(2))
    adapter = nodes.LoadedToVA(a.eval().requires_grad_(False), "dog_flux_afg.safetensors")
    tova_model, = nodes.EditLabToVAApply.execute(model=flux.model, clip=flux.clip, prompt=PROMPT, strength=1.0,
                                                 adapter_1=adapter).result
    def at_an_afg_block(options):
        head = options.get("optimized_attention_override")
        return isinstance(head, FluxAFG) and f"double.{options.get('block_index')}" in head.blocks

    guided = _loda(nodes, flux, comfy.samplers.sampler_object("euler"), 2, step_size=20.0, afg_strength=3.0,
                   afg_mode=mode)
    block, _, inputs, options = _first_call(net.double_blocks, at_an_afg_block,
                                            lambda: _flux_run(tova_model, flux, guided))
    afg = options["optimized_attention_override"]
    tova = afg.previous
    assert tova is not None and not isinstance(tova, FluxAFG)
    afg_alone = copy.copy(afg)
    afg_alone.previous = tova.previous

    def attention_out(override):
        """The image tokens' attention output (img_attn.proj's input) with ``override`` heading the chain."""
        opts = {k: v for k, v in options.items() if k != "optimized_attention_override"}
        if override is not None:
            opts["optimized_attention_override"] = override
        # the block adds its residuals in place: fresh copies of its inputs for every run
        fresh = lambda: {k: (v.clone() if torch.is_tensor(v) else v) for k, v in inputs.items()}
        return _input_of(block.img_attn.proj, lambda: block(**fresh(), transformer_options=opts))

    rows = _conditional_rows(options, inputs["img"].shape[0])
    with_afg = (attention_out(afg) - attention_out(afg_alone))[rows].norm(dim=-1)  # (rows, image tokens)
    without_afg = (attention_out(tova) - attention_out(tova.previous))[rows].norm(dim=-1)
    mask = torch.nn.functional.interpolate(afg.masks[None].float(), size=afg.grid, mode="nearest")[0, 0] \
        .reshape(-1) > 0.5  # the dog's mask on the image token grid
    assert with_afg.shape[-1] == mask.numel() and 0 < int(mask.sum()) < mask.numel()
    _assert_confined(with_afg, without_afg, mask, mode, f"rows {rows}, grid {afg.grid}")


def test_flux_gradient_pass_keeps_nothing_past_the_double_blocks(nodes, flux, monkeypatch):
    """On Flux the maps come from the double blocks: from the first single block's attention on, the network runs
    with autograd off in LODA's gradient pass (Flux dev: 38 of its 57 blocks keep nothing for backward but the first
    one's projections before its attention), and the LODA steps land on the same latent, bit for bit, as with the
    whole network recorded."""
    import comfy.samplers

    from editlab.models.conceptsplit.flux import FluxMapTap

    # the last single block's output projection: after its attention call, where the tap sees the single blocks
    last = flux.model.model.diffusion_model.single_blocks[-1].linear2
    grad_modes = []
    hook = last.register_forward_pre_hook(lambda m, a: grad_modes.append(torch.is_grad_enabled()))
    try:
        plain = comfy.samplers.sampler_object("euler")
        stopped = _flux_run(flux.model, flux, _loda(nodes, flux, plain, 2, step_size=20.0), steps=3)
        stopped_modes, grad_modes[:] = list(grad_modes), []
        monkeypatch.setattr(FluxMapTap, "STOP_EARLY", False)
        whole = _flux_run(flux.model, flux, _loda(nodes, flux, plain, 2, step_size=20.0), steps=3)
    finally:
        hook.remove()
    assert True in grad_modes  # the whole network recorded: the last single block too, in the gradient passes
    assert stopped_modes and True not in stopped_modes
    assert torch.equal(stopped, whole)
