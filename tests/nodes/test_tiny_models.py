"""EditLabTinyModels: the host's real classes at tiny sizes, seeded, sampling end to end in-process."""
import logging

import pytest
import torch

from editlab.models.tiny import ARCHITECTURES


@pytest.fixture(scope="module")
def tiny(comfy_host):
    from editlab.models.tiny import build_tiny_models

    return build_tiny_models


def _sample(models, prompt="a red fox", seed=1, steps=3):
    import comfy.sample

    cond = models.clip.encode_from_tokens_scheduled(models.clip.tokenize(prompt))
    if models.architecture == "wan21_i2v":
        from comfy_extras.nodes_wan import WanImageToVideo

        start = torch.linspace(0, 1, 64 * 64 * 3).reshape(1, 64, 64, 3)
        pos, neg, latent = WanImageToVideo.execute(positive=cond, negative=cond, vae=models.vae, width=64,
                                                   height=64, length=5, batch_size=1, start_image=start).result
        latent, cond, neg = latent["samples"], pos, neg
    elif models.architecture == "flux_fill":
        from nodes import InpaintModelConditioning

        pixels = torch.linspace(0, 1, 64 * 64 * 3).reshape(1, 64, 64, 3)
        mask = torch.zeros(1, 64, 64)
        mask[:, 16:48, 16:48] = 1
        cond, neg, latent = InpaintModelConditioning().encode(cond, cond, pixels, models.vae, mask, True)
        latent = latent["samples"]
    else:
        latent = torch.zeros(1, models.model.model.latent_format.latent_channels, 8, 8)
        neg = cond
    noise = comfy.sample.prepare_noise(latent, seed)
    samples = comfy.sample.sample(models.model, noise, steps, 1.0, "euler", "simple", cond, neg, latent,
                                  disable_pbar=True)
    return cond, samples


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_builds_samples_and_decodes(tiny, arch):
    models = tiny(arch, seed=0)
    n_params = sum(p.numel() for p in models.model.model.diffusion_model.parameters())
    assert 0 < n_params < 10_000_000, "tiny means tiny"
    cond, samples = _sample(models)
    assert torch.isfinite(samples).all()
    image = models.vae.decode(samples)
    assert image.shape[-1] == 3 and image.shape[-3:-1] == (64, 64)
    assert 0.0 <= image.min() and image.max() <= 1.0


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_same_seed_same_everything_other_seed_differs(tiny, arch):
    a, b, c = tiny(arch, 3), tiny(arch, 3), tiny(arch, 4)
    sa, sb, sc = (m.model.model.diffusion_model.state_dict() for m in (a, b, c))  # buffers included
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    (_, out_a), (_, out_b), (_, out_c) = _sample(a), _sample(b), _sample(c)
    assert torch.equal(out_a, out_b), "same weights, same noise: bit-identical samples"
    assert not torch.equal(out_a, out_c)


def test_real_tokenizers_set_token_positions(tiny):
    flux = tiny("flux", 0)
    tokens = flux.clip.tokenize("a smiling man")
    t5_ids = [t for t, _ in tokens["t5xxl"][0]]
    # T5's sentencepiece pieces for the words, '</s>' (id 1), then padding (id 0) to Flux's 256-token minimum
    assert len(t5_ids) == 256
    eos = t5_ids.index(1)
    assert eos == 4 and set(t5_ids[eos + 1:]) == {0} and 0 not in t5_ids[:eos]
    clip_ids = [t for t, _ in tokens["l"][0]]
    assert clip_ids[0] == 49406 and len(clip_ids) == 77
    cond = flux.clip.encode_from_tokens_scheduled(tokens)
    assert cond[0][0].shape == (1, 256, 32) and cond[0][1]["pooled_output"].shape == (1, 32)
    sd3 = tiny("sd3", 0)
    cond3 = sd3.clip.encode_from_tokens_scheduled(sd3.clip.tokenize("a smiling man"))
    assert cond3[0][0].shape == (1, 77, 4096)  # CLIP-L (32) + CLIP-G (32) padded to 4096, as for real SD3
    assert torch.count_nonzero(cond3[0][0][..., 64:]) == 0


def test_node_schema_and_execute(comfy_host):
    from editlab.nodes.tiny import EditLabTinyModels

    schema = EditLabTinyModels.define_schema()
    assert schema.node_id == "EditLabTinyModels"
    assert "RANDOM" in schema.description and "meaningless" in schema.description
    out = EditLabTinyModels.execute(architecture="sd15", seed=5)
    model, clip, vae = out.result
    assert model.model.latent_format.latent_channels == 4 and vae.latent_channels == 4


def test_bad_architecture_and_seed_are_named(tiny, comfy_host):
    from editlab.nodes.common import EditLabInputError
    from editlab.nodes.tiny import EditLabTinyModels

    with pytest.raises(EditLabInputError, match="input 'architecture': expected one of flux"):
        EditLabTinyModels.execute(architecture="sd2", seed=0)
    with pytest.raises(ValueError, match="seed must be"):
        tiny("flux", -1)


def test_pack_imports_each_method_in_isolation(comfy_host, caplog, monkeypatch):
    import editlab

    import importlib.util
    spec = importlib.util.spec_from_file_location("editlab_isolation", editlab.__path__[0] + "/__init__.py",
                                                  submodule_search_locations=editlab.__path__)
    pack = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(__import__("sys").modules, "editlab_isolation", pack)
    spec.loader.exec_module(pack)
    monkeypatch.setattr(pack, "NODE_MODULES", ("tiny", "method_with_missing_dependency"))
    with caplog.at_level(logging.WARNING, logger="editlab"):
        classes = pack.load_node_classes()
    assert [c.__name__ for c in classes] == ["EditLabTinyModels"]
    lines = [r for r in caplog.records if "method_with_missing_dependency" in r.getMessage()]
    assert len(lines) == 1
