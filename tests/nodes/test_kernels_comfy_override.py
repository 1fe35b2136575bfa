"""kernels.attention.comfy's override inside the real host: ComfyUI's own attention functions and a tiny Flux.

On the CPU the dispatcher runs the torch reference (the Triton path is covered by tests/unit/test_kernels_*.py
under the interpreter); these tests check the contract with the host: the call signature, both layouts, the chain
to an earlier override, and that calls nobody asked about run the host's attention bit for bit."""
import pytest
import torch


pytestmark = pytest.mark.usefixtures("server_mode")  # nodes run as the server runs them


@pytest.mark.parametrize("skip_reshape", [False, True])
def test_host_attention_functions_call_the_override_and_take_its_output(skip_reshape):
    from comfy.ldm.modules.attention import attention_basic, attention_pytorch

    from editlab.kernels.attention.comfy import MapRequest, token_map_override

    g = torch.Generator().manual_seed(0)
    B, H, N, D = 2, 3, 77, 16
    q, k, v = (torch.randn(B, H, N, D, generator=g) for _ in range(3))
    args = (q, k, v) if skip_reshape else tuple(t.transpose(1, 2).reshape(B, N, H * D) for t in (q, k, v))
    keys, got = torch.tensor([0, 9, 76]), []
    override = token_map_override(lambda *a: MapRequest(keys, None, got.append))
    for fn in (attention_pytorch, attention_basic):
        plain = fn(*args, H, skip_reshape=skip_reshape)
        out = fn(*args, H, skip_reshape=skip_reshape, transformer_options={"optimized_attention_override": override})
        assert out.shape == plain.shape and torch.allclose(out, plain, atol=1e-5)
    probs = (q @ k.transpose(-1, -2) / D ** 0.5).softmax(-1)[..., keys]
    assert len(got) == 2 and torch.allclose(got[0].probs, probs, atol=1e-6)


def test_tiny_flux_samples_untouched_when_nobody_asks_and_hands_maps_when_asked(comfy_host):
    import comfy.sample
    import comfy.samplers

    from editlab.kernels.attention.comfy import MapRequest, token_map_override
    from editlab.models.tiny import build_tiny_models
    from editlab.nodes import host

    models = build_tiny_models("flux", 0)
    clip = models.clip
    conds = (clip.encode_from_tokens_scheduled(clip.tokenize("a dog and a cat")),
             clip.encode_from_tokens_scheduled(clip.tokenize("")))

    def run(model):
        latent = torch.zeros(1, 16, 8, 8)
        sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", 2)
        return comfy.sample.sample_custom(model, comfy.sample.prepare_noise(latent, 0), 2.0,
                                          comfy.samplers.sampler_object("euler"), sigmas, *conds, latent,
                                          disable_pbar=True, seed=0)

    base = run(models.model)
    quiet = models.model.clone()
    host.set_attention_override(quiet, token_map_override(lambda *a: None))
    assert torch.equal(run(quiet), base)

    seen = []

    def ask(q, k, v, options):
        if options.get("block_type") != "double":
            return None
        return MapRequest(torch.tensor([1, 2]), None, lambda r: seen.append(r.probs.shape))

    asked = models.model.clone()
    host.set_attention_override(asked, token_map_override(ask))
    out = run(asked)
    assert seen and all(s[-1] == 2 for s in seen)
    assert torch.allclose(out, base, atol=1e-4, rtol=1e-4)
