"""The `chronoedit_distilled_8step` path: a LoRA in the ChronoEdit distill LoRA's key layout, loaded by the host's
stock LoraLoaderModelOnly on the tiny Wan 2.1 I2V, then the Temporal Reasoning Sampler on the patched model.

Key layout: the authors train their LoRAs with DiffSynth-Studio on the original Wan module names and publish them for
ComfyUI as ``diffusion_model.`` + the DiffSynth name without its ``.default`` adapter part (their answer in
nv-tlabs/ChronoEdit issue #22), i.e. ``diffusion_model.blocks.N.{self_attn,cross_attn}.{q,k,v,o}.lora_{A,B}.weight``
and ``diffusion_model.blocks.N.ffn.{0,2}.lora_{A,B}.weight`` (DiffSynth's Wan LoRA targets q, k, v, o, ffn.0, ffn.2).
The released file (376 MB) was not opened here, so the I2V image projections (cross_attn.k_img / v_img) are
included as well. The file here is written by hand in that layout for every block of the tiny model; the test fails
if the host leaves any key unused ("lora key not loaded" / "NOT LOADED" in its log) or if the LoRA changes nothing.
"""
import logging

import pytest
import torch

W, H = 48, 32
RANK = 4
TARGETS = ([f"{attn}.{p}" for attn in ("self_attn", "cross_attn") for p in ("q", "k", "v", "o")] + ["ffn.0", "ffn.2"]
           + ["cross_attn.k_img", "cross_attn.v_img"])  # the I2V image keys too, in case the released file has them

pytestmark = pytest.mark.usefixtures("server_mode")


def _distill_layout_lora(diffusion_model, seed=0) -> dict:
    """{key: tensor} in the distill LoRA's layout for every block, shapes from the model's own Linear layers."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for n, _ in enumerate(diffusion_model.blocks):
        for target in TARGETS:
            linear = diffusion_model.get_submodule(f"blocks.{n}.{target}")
            out_f, in_f = linear.weight.shape
            stem = f"diffusion_model.blocks.{n}.{target}"
            sd[f"{stem}.lora_A.weight"] = torch.randn((RANK, in_f), generator=gen) * 0.3
            sd[f"{stem}.lora_B.weight"] = torch.randn((out_f, RANK), generator=gen) * 0.3
    return sd


def test_distill_lora_layout_through_stock_loader(comfy_host, tmp_path, monkeypatch, caplog):
    import folder_paths
    import nodes as host_nodes
    import safetensors.torch

    from editlab.models.tiny import build_tiny_models
    from editlab.nodes import chronoedit

    wan = build_tiny_models("wan21_i2v", 0)
    lora = _distill_layout_lora(wan.model.model.diffusion_model)
    assert len(lora) == 2 * len(TARGETS) * len(wan.model.model.diffusion_model.blocks)
    path = tmp_path / "chronoedit_distill_lora.safetensors"
    safetensors.torch.save_file(lora, str(path))
    real = folder_paths.get_full_path_or_raise
    monkeypatch.setattr(folder_paths, "get_full_path_or_raise", lambda folder, name: (
        str(path) if (folder, name) == ("loras", path.name) else real(folder, name)))

    with caplog.at_level(logging.WARNING):
        (patched,) = host_nodes.LoraLoaderModelOnly().load_lora_model_only(wan.model, path.name, 1.0)
    unused = [r.getMessage() for r in caplog.records if "not loaded" in r.getMessage().lower()]
    assert not unused, unused
    weights = {k[:-len(".weight")] + ".weight" for k in patched.patches}
    expected = {k.replace(".lora_A.weight", ".weight") for k in lora if k.endswith(".lora_A.weight")}
    assert weights == expected  # every LoRA pair became a patch on its own weight, nothing else was patched
    assert not wan.model.patches  # the loader patched a clone

    clip = wan.clip
    pos = clip.encode_from_tokens_scheduled(clip.tokenize("the cup is now red"))
    neg = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    image = torch.rand((1, H, W, 3), generator=torch.Generator().manual_seed(3))
    c = chronoedit.EditLabChronoEditConditioning.execute(
        positive=pos, negative=neg, vae=wan.vae, image=image, target_area=W * H, width=W, height=H, reasoning=False,
        reasoning_frames=8).result

    def run(model):  # the distilled workflow's settings: 8 steps, cfg 1, no reasoning
        return chronoedit.EditLabTemporalReasoningSampler.execute(
            model=model, positive=c[0], negative=c[1], latent=c[2], seed=0, steps=8, cfg=1.0, sampler_name="euler",
            scheduler="simple", reasoning_steps=0, without_clip_vision=True).result[0]["samples"]

    with_lora, without = run(patched), run(wan.model)
    assert with_lora.isfinite().all()
    assert (with_lora[:, :, 1] - without[:, :, 1]).abs().max() > 1e-3
    assert torch.equal(run(wan.model), without)  # the unpatched model is unchanged by the patched run


def test_a_key_outside_the_layout_is_reported(comfy_host, caplog):
    """The check above can fail: a key the model does not have is logged by the host as not loaded."""
    import comfy.sd

    from editlab.models.tiny import build_tiny_models

    wan = build_tiny_models("wan21_i2v", 0)
    lora = _distill_layout_lora(wan.model.model.diffusion_model)
    lora = {k.replace("blocks.0.ffn.2.", "blocks.0.ffn.1."): v for k, v in lora.items()}
    with caplog.at_level(logging.WARNING):
        comfy.sd.load_lora_for_models(wan.model, None, lora, 1.0, 0.0)
    assert any("not loaded" in r.getMessage().lower() for r in caplog.records)
