"""Every model-using node on the tiny models with the diffusion model and text encoders stored in bf16, fp16 and
fp8 (e4m3fn, cast to bf16 per layer by the host's ops): outputs finite, and what the float32 tests prove still holds
(strength 0 equals the base model, the slider touches only its word's tokens, paste-back is exact, training leaves
the MODEL it was given unchanged)."""
import numpy as np
import pytest
import torch
from skimage import data

DTYPES = ["bf16", "fp16", "fp8_e4m3fn"]
PROMPT = "a photo of a man on a beach with a dog"
PAIRS = "a man | a smiling man\na dog in a park | a smiling dog in a park\na woman | a smiling woman"


pytestmark = pytest.mark.usefixtures("server_mode")  # nodes run as the server runs them


@pytest.fixture(scope="module")
def saedit(comfy_host, tmp_path_factory):
    import folder_paths

    from editlab.nodes import saedit

    root = tmp_path_factory.mktemp("half_models")
    for folder in (saedit.SAE_FOLDER, saedit.DIRECTION_FOLDER):
        (root / folder).mkdir()
        folder_paths.folder_names_and_paths[folder] = ([str(root / folder)], {".safetensors"})
    return saedit


@pytest.fixture(scope="module")
def expression(comfy_host, tmp_path_factory):
    import folder_paths

    from editlab.nodes import expression

    folder = tmp_path_factory.mktemp("half_adapters")
    folder_paths.folder_names_and_paths[expression.ADAPTER_FOLDER] = ([str(folder)], {".safetensors", ".bin"})
    return expression


def _tiny(arch, dtype):
    from editlab.models.tiny import build_tiny_models

    return build_tiny_models(arch, 0, dtype)


def _sample(model, pos, neg, channels=16, steps=2, cfg=2.0, seed=7, record=None):
    import comfy.sample

    latent = torch.zeros(1, channels, 8, 8)
    handle = None
    if record is not None:
        handle = model.model.diffusion_model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        return comfy.sample.sample(model, comfy.sample.prepare_noise(latent, seed), steps, cfg, "euler", "simple",
                                   pos, neg, latent, disable_pbar=True)
    finally:
        if handle:
            handle.remove()


@pytest.mark.parametrize("dtype", DTYPES)
def test_saedit_nodes_in_half_precision(saedit, dtype):
    from editlab.models.saedit.tokens import prompt_tokens, word_positions

    flux = _tiny("flux", dtype)
    assert next(flux.model.model.diffusion_model.parameters()).dtype == getattr(
        torch, {"bf16": "bfloat16", "fp16": "float16", "fp8_e4m3fn": "float8_e4m3fn"}[dtype])
    if True:
        sae, _ = saedit.EditLabSAETrain.execute(
            clip=flux.clip, prompts="a man\na dog", prompts_file="", generated_prompts=120, part="auto",
            dict_size=64, top_k=8, matryoshka_groups="", lr=1e-3, batch_size=256, epochs=1, seed=0,
            name=f"half_{dtype}").result
        direction, = saedit.EditLabSAEDirection.execute(clip=flux.clip, sae=sae, pairs=PAIRS, pairs_file="",
                                                        part="auto", method="svd", percentile=99.5,
                                                        name=f"half_dir_{dtype}").result
    assert torch.isfinite(direction.direction).all()
    cond = flux.clip.encode_from_tokens_scheduled(flux.clip.tokenize(PROMPT))
    neg = flux.clip.encode_from_tokens_scheduled(flux.clip.tokenize("blurry"))

    def slider(strength):
        return saedit.EditLabSAESlider.execute(conditioning=cond, clip=flux.clip, sae=sae, direction=direction,
                                               prompt=PROMPT, word="man", strength=strength,
                                               schedule="exponential", part="auto").result[0]

    plain = _sample(flux.model, cond, neg)
    assert torch.isfinite(plain).all()
    assert torch.equal(_sample(flux.model, slider(0.0), neg), plain)
    seen = []

    def record(module, args, kwargs):
        branches = kwargs["transformer_options"]["cond_or_uncond"]
        for b, ctx in zip(branches, kwargs["context"].chunk(len(branches))):
            if b == 0:
                seen.append(ctx.clone())

    edited = _sample(flux.model, slider(1.0), neg, record=record)
    assert torch.isfinite(edited).all() and not torch.equal(edited, plain)
    pos = word_positions(flux.clip, prompt_tokens(flux.clip, PROMPT), "man")
    base = cond[0][0]
    others = [i for i in range(base.shape[1]) if i not in pos]
    # the host hands the model its context in the model's dtype: compare there
    assert seen and all(torch.equal(c[:, others], base[:, others].to(c)) for c in seen)  # c's dtype and device
    assert not torch.equal(seen[-1][:, pos], base[:, pos].to(seen[-1]))
    image, _ = saedit.EditLabSAEFeatures.execute(clip=flux.clip, sae=sae, prompt=PROMPT, part="auto", top_n=4,
                                                 direction=direction).result
    assert torch.isfinite(image).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_flow_inversion_in_half_precision(dtype):
    import comfy.samplers

    from editlab.nodes.saedit import EditLabFlowInversion

    flux = _tiny("flux", dtype)
    cond = flux.clip.encode_from_tokens_scheduled(flux.clip.tokenize("a red fox"))
    latent = flux.vae.encode(torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))).detach()
    sigmas = comfy.samplers.calculate_sigmas(flux.model.get_model_object("model_sampling"), "simple", 8)
    noise, _ = EditLabFlowInversion.execute(model=flux.model, conditioning=cond, latent={"samples": latent},
                                            sigmas=sigmas, iterations=3).result
    assert torch.isfinite(noise.noise).all() and float(noise.noise.std()) > 0.3


def _adapter_file(expression, sd15, name):
    from editlab.models.expression.adapter import random_adapter
    from editlab.models.expression.patch import cross_attention_layers

    import folder_paths

    layers = cross_attention_layers(sd15.model.model.diffusion_model)
    adapter = random_adapter(52, 32, [a.to_q.weight.shape[0] for _, a in layers], num_tokens=4, seed=1)
    image_proj, ip = adapter.parts()
    folder = folder_paths.get_folder_paths(expression.ADAPTER_FOLDER)[0]
    torch.save({"image_proj": image_proj, "ip_adapter": ip}, f"{folder}/{name}")
    return name


@pytest.mark.parametrize("dtype", DTYPES)
def test_expression_nodes_in_half_precision(expression, dtype):
    sd15 = _tiny("sd15", dtype)
    clip = sd15.clip
    pos = clip.encode_from_tokens_scheduled(clip.tokenize("a portrait of a woman"))
    neg = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    adapter, = expression.EditLabExpressionAdapterLoader.execute(
        adapter_name=_adapter_file(expression, sd15, f"half_{dtype}.bin")).result
    smile, = expression.EditLabBlendshapeEdit.execute(preset="smile", values="{}", symmetric=True,
                                                      intensity=1.0).result
    base = _sample(sd15.model, pos, neg, channels=4)
    assert torch.isfinite(base).all()
    zero, = expression.EditLabApplyExpression.execute(model=sd15.model, adapter=adapter, blendshapes=smile,
                                                      strength=0.0, start_percent=0.0, end_percent=1.0).result
    assert torch.equal(_sample(zero, pos, neg, channels=4), base)
    full, = expression.EditLabApplyExpression.execute(model=sd15.model, adapter=adapter, blendshapes=smile,
                                                      strength=1.0, start_percent=0.0, end_percent=1.0).result
    moved = _sample(full, pos, neg, channels=4)
    assert torch.isfinite(moved).all() and not torch.equal(moved, base)
    # the host's memory management loaded the adapter with the UNet, and left its precision alone
    import comfy.model_management

    net = adapter.adapter
    assert any(lm.model.model is net for lm in comfy.model_management.current_loaded_models)
    assert all(p.dtype == torch.float32 for p in net.parameters())
    reference = sd15.vae.decode(base)
    ref_model, = expression.EditLabReferenceAdapter.execute(model=sd15.model, vae=sd15.vae, reference=reference,
                                                            strength=1.0).result
    pulled = _sample(ref_model, pos, neg, channels=4, seed=3)
    assert torch.isfinite(pulled).all() and not torch.equal(pulled, _sample(sd15.model, pos, neg, channels=4, seed=3))
    assert torch.equal(_sample(sd15.model, pos, neg, channels=4), base)  # nothing above changed the shared model


def _state(model):
    return {k: v.detach().clone() for k, v in model.model.diffusion_model.state_dict().items()}


@pytest.mark.parametrize("dtype", ["fp32", "fp8_e4m3fn"])
def test_expression_training_leaves_the_given_model_untouched(expression, dtype, tmp_path):
    import folder_paths
    from PIL import Image

    faces = tmp_path / "input" / "faces"
    faces.mkdir(parents=True)
    Image.fromarray(data.astronaut()).save(faces / "a.png")
    Image.fromarray(np.ascontiguousarray(data.astronaut()[:, ::-1])).save(faces / "b.png")
    sd15 = _tiny("sd15", dtype)
    pos = sd15.clip.encode_from_tokens_scheduled(sd15.clip.tokenize("a portrait of a woman"))
    before_out = _sample(sd15.model, pos, pos, channels=4)
    before_state = _state(sd15.model)
    before_params = {k: (type(p), p.requires_grad, p.is_inference()) for k, p in
                     sd15.model.model.diffusion_model.named_parameters()}
    old = folder_paths.get_input_directory()
    folder_paths.set_input_directory(str(tmp_path / "input"))
    try:
        if True:
            _, text = expression.EditLabTrainExpressionAdapter.execute(
                model=sd15.model, clip=sd15.clip, vae=sd15.vae, folder="faces", prompt="a photo of a face",
                resolution=64, steps=3, lr=1e-3, batch_size=2, num_tokens=2, seed=0, name=f"trained_{dtype}").result
    finally:
        folder_paths.set_input_directory(old)
    import json

    stats = json.loads(text)
    assert np.isfinite(stats["loss_before"]) and np.isfinite(stats["loss_after"])
    after_state = _state(sd15.model)
    assert before_state.keys() == after_state.keys()
    assert all(torch.equal(before_state[k], after_state[k]) for k in before_state)
    after_params = {k: (type(p), p.requires_grad, p.is_inference()) for k, p in
                    sd15.model.model.diffusion_model.named_parameters()}
    assert after_params == before_params  # not swapped for other tensors, not re-flagged
    assert torch.equal(_sample(sd15.model, pos, pos, channels=4), before_out)


@pytest.mark.parametrize("dtype", DTYPES)
def test_tryon_paste_back_is_exact_in_half_precision(dtype):
    import comfy.sample
    from nodes import InpaintModelConditioning

    from editlab.nodes import tryon

    person = torch.nn.functional.interpolate(torch.from_numpy(data.astronaut()).float()[None].movedim(-1, 1) / 255,
                                             size=(128, 128), mode="bilinear", antialias=True).movedim(1, -1)
    pose, render, _ = tryon.EditLabPoseEstimate.execute(image=person, allow_no_person=False).result
    mask, = tryon.EditLabTryOnMask.execute(pose=pose, category="upper", grow=2, feather=3, keep_face=True,
                                           keep_hands=True).result
    fill = _tiny("flux_fill", dtype)
    product = torch.rand(1, 80, 60, 3, generator=torch.Generator().manual_seed(2))
    canvas, canvas_mask, info = tryon.EditLabTryOnStitch.execute(person=person, mask=mask, product=product,
                                                                 pose_image=render, layout="triptych_with_pose",
                                                                 height=128).result
    cond = fill.clip.encode_from_tokens_scheduled(fill.clip.tokenize("the person wearing the product"))
    p, n, latent = InpaintModelConditioning().encode(cond, cond, canvas, fill.vae, canvas_mask, True)
    samples = comfy.sample.sample(fill.model, comfy.sample.prepare_noise(latent["samples"], 3), 3, 1.0, "euler",
                                  "simple", p, n, latent["samples"], noise_mask=latent.get("noise_mask"),
                                  disable_pbar=True)
    generated = fill.vae.decode(samples)
    assert torch.isfinite(generated).all()
    result, = tryon.EditLabTryOnUnstitch.execute(generated=generated, stitch=info, person=person, mask=mask).result
    outside = mask[0] == 0
    assert torch.equal(result[0][outside], person[0][outside])
    flux = _tiny("flux", dtype)
    refs, = tryon.EditLabReferenceTokens.execute(conditioning=cond, vae=flux.vae, image=product, image_2=None,
                                                 method="index", max_size=64).result
    out = _sample(flux.model, refs, refs, cfg=1.0)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("dtype", ["fp32", "fp8_e4m3fn"])
def test_reference_adapter_on_sdxl_takes_the_models_pooled_width(expression, dtype):
    """SDXL's ADM input takes a pooled vector whose width the model decides (1280 for real SDXL, 32 here)."""
    from editlab.models.expression.reference import pooled_width

    sdxl = _tiny("sdxl", dtype)
    assert pooled_width(sdxl.model.model) == 32
    pos = sdxl.clip.encode_from_tokens_scheduled(sdxl.clip.tokenize("a portrait of a woman"))
    base = _sample(sdxl.model, pos, pos, channels=4)
    ref_model, = expression.EditLabReferenceAdapter.execute(model=sdxl.model, vae=sdxl.vae,
                                                            reference=sdxl.vae.decode(base), strength=1.0).result
    pulled = _sample(ref_model, pos, pos, channels=4, seed=3)
    assert torch.isfinite(pulled).all() and not torch.equal(pulled, _sample(sdxl.model, pos, pos, channels=4, seed=3))
