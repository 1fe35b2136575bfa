"""What newer ComfyUI releases (0.33, read against 0.38's sources) changed under the pack, one contract each.

Each test runs on whichever host the suite runs on (`make test` runs 0.3.75, then 0.33.0): where the host has the
behaviour, the test shows the pack meets it; where it has not (0.3.75), the part that needs it is skipped and the rest
still checks the pack's behaviour is unchanged.
"""
from __future__ import annotations

import inspect
import types

import pytest
import torch

from editlab.models.tiny import ARCHITECTURES


@pytest.fixture(scope="module")
def tiny(comfy_host):
    from editlab.models.tiny import build_tiny_models

    return build_tiny_models


# -- tiny models: the config is what the host's own detection would set ------------------------------------------

# Detection fixes these at full size (Flux's 24 heads of 128, its rope axes; Wan's heads): ours are the tiny sizes.
SIZE_FIELDS = {"num_heads", "axes_dim"}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_tiny_model_carries_every_field_the_hosts_detection_sets(tiny, arch):
    """0.33's FluxParams gained a required field (txt_ids_dims) that detection sets: every tiny model built by hand
    failed. Now the config is derived from detection, so a field a newer host adds comes with it."""
    import comfy.model_detection

    models = tiny(arch, seed=0)
    config = models.model.model.model_config.unet_config
    detected = comfy.model_detection.detect_unet_config(models.model.model.diffusion_model.state_dict(), "")
    assert detected, "the host's detection reads the tiny model's weights"
    missing = sorted(set(detected) - set(config))
    assert not missing, f"fields the host's detection sets that the tiny {arch} config lacks: {missing}"
    differ = {k: (config[k], detected[k]) for k in detected if k not in SIZE_FIELDS and config[k] != detected[k]}
    assert not differ, differ


# -- backward through the host's networks: its training flag -------------------------------------------------------

def _flux_step(models, x):
    dm = models.model.model.diffusion_model
    b = x.shape[0]
    context = torch.randn(b, 4, dm.params.context_in_dim)
    y = torch.randn(b, dm.params.vec_in_dim)
    return dm(x, torch.full((b,), 0.5), context, y, guidance=torch.full((b,), 3.5))


def test_backward_through_flux_works_inside_frozen_for_autograd_and_the_flag_is_restored(tiny):
    """0.33 routes Flux's rope through comfy_kitchen's fused op, which has no gradient unless
    comfy.model_management.in_training is set (the host's own trainer sets it): ToVA Train on Flux, LODA on Flux and
    Layered Edit Train failed with 'no autograd formula was registered'."""
    import comfy.model_management as mm

    from editlab.models.frozen import frozen_for_autograd

    models = tiny("flux", seed=0)
    dm = models.model.model.diffusion_model
    before = getattr(mm, "in_training", None)
    # Flux adds residuals in place after saving them (as train_in_unet allows: autograd keeps a copy)
    with torch.inference_mode(False), torch.enable_grad(), frozen_for_autograd(dm), \
            torch.autograd.graph.allow_mutation_on_saved_tensors():
        if hasattr(mm, "in_training"):
            assert mm.in_training is True
        x = torch.randn(1, 16, 8, 8, requires_grad=True)
        _flux_step(models, x).square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert getattr(mm, "in_training", None) == before
    assert all(not p.requires_grad or p.grad is None for p in dm.parameters())


def test_the_hosts_flux_rope_needs_the_flag(tiny):
    """The host behaviour the previous test guards against, shown for real where the host has it."""
    import comfy.ldm.flux.math as flux_math
    import comfy.model_management as mm

    if not hasattr(mm, "in_training") or "in_training" not in open(flux_math.__file__).read():
        pytest.skip("this host's Flux rope does not depend on the training flag")
    models = tiny("flux", seed=0)
    dm = models.model.model.diffusion_model
    with torch.inference_mode(False), torch.enable_grad(), torch.autograd.graph.allow_mutation_on_saved_tensors():
        for p in dm.parameters():
            p.requires_grad_(False)
        x = torch.randn(1, 16, 8, 8, requires_grad=True)
        try:
            _flux_step(models, x).square().mean().backward()
        except RuntimeError as exc:
            assert "autograd" in str(exc)
        else:
            pytest.skip("the fused rope has a gradient on this host's build (comfy_kitchen fell back to torch)")


# -- attention: the host's own backend override, scale and enable_gqa ---------------------------------------------

def _host_backend_override(backend):
    """The override ComfyUI's ModelAttentionBackend node installs (``ModelPatcher.set_model_optimized_attention``),
    made by the host's own method on a stand-in patcher."""
    from comfy.model_patcher import ModelPatcher

    if not hasattr(ModelPatcher, "set_model_optimized_attention"):
        pytest.skip("this host has no attention backend override")
    holder = types.SimpleNamespace(model_options={"transformer_options": {}})
    ModelPatcher.set_model_optimized_attention(holder, backend)
    return holder.model_options["transformer_options"]["optimized_attention_override"]


def _sdpa_backend(calls):
    import torch.nn.functional as F

    def backend(q, k, v, heads, mask=None, skip_reshape=False, skip_output_reshape=False, **rest):
        calls.append(rest)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=rest.get("scale"))
        return out if skip_output_reshape else out.transpose(1, 2).flatten(2)

    return backend


def test_the_map_kernel_still_runs_behind_the_hosts_backend_override(comfy_host):
    """Set before ours, the host's backend override ignores the function it is handed: our kernel (maps, AFG bias)
    was dropped. Now the calls the kernel serves run it; the others go to the host's chosen backend."""
    from editlab.kernels.attention.comfy import MapRequest, token_map_override
    from editlab.kernels.attention.reference import attention as reference

    calls, got = [], []
    host = _host_backend_override(_sdpa_backend(calls))
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 6, 8) for _ in range(3))
    keys = torch.tensor([1, 4])
    bias = torch.full((1, 1, 6, 2), -3.0)
    asked = iter([MapRequest(keys, bias, got.append), None])
    ours = token_map_override(lambda qh, kh, vh, options: next(asked), previous=host)

    def unused(*a, **kw):
        raise AssertionError("the host's default attention must not run: its backend override replaces it")

    out = ours(unused, q, k, v, 2, skip_reshape=True, skip_output_reshape=True)
    want_out, _, want_probs = reference(q, k, v, keys, bias)
    assert got and torch.allclose(got[0].probs, want_probs, atol=1e-5), "the kernel ran and its maps were delivered"
    assert torch.allclose(out, want_out, atol=1e-5), "with the bias on the chosen keys"
    assert not calls
    out2 = ours(unused, q, k, v, 2, skip_reshape=True, skip_output_reshape=True)  # not asked: the host's backend
    assert len(calls) == 1
    assert torch.allclose(out2, torch.nn.functional.scaled_dot_product_attention(q, k, v), atol=1e-6)


def test_scale_and_grouped_query_attention_are_honoured(comfy_host):
    """Newer hosts hand attention functions ``scale`` and ``enable_gqa`` (fewer key/value heads): the kernel's
    override computed 1/sqrt(d) over mismatched heads. Checked against torch's own SDPA."""
    import torch.nn.functional as F

    from editlab.kernels.attention.comfy import MapRequest, attention_function

    torch.manual_seed(1)
    q = torch.randn(1, 4, 5, 8)
    k, v = torch.randn(1, 2, 7, 8), torch.randn(1, 2, 7, 8)
    run = attention_function(MapRequest(torch.tensor([0, 3])))
    out = run(q, k, v, 4, skip_reshape=True, skip_output_reshape=True, scale=0.2, enable_gqa=True)
    want = F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), scale=0.2)
    assert torch.allclose(out, want, atol=1e-5)
    flat = run(q.transpose(1, 2).flatten(2), k.transpose(1, 2).flatten(2), v.transpose(1, 2).flatten(2), 4,
               scale=0.2, enable_gqa=True)  # the host's [B, N, H*D] layout, fewer kv heads
    assert torch.allclose(flat, want.transpose(1, 2).flatten(2), atol=1e-5)


def test_tova_on_flux_refuses_a_backend_override_applied_after_it(tiny):
    """Applied after ToVA Apply, the host's backend node replaces ToVA's override and ToVA silently stopped acting:
    now sampling stops with an error naming both nodes."""
    from editlab.models.conceptsplit.flux import FluxToVAPatch, double_block_layers
    from editlab.nodes import host

    models = tiny("flux", seed=0)
    m = models.model.clone()
    patch = FluxToVAPatch([], double_block_layers(m.model.diffusion_model), previous=host.attention_override(m))
    host.set_attention_override(m, patch)
    assert patch.post_input({"txt": torch.zeros(1, 3, 8), "transformer_options": m.model_options[
        "transformer_options"]})
    after = m.clone()
    after.model_options["transformer_options"]["optimized_attention_override"] = \
        _host_backend_override(_sdpa_backend([]))
    with pytest.raises(RuntimeError, match="ToVA Apply.*apply that node before"):
        patch.post_input({"txt": torch.zeros(1, 3, 8), "transformer_options": after.model_options[
            "transformer_options"]})


# -- empty latents' downscale ratio --------------------------------------------------------------------------------

def test_the_packs_sampling_reads_an_empty_latents_downscale_ratio_as_ksampler_does(tiny):
    """0.33's empty latents carry ``downscale_ratio_spacial``; KSampler resizes an empty latent made for another
    ratio. The pack's own sampling (Attention Maps, the slider's sampler) does the same, and drops the key after."""
    import comfy.sample
    import nodes as host_nodes

    from editlab.nodes import host

    models = tiny("sd15", seed=0)
    cond = models.clip.encode_from_tokens_scheduled(models.clip.tokenize("a red fox"))
    latent = {"samples": torch.zeros(1, 4, 8, 8), "downscale_ratio_spacial": 16}
    ours = host.ksample(models.model, 3, 2, 2.0, "euler", "normal", cond, cond, latent)
    theirs = host_nodes.common_ksampler(models.model, 3, 2, 2.0, "euler", "normal", cond, cond, dict(latent))[0]
    assert ours["samples"].shape == theirs["samples"].shape
    assert torch.equal(ours["samples"], theirs["samples"])
    assert "downscale_ratio_spacial" not in ours
    if "downscale_ratio_spacial" in inspect.signature(comfy.sample.fix_empty_latent_channels).parameters:
        assert ours["samples"].shape[-1] == 16, "the host resizes an empty latent of ratio 16 for an 8x VAE"


# -- dynamic VRAM --------------------------------------------------------------------------------------------------

class _Dynamic:
    """A MODEL that says it is dynamic (``ModelPatcherDynamic`` reroutes to a plain patcher on a CPU, so the real
    one cannot be built here): records how it is cloned."""

    def __init__(self):
        self.cloned = []

    def is_dynamic(self):
        return True

    def clone(self, **kw):
        self.cloned.append(kw)
        return "clone"


def test_training_runs_on_a_non_dynamic_clone_where_the_model_is_dynamic(comfy_host):
    from editlab.nodes import host

    dyn = _Dynamic()
    assert host.training_clone(dyn) == "clone" and dyn.cloned == [{"disable_dynamic": True}]


def test_training_clones_an_ordinary_model_without_copying_weights(tiny):
    from editlab.nodes import host

    models = tiny("sd15", seed=0)
    clone = host.training_clone(models.model)
    assert clone is not models.model and clone.model is models.model.model


def test_layered_conditioning_hooks_touch_no_text_encoder_weight(tiny):
    """A dynamic-VRAM CLIP refuses weight hooks ('Hooks not implemented'); the layered adapters' hooks change the
    diffusion model only, so none is forced onto the CLIP, and encoding equals the plain CLIP's."""
    import comfy.hooks

    from editlab.nodes import host

    models = tiny("flux", seed=0)
    lora = {}
    hooks = host.combine_hooks([host.windowed_lora_hooks(lora, 1.0, 0.0, 1.0)])
    clip = host.clip_with_cond_hooks(models.clip, hooks)
    forced = clip.patcher.forced_hooks
    assert forced is None or not forced.get_type(comfy.hooks.EnumHookType.Weight)
    tokens = models.clip.tokenize("a bag")
    a = models.clip.encode_from_tokens_scheduled(tokens)
    b = clip.encode_from_tokens_scheduled(tokens)
    assert torch.equal(a[0][0], b[0][0])
    assert b[0][1].get("hooks") is not None, "the conditioning carries the hooks to the diffusion model"
