"""ChronoEdit on the tiny Wan 2.1 I2V (real ComfyUI classes, random weights).

References are the host's own: WanImageToVideo + ScaleROPE + KSampler for the plain 2-frame run, and a hand-written
euler loop run inside the host's guider for the restart. Token counts come from a diffusion-model wrapper."""
import logging

import pytest
import torch

PROMPT = "the cup is now red"
W, H = 48, 32  # px: 6x4 latent cells, 3x2 tokens per frame
FRAMES = 5  # latent frames with reasoning (17 video frames): small and quick


pytestmark = pytest.mark.usefixtures("server_mode")  # nodes run as the server runs them


@pytest.fixture(scope="module")
def nodes(comfy_host):
    from editlab.nodes import chronoedit

    return chronoedit


@pytest.fixture(scope="module")
def wan(comfy_host):
    from editlab.models.tiny import build_tiny_models

    with torch.inference_mode():
        return build_tiny_models("wan21_i2v", 0)


@pytest.fixture(scope="module")
def conds(wan):
    clip = wan.clip
    with torch.inference_mode():
        return (clip.encode_from_tokens_scheduled(clip.tokenize(PROMPT)),
                clip.encode_from_tokens_scheduled(clip.tokenize("")))


@pytest.fixture(scope="module")
def image():
    gen = torch.Generator().manual_seed(3)
    return torch.rand((1, H, W, 3), generator=gen)


def _cond(nodes, wan, conds, image, reasoning, frames=FRAMES, **over):
    args = dict(positive=conds[0], negative=conds[1], vae=wan.vae, image=image, target_area=W * H, width=W, height=H,
                reasoning=reasoning, reasoning_frames=frames)
    return nodes.EditLabChronoEditConditioning.execute(**{**args, **over}).result


def _sample(nodes, model, c, steps=4, k=2, sampler="euler", cfg=2.0, seed=7, scheduler="simple", **extra):
    """The sampler node; the tiny conditionings carry no CLIP vision features, so the dry-run switch is on unless
    a test says otherwise."""
    extra.setdefault("without_clip_vision", True)
    return nodes.EditLabTemporalReasoningSampler.execute(
        model=model, positive=c[0], negative=c[1], latent=c[2], seed=seed, steps=steps, cfg=cfg, sampler_name=sampler,
        scheduler=scheduler, reasoning_steps=k, **extra).result


class Recorder:
    """A DIFFUSION_MODEL wrapper on a clone: every call's input (B, 16 + concat, T, h, w) and its token count."""

    def __init__(self, model):
        import comfy.patcher_extension

        self.calls = []
        self.model = model.clone()
        self.model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test_recorder", self)

    def __call__(self, executor, x, timestep, context, *args, **kwargs):
        options = args[2] if len(args) > 2 else kwargs.get("transformer_options", {})
        self.calls.append({"x": x.detach().clone(), "sigma": float(options["sigmas"].reshape(-1)[0]),
                           "tokens": x.shape[2] * (x.shape[3] // 2) * (x.shape[4] // 2),
                           "rope": dict(options.get("rope_options", {}) or {})})
        return executor(x, timestep, context, *args, **kwargs)


def _host_plain(wan, conds, image, frames, steps, cfg, sampler, seed, slice_to_2=False):
    """The plain 2-frame edit with the host's nodes: WanImageToVideo (length 4(T-1)+1), ScaleROPE putting the edit
    at position 7 (or T-1), the input's latent at frame 0 with a frame-0 noise mask, KSampler; frame 0 of the
    result set to the input's latent (the pin)."""
    import comfy.utils
    import node_helpers
    import nodes as host_nodes
    from comfy_extras.nodes_rope import ScaleROPE
    from comfy_extras.nodes_wan import WanImageToVideo

    pos, neg, latent = WanImageToVideo.execute(conds[0], conds[1], wan.vae, W, H, 4 * (frames - 1) + 1, 1,
                                               start_image=image).result
    concat = pos[0][1]["concat_latent_image"]
    if slice_to_2:
        values = {"concat_latent_image": concat[:, :, [0, -1]],
                  "concat_mask": pos[0][1]["concat_mask"][:, :, [0, -1]]}
        pos = node_helpers.conditioning_set_values(pos, values)
        neg = node_helpers.conditioning_set_values(neg, values)
    samples = torch.zeros((1, 16, 2, H // 8, W // 8))
    samples[:, :, 0] = concat[:, :, 0]
    mask = torch.ones((1, 1, 2, H // 8, W // 8))
    mask[:, :, 0] = 0
    last = 7 if frames == 2 else frames - 1
    model = ScaleROPE.execute(wan.model, 1.0, 0.0, 1.0, 0.0, float(last), 0.0).result[0]
    comfy.utils.PROGRESS_BAR_ENABLED = False
    out = host_nodes.common_ksampler(model, seed, steps, cfg, sampler, "simple", pos, neg,
                                     {"samples": samples, "noise_mask": mask})[0]["samples"]
    out[:, :, 0] = concat[:, :, 0]
    return out


# -- layout -----------------------------------------------------------------------------------------------------------

def test_layout_matches_the_hosts_wan_image_to_video(nodes, wan, conds, image):
    from comfy_extras.nodes_wan import WanImageToVideo

    for reasoning, frames in ((False, 2), (True, FRAMES)):
        pos, neg, latent = _cond(nodes, wan, conds, image, reasoning)
        ref = WanImageToVideo.execute(conds[0], conds[1], wan.vae, W, H, 4 * (frames - 1) + 1, 1,
                                      start_image=image).result[0]
        for c in (pos, neg):
            assert torch.equal(c[0][1]["concat_latent_image"], ref[0][1]["concat_latent_image"])
            assert torch.equal(c[0][1]["concat_mask"], ref[0][1]["concat_mask"])
        s = latent["samples"]
        assert s.shape == (1, 16, frames, H // 8, W // 8)
        assert torch.equal(s[:, :, 0], ref[0][1]["concat_latent_image"][:, :, 0]) and not s[:, :, 1:].any()
        assert latent["noise_mask"][:, :, 0].eq(0).all() and latent["noise_mask"][:, :, 1:].eq(1).all()


def test_size_from_target_area_keeps_the_aspect_ratio(nodes, wan, conds):
    photo = torch.rand((1, 300, 500, 3))
    pos, _, latent = _cond(nodes, wan, conds, photo, False, width=0, height=0, target_area=160 * 96)
    # authors: round(sqrt(area * h / w)) // 16 * 16 and round(sqrt(area * w / h)) // 16 * 16
    assert latent["samples"].shape[-2:] == (96 // 8, 160 // 8)  # 96.0 -> 96, 160.0 -> 160


def test_an_image_of_another_size_is_resized_with_a_note(nodes, wan, conds, image, caplog):
    big = torch.nn.functional.interpolate(image.movedim(-1, 1), size=(2 * H, 2 * W)).movedim(1, -1)
    with caplog.at_level(logging.INFO):
        _, _, latent = _cond(nodes, wan, conds, big, False)
    assert latent["samples"].shape[-2:] == (H // 8, W // 8)
    assert any(f"{2 * W}x{2 * H} resized to {W}x{H}" in r.getMessage() for r in caplog.records)


# -- k = 0 is the plain edit, bit for bit ------------------------------------------------------------------------------

@pytest.mark.parametrize("reasoning", [False, True], ids=["reasoning-off", "reasoning-on-k0"])
def test_k0_equals_the_hosts_plain_two_frame_run(nodes, wan, conds, image, reasoning):
    c = _cond(nodes, wan, conds, image, reasoning)
    edited, trajectory = _sample(nodes, wan.model, c, steps=4, k=0, sampler="uni_pc", cfg=2.0, seed=11)
    frames = FRAMES if reasoning else 2
    ref = _host_plain(wan, conds, image, frames, 4, 2.0, "uni_pc", 11, slice_to_2=reasoning)
    assert torch.equal(edited["samples"], ref)
    assert trajectory["samples"].shape[2] == 2


# -- the drop ------------------------------------------------------------------------------------------------------

def test_the_drop_is_real_tokens_and_positions(nodes, wan, conds, image):
    rec = Recorder(wan.model)
    c = _cond(nodes, wan, conds, image, True)
    edited, trajectory = _sample(nodes, rec.model, c, steps=5, k=2, sampler="euler", cfg=2.0)
    per_frame = (H // 16) * (W // 16)
    assert [call["tokens"] for call in rec.calls] == [FRAMES * per_frame] * 2 + [2 * per_frame] * 3
    assert [call["x"].shape[2] for call in rec.calls] == [FRAMES, FRAMES, 2, 2, 2]
    # temporal positions: 0..T-1 jointly, then the kept frames at 0 and T-1
    assert rec.calls[0]["rope"].get("scale_t", 1.0) == 1.0
    assert rec.calls[-1]["rope"]["scale_t"] == FRAMES - 1
    assert edited["samples"].shape == (1, 16, 2, H // 8, W // 8)
    assert trajectory["samples"].shape == (1, 16, FRAMES, H // 8, W // 8)
    assert torch.equal(trajectory["samples"][:, :, -1], edited["samples"][:, :, -1])
    # the input MODEL is left as it was: no rope options, no wrapper of ours
    assert "rope_options" not in wan.model.model_options.get("transformer_options", {})


def test_frame0_stays_the_input_latent_at_every_step(nodes, wan, conds, image):
    """Every model call sees frame 0 as the input's latent noised to that call's sigma with the frame's own noise;
    the result's frame 0 is the input's latent."""
    import comfy.sample

    rec = Recorder(wan.model)
    c = _cond(nodes, wan, conds, image, True)
    seed = 5
    edited, _ = _sample(nodes, rec.model, c, steps=6, k=3, sampler="euler", cfg=2.0, seed=seed)
    l0 = wan.model.model.process_latent_in(c[2]["samples"][:, :, :1])
    n0 = comfy.sample.prepare_noise(c[2]["samples"], seed)[:, :, :1]
    for call in rec.calls:
        s = call["sigma"]
        expected = s * n0 + (1 - s) * l0
        got = call["x"][:, :16, :1]
        torch.testing.assert_close(got, expected.to(got).expand_as(got), atol=1e-5, rtol=1e-5)
    assert torch.equal(edited["samples"][:, :, :1], c[2]["samples"][:, :, :1])


def test_restart_is_exact_for_euler(nodes, wan, conds, image):
    """Dropping at k equals running euler on the 2 kept frames from the joint state at sigma_k (a hand-written euler
    in the host's guider, positions set with the host's ScaleROPE, conditioning sliced by hand)."""
    import comfy.sample
    import comfy.samplers
    import node_helpers
    from comfy_extras.nodes_rope import ScaleROPE

    steps, k, cfg, seed = 6, 3, 2.0, 9
    c = _cond(nodes, wan, conds, image, True)
    edited, _ = _sample(nodes, wan.model, c, steps=steps, k=k, sampler="euler", cfg=cfg, seed=seed)

    model = wan.model
    sigmas = comfy.samplers.KSampler(model, steps=steps, device="cpu", sampler="euler", scheduler="simple").sigmas
    latent, mask = c[2]["samples"], c[2]["noise_mask"]
    noise = comfy.sample.prepare_noise(latent, seed)
    state = {}

    def euler(start_from):
        def run(m, x, sig, extra_args=None, callback=None, disable=None):
            x = state[start_from].clone() if start_from else x
            for i in range(len(sig) - 1):
                denoised = m(x, sig[i] * x.new_ones([x.shape[0]]), **extra_args)
                x = x + (x - denoised) / sig[i] * (sig[i + 1] - sig[i])
            state["out"] = x
            return x
        return comfy.samplers.KSAMPLER(run)

    comfy.samplers.sample(model, noise, c[0], c[1], cfg, "cpu", euler(None), sigmas[:k + 1],
                          model.model_options, latent_image=latent, denoise_mask=mask, seed=seed)
    state["xk"] = state["out"][:, :, [0, -1]]
    kept = {"concat_latent_image": c[0][0][1]["concat_latent_image"][:, :, [0, -1]],
            "concat_mask": c[0][0][1]["concat_mask"][:, :, [0, -1]]}
    pos = node_helpers.conditioning_set_values(c[0], kept)
    neg = node_helpers.conditioning_set_values(c[1], kept)
    two = ScaleROPE.execute(model, 1.0, 0.0, 1.0, 0.0, float(FRAMES - 1), 0.0).result[0]
    pin_latent = torch.zeros_like(latent[:, :, :2])
    pin_latent[:, :, 0] = latent[:, :, 0]
    pin_noise = torch.zeros_like(pin_latent)
    pin_noise[:, :, 0] = noise[:, :, 0]
    out = comfy.samplers.sample(two, pin_noise, pos, neg, cfg, "cpu", euler("xk"), sigmas[k:], two.model_options,
                                latent_image=pin_latent, denoise_mask=mask[:, :, [0, -1]], seed=seed)
    torch.testing.assert_close(edited["samples"], out.to(edited["samples"]), atol=1e-5, rtol=1e-5)
    # and the drop changed the result (the reasoning frames mattered)
    plain = _sample(nodes, wan.model, c, steps=steps, k=0, sampler="euler", cfg=cfg, seed=seed)[0]["samples"]
    assert not torch.allclose(plain, edited["samples"], atol=1e-4)


def _by_hand(wan, c, name, steps, k, cfg, seed, drop_after=None, last_position=FRAMES - 1, hand_over=1.0,
             keep_history=False):
    """ChronoEdit's sampling written out by hand on the host's denoiser calls (not through temporal_reasoning): the
    k-diffusion update formulas (Euler: x + (x - D) / sigma * (sigma' - sigma); DPM-Solver++(2M): the published
    two-step update in t = -log(sigma), first-order on the first and the last step) run inside the host's guider
    (CFG, the frame-0 noise mask) as plain sampler functions. Steps 0..k-1 denoise all FRAMES frames at positions
    0..T-1; before step k (as the authors' loop, which slices at i == k before the model call) frames [0, -1] are kept:
    their state at sigma_k, the conditioning's concat latent and mask sliced by hand, the positions set to 0 and T-1
    with the host's ScaleROPE; the remaining steps run on sigmas[k:] with the multistep history restarted (ours; the
    authors slice their scheduler's stored outputs, ``keep_history``). Returns (edit, reasoning frames), outer space.

    The mutations: ``drop_after`` another step than k, ``last_position`` other positions for the kept frames,
    ``hand_over`` the kept state scaled (1 - sigma_k: the leftover state taken for a clean latent, a hand-over in
    the wrong space), ``keep_history`` the authors' sliced history for dpmpp_2m."""
    import comfy.sample
    import comfy.samplers
    import node_helpers
    from comfy_extras.nodes_rope import ScaleROPE

    k_drop = k if drop_after is None else drop_after
    model = wan.model
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", steps)
    latent, mask = c[2]["samples"], c[2]["noise_mask"]
    noise = comfy.sample.prepare_noise(latent, seed)
    kept = {}

    def euler(m, x, sig, extra, denoised_seen, old):
        for i in range(len(sig) - 1):
            denoised = m(x, sig[i] * x.new_ones([x.shape[0]]), **extra)
            denoised_seen.append(denoised)
            x = x + (x - denoised) / sig[i] * (sig[i + 1] - sig[i])
        return x

    def dpmpp_2m(m, x, sig, extra, denoised_seen, old):
        t = lambda s: -s.log()
        for i in range(len(sig) - 1):
            denoised = m(x, sig[i] * x.new_ones([x.shape[0]]), **extra)
            denoised_seen.append(denoised)
            if sig[i + 1] == 0:
                x = denoised
            else:
                h = t(sig[i + 1]) - t(sig[i])
                if old is None:
                    used = denoised
                else:
                    r = (t(sig[i]) - t(old[1])) / h
                    used = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old[0]
                x = (sig[i + 1] / sig[i]) * x - torch.expm1(-h) * used
            old = (denoised, sig[i])
        kept["old"] = old
        return x

    update = {"euler": euler, "dpmpp_2m": dpmpp_2m}[name]

    def joint(m, x, sig, extra_args=None, callback=None, disable=None):
        seen = []
        kept["x"] = update(m, x, sig, extra_args, seen, None)
        kept["x0"] = seen[-1]
        return kept["x"]

    def restart(m, x, sig, extra_args=None, callback=None, disable=None):
        x = hand_over * kept["x"][:, :, [0, -1]]
        old = kept.get("old") if keep_history else None
        old = None if old is None else (old[0][:, :, [0, -1]], old[1])
        return update(m, x, sig, extra_args, [], old)

    comfy.samplers.sample(model, noise, c[0], c[1], cfg, "cpu", comfy.samplers.KSAMPLER(joint), sigmas[:k_drop + 1],
                          model.model_options, latent_image=latent, denoise_mask=mask, seed=seed)
    sigma_k = float(sigmas[k_drop])
    if hand_over != 1.0:
        hand_over = 1.0 - sigma_k
    two_frames = {"concat_latent_image": c[0][0][1]["concat_latent_image"][:, :, [0, -1]],
                  "concat_mask": c[0][0][1]["concat_mask"][:, :, [0, -1]]}
    pos = node_helpers.conditioning_set_values(c[0], two_frames)
    neg = node_helpers.conditioning_set_values(c[1], two_frames)
    two = ScaleROPE.execute(model, 1.0, 0.0, 1.0, 0.0, float(last_position), 0.0).result[0]
    pin_latent = torch.zeros_like(latent[:, :, :2])
    pin_latent[:, :, 0] = latent[:, :, 0]
    pin_noise = torch.zeros_like(pin_latent)
    pin_noise[:, :, 0] = noise[:, :, 0]
    out = comfy.samplers.sample(two, pin_noise, pos, neg, cfg, "cpu", comfy.samplers.KSAMPLER(restart),
                                sigmas[k_drop:], two.model_options, latent_image=pin_latent,
                                denoise_mask=mask[:, :, [0, -1]], seed=seed)
    out[:, :, 0] = latent[:, :, 0]  # the pin
    reasoning = model.model.process_latent_out(kept["x0"])[:, :, 1:-1]
    return out, reasoning


@pytest.mark.parametrize("name", ["euler", "dpmpp_2m"])
def test_sampler_equals_the_steps_written_out(nodes, wan, conds, image, name):
    """The sampler node with euler and a multistep sampler (6 steps, drop at k = 3, CFG 2) gives the edit and the
    trajectory's reasoning frames of the hand-written sampling above to 1e-5; each mutation of the hand version is
    more than 100x that away. Measured on the tiny Wan (0.3.75, CPU), max abs gap to the node's edit (latents of
    ~1-10): euler: the hand version 3e-6; mutated: drop one step late 0.067, one step early 0.073, kept frames at
    positions 0 and 1 0.37, hand-over scaled by (1 - sigma_k) 12.0. dpmpp_2m: the hand version 4e-6; mutated: late
    2.5, early 1.6, positions 0.39, hand-over 12.1, the authors' sliced history kept across the drop 1.14 (a
    disclosed difference: the restart is ours, README "differs from the authors" (3))."""
    steps, k, cfg, seed = 6, 3, 2.0, 9
    c = _cond(nodes, wan, conds, image, True)
    edited, trajectory = _sample(nodes, wan.model, c, steps=steps, k=k, sampler=name, cfg=cfg, seed=seed)
    got = edited["samples"]
    want, reasoning = _by_hand(wan, c, name, steps, k, cfg, seed)
    torch.testing.assert_close(got, want.to(got), atol=1e-5, rtol=0)
    torch.testing.assert_close(trajectory["samples"][:, :, 1:-1], reasoning.to(got), atol=1e-5, rtol=0)
    mutations = {"drop one step late": dict(drop_after=k + 1), "drop one step early": dict(drop_after=k - 1),
                 "kept frames at positions 0 and 1": dict(last_position=1.0),
                 "hand-over in the wrong space": dict(hand_over=0.0)}
    if name == "dpmpp_2m":
        mutations["the authors' sliced history"] = dict(keep_history=True)
    gaps = {what: float((_by_hand(wan, c, name, steps, k, cfg, seed, **over)[0].to(got) - got).abs().max())
            for what, over in mutations.items()}
    print(name, {"wanted": float((want.to(got) - got).abs().max()), **gaps})
    assert all(gap > 1e-3 for gap in gaps.values()), gaps


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m", "uni_pc", "dpmpp_2m_sde", "euler_ancestral"])
def test_samplers_run_with_k_in_the_middle(nodes, wan, conds, image, sampler):
    rec = Recorder(wan.model)
    c = _cond(nodes, wan, conds, image, True)
    edited, trajectory = _sample(nodes, rec.model, c, steps=6, k=3, sampler=sampler, cfg=2.0)
    assert edited["samples"].shape == (1, 16, 2, H // 8, W // 8) and edited["samples"].isfinite().all()
    assert trajectory["samples"].shape[2] == FRAMES and trajectory["samples"].isfinite().all()
    frames = [call["x"].shape[2] for call in rec.calls]
    assert FRAMES in frames and frames[-1] == 2 and frames == sorted(frames, reverse=True)
    assert torch.equal(edited["samples"][:, :, :1], c[2]["samples"][:, :, :1])
    assert torch.equal(trajectory["samples"][:, :, :1], c[2]["samples"][:, :, :1])


def test_k_equal_steps_never_drops(nodes, wan, conds, image):
    rec = Recorder(wan.model)
    c = _cond(nodes, wan, conds, image, True)
    edited, trajectory = _sample(nodes, rec.model, c, steps=3, k=3, sampler="uni_pc")
    assert {call["x"].shape[2] for call in rec.calls} == {FRAMES}
    assert torch.equal(edited["samples"], trajectory["samples"][:, :, [0, -1]])


def test_trajectory_to_video(nodes, wan, conds, image):
    c = _cond(nodes, wan, conds, image, True)
    edited, trajectory = _sample(nodes, wan.model, c, steps=3, k=1)
    frames, last = nodes.EditLabTrajectoryToVideo.execute(trajectory=trajectory, vae=wan.vae).result
    assert frames.shape == (4 * (FRAMES - 1) + 1, H, W, 3)
    assert last.shape == (1, H, W, 3)  # the edited frame has the requested size
    same = nodes.EditLabTrajectoryToVideo.execute(trajectory=edited, vae=wan.vae).result
    assert same[0].shape[0] == 5 and torch.equal(same[1], last)


# -- bad input ----------------------------------------------------------------------------------------------------

def test_bad_input_is_named(nodes, wan, conds, image):
    from editlab.models.tiny import build_tiny_models
    from editlab.nodes.common import EditLabInputError

    c = _cond(nodes, wan, conds, image, True)
    flux = build_tiny_models("flux", 0)
    with pytest.raises(EditLabInputError, match="input 'model'.*image-to-video"):
        _sample(nodes, flux.model, c)
    with pytest.raises(EditLabInputError, match="input 'reasoning_steps'.*at most steps"):
        _sample(nodes, wan.model, c, steps=4, k=5)
    with pytest.raises(EditLabInputError, match="input 'reasoning_frames'"):
        _cond(nodes, wan, conds, image, True, frames=2)
    with pytest.raises(EditLabInputError, match="input 'vae'.*video VAE"):
        _cond(nodes, wan, conds, image, True, vae=flux.vae)
    with pytest.raises(EditLabInputError, match="input 'image'.*empty"):
        _cond(nodes, wan, conds, image[:0], False)
    with pytest.raises(EditLabInputError, match="input 'width'.*multiple of 16"):
        _cond(nodes, wan, conds, image, False, width=50)
    plain = _cond(nodes, wan, conds, image, False)
    with pytest.raises(EditLabInputError, match="input 'positive'"):
        _sample(nodes, wan.model, (plain[0], c[1], c[2]))


@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp8_e4m3fn"])
def test_half_precision_weights(nodes, conds, image, dtype):
    """The drop and restart on the tiny Wan stored in bf16 / fp16 / fp8: finite, frame 0 pinned, 2 frames after k."""
    from editlab.models.tiny import build_tiny_models

    low = build_tiny_models("wan21_i2v", 0, weight_dtype=dtype)
    rec = Recorder(low.model)
    c = _cond(nodes, low, conds, image, True)
    edited, trajectory = _sample(nodes, rec.model, c, steps=4, k=2, sampler="dpmpp_2m")
    assert edited["samples"].isfinite().all() and trajectory["samples"].isfinite().all()
    assert torch.equal(edited["samples"][:, :, :1], c[2]["samples"][:, :, :1])
    assert [call["x"].shape[2] for call in rec.calls] == [FRAMES, FRAMES, 2, 2]


def test_progress_over_all_steps_with_previews_and_interruption(nodes, wan, conds, image):
    import comfy.model_management
    import comfy.utils
    from comfy.cli_args import LatentPreviewMethod, args

    seen = []
    old_hook, old_method = comfy.utils.PROGRESS_BAR_HOOK, args.preview_method
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: seen.append(
        (value, total, preview)))
    args.preview_method = LatentPreviewMethod.Latent2RGB
    try:
        c = _cond(nodes, wan, conds, image, True)
        _sample(nodes, wan.model, c, steps=5, k=2, sampler="dpmpp_2m")
        assert [v for v, _, _ in seen] == [1, 2, 3, 4, 5] and {t for _, t, _ in seen} == {5}
        assert all(p is not None and p[0] == "JPEG" for _, _, p in seen)
        assert seen[-1][2][1].size == (W // 8, H // 8)  # the edited frame's latent preview
        comfy.model_management.interrupt_current_processing(True)
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            _sample(nodes, wan.model, c, steps=5, k=2)
    finally:
        comfy.model_management.interrupt_current_processing(False)
        comfy.utils.set_progress_bar_global_hook(old_hook)
        args.preview_method = old_method


def test_a_scale_rope_model_gets_chronoedits_positions(nodes, wan, conds, image, caplog):
    """The template puts ScaleROPE (scale_t 7) on the model; the sampler sets the positions itself, so the result is
    the same with or without it, and says so in the log."""
    from comfy_extras.nodes_rope import ScaleROPE

    c = _cond(nodes, wan, conds, image, False)
    scaled = ScaleROPE.execute(wan.model, 1.0, 0.0, 1.0, 0.0, 7.0, 0.0).result[0]
    with caplog.at_level(logging.INFO):
        a = _sample(nodes, scaled, c, steps=3, k=0)[0]["samples"]
    b = _sample(nodes, wan.model, c, steps=3, k=0)[0]["samples"]
    assert torch.equal(a, b)
    assert any("scale_t 7.0 is replaced" in r.getMessage() for r in caplog.records)
    assert scaled.model_options["transformer_options"]["rope_options"]["scale_t"] == 7.0  # its MODEL untouched


def test_takes_the_templates_wan_image_to_video_outputs(nodes, wan, conds, image):
    """ComfyUI's template builds the edit with WanImageToVideo (an empty latent, no noise mask): the sampler pins frame
    0 to the conditioning's input latent itself and gives what ChronoEdit Conditioning's layout gives."""
    from comfy_extras.nodes_wan import WanImageToVideo

    host = WanImageToVideo.execute(conds[0], conds[1], wan.vae, W, H, 4 * (FRAMES - 1) + 1, 1,
                                   start_image=image).result
    ours = _cond(nodes, wan, conds, image, True)
    a = _sample(nodes, wan.model, host, steps=4, k=2, sampler="dpmpp_2m")
    b = _sample(nodes, wan.model, ours, steps=4, k=2, sampler="dpmpp_2m")
    assert torch.equal(a[0]["samples"], b[0]["samples"]) and torch.equal(a[1]["samples"], b[1]["samples"])


# -- CLIP vision features, the frame-0 pin, frame counts ----------------------------------------------------------

def _clip_vision_output(seed=5):
    """What CLIP Vision Encode with clip_vision_h returns, as Wan's I2V conditioning reads it: 257 tokens x 1280."""
    import comfy.clip_vision

    out = comfy.clip_vision.Output()
    out["penultimate_hidden_states"] = torch.randn((1, 257, 1280), generator=torch.Generator().manual_seed(seed))
    return out


def test_refuses_image_projection_without_clip_vision(nodes, wan, conds, image):
    """The tiny Wan 2.1 I2V has the image projection (img_emb) of the real one; without CLIP vision features the host
    would put the text tokens into its image cross-attention: the sampler names the input instead."""
    from editlab.nodes.common import EditLabInputError

    assert wan.model.model.diffusion_model.img_emb is not None
    c = _cond(nodes, wan, conds, image, False)
    with pytest.raises(EditLabInputError, match="input 'positive'.*CLIP vision features.*clip_vision_output"):
        _sample(nodes, wan.model, c, steps=2, k=0, without_clip_vision=False)
    with_features = _cond(nodes, wan, conds, image, False, clip_vision_output=_clip_vision_output())
    negative_bare = (with_features[0], c[1], with_features[2])
    with pytest.raises(EditLabInputError, match="input 'negative'.*CLIP vision"):
        _sample(nodes, wan.model, negative_bare, steps=2, k=0, without_clip_vision=False)


def test_clip_vision_features_reach_the_image_attention(nodes, wan, conds, image):
    """With the features the sampler runs (no switch needed) and they change the result; two different feature sets
    give two different edits (the image cross-attention reads them, not the text)."""
    a = _sample(nodes, wan.model, _cond(nodes, wan, conds, image, False, clip_vision_output=_clip_vision_output(5)),
                steps=3, k=0, without_clip_vision=False)[0]["samples"]
    b = _sample(nodes, wan.model, _cond(nodes, wan, conds, image, False, clip_vision_output=_clip_vision_output(6)),
                steps=3, k=0, without_clip_vision=False)[0]["samples"]
    bare = _sample(nodes, wan.model, _cond(nodes, wan, conds, image, False), steps=3, k=0)[0]["samples"]
    assert a.isfinite().all() and not torch.allclose(a, b) and not torch.allclose(a, bare)


def test_unpinned_frame0_is_the_hosts_template_run(nodes, wan, conds, image):
    """pin_first_frame off is the authors' frame 0: denoised from noise like every frame. The plain edit then equals
    the host's template bit for bit: WanImageToVideo (5 frames), ScaleROPE scale_t 7, KSampler on its empty latent,
    no noise mask and no pin."""
    import comfy.utils
    import nodes as host_nodes
    from comfy_extras.nodes_rope import ScaleROPE
    from comfy_extras.nodes_wan import WanImageToVideo

    c = _cond(nodes, wan, conds, image, False)
    ours = _sample(nodes, wan.model, c, steps=4, k=0, sampler="uni_pc", seed=11, pin_first_frame=False)[0]["samples"]
    pos, neg, latent = WanImageToVideo.execute(conds[0], conds[1], wan.vae, W, H, 5, 1, start_image=image).result
    model = ScaleROPE.execute(wan.model, 1.0, 0.0, 1.0, 0.0, 7.0, 0.0).result[0]
    comfy.utils.PROGRESS_BAR_ENABLED = False
    ref = host_nodes.common_ksampler(model, 11, 4, 2.0, "uni_pc", "simple", pos, neg, latent)[0]["samples"]
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    input_latent = c[2]["samples"][:, :, :1]
    assert (ours[:, :, :1] - input_latent).abs().max() > 1e-3  # frame 0 is the sampler's, not the input's
    pinned = _sample(nodes, wan.model, c, steps=4, k=0, sampler="uni_pc", seed=11)[0]["samples"]
    assert torch.equal(pinned[:, :, :1], input_latent)


def test_unpinned_restart_carries_frame0_state(nodes, wan, conds, image):
    """Unpinned with a drop: both kept frames restart from their own state (euler: the joint run's first k steps, then
    a hand-written euler on the two kept frames, from the host's own model calls)."""
    c = _cond(nodes, wan, conds, image, True)
    rec = Recorder(wan.model)
    edited = _sample(nodes, rec.model, c, steps=4, k=2, sampler="euler", pin_first_frame=False)[0]["samples"]
    assert [call["x"].shape[2] for call in rec.calls] == [FRAMES, FRAMES, 2, 2]
    # no noise mask: frame 0 of what the model sees after the drop is the joint run's frame 0, not the input noised
    first_restart = rec.calls[2]["x"][:, :16]
    assert not torch.allclose(first_restart[:, :, :1], c[2]["samples"][:, :, :1], atol=1e-3)
    assert not torch.equal(edited[:, :, :1], c[2]["samples"][:, :, :1])


def test_frame_counts_outside_the_authors_are_logged(nodes, wan, conds, image, caplog):
    """The authors' positions are defined for 2 and 8 latent frames; another count runs (positions 0..T-1) and says
    so in the log."""
    with caplog.at_level(logging.WARNING):
        _sample(nodes, wan.model, _cond(nodes, wan, conds, image, False), steps=2, k=0)
    assert not any("temporal positions are defined" in r.getMessage() for r in caplog.records)
    with caplog.at_level(logging.WARNING):
        _sample(nodes, wan.model, _cond(nodes, wan, conds, image, True), steps=2, k=1)
    assert any(f"{FRAMES} latent frames: the authors' temporal positions are defined for 2" in r.getMessage()
               for r in caplog.records)
