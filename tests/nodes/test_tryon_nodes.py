"""Try-on nodes on a real photo with the tiny Flux Fill and Flux: reference tokens, sampling, exact paste-back."""
import numpy as np
import pytest
import torch
from skimage import data


@pytest.fixture(scope="module")
def person():
    image = torch.from_numpy(data.astronaut()).float()[None] / 255
    return torch.nn.functional.interpolate(image.movedim(-1, 1), size=(128, 128), mode="bilinear",
                                           antialias=True).movedim(1, -1)


@pytest.fixture(scope="module")
def nodes(comfy_host):
    from editlab.nodes import tryon

    return tryon


@pytest.fixture(scope="module")
def pose_and_mask(nodes, person):
    pose, render, text = nodes.EditLabPoseEstimate.execute(image=person, allow_no_person=False).result
    mask, = nodes.EditLabTryOnMask.execute(pose=pose, category="upper", grow=2, feather=3, keep_face=True,
                                           keep_hands=True).result
    return pose, render, mask


def test_pose_node_and_no_person(nodes, person, pose_and_mask):
    from editlab.nodes.common import EditLabInputError

    pose, render, _ = pose_and_mask
    assert len(pose) == 1 and pose[0].found and render.shape == person.shape
    coffee = torch.from_numpy(data.coffee()).float()[None] / 255
    with pytest.raises(EditLabInputError, match="input 'image': expected a photo with a person.*\\[2\\]"):
        nodes.EditLabPoseEstimate.execute(image=torch.cat([person, torch.nn.functional.interpolate(
            coffee.movedim(-1, 1), size=(128, 128)).movedim(1, -1)]), allow_no_person=False)
    poses, renders, _ = nodes.EditLabPoseEstimate.execute(image=coffee, allow_no_person=True).result
    assert not poses[0].found and renders.max() == 0
    with pytest.raises(EditLabInputError, match="input 'pose'"):
        nodes.EditLabTryOnMask.execute(pose=poses, category="upper", grow=0, feather=0, keep_face=True,
                                       keep_hands=True)
    with pytest.raises(EditLabInputError, match="input 'custom_mask'"):
        nodes.EditLabTryOnMask.execute(pose=poses, category="custom", grow=0, feather=0, keep_face=True,
                                       keep_hands=True)


def _image_tokens(model, run):
    """Count the image tokens entering the Flux blocks (img_in's input) during ``run``."""
    seen = []
    handle = model.model.diffusion_model.img_in.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1]))
    try:
        run()
    finally:
        handle.remove()
    return seen


def test_reference_tokens_append_latents_and_grow_the_sequence(nodes, person):
    import comfy.sample

    from editlab.models.tiny import build_tiny_models

    flux = build_tiny_models("flux", 0)
    cond = flux.clip.encode_from_tokens_scheduled(flux.clip.tokenize("a person wearing the jacket"))
    product = torch.rand(1, 96, 64, 3, generator=torch.Generator().manual_seed(1))
    out, = nodes.EditLabReferenceTokens.execute(conditioning=cond, vae=flux.vae, image=product, image_2=person,
                                                method="index", max_size=64).result
    refs = out[0][1]["reference_latents"]
    assert len(refs) == 2 and out[0][1]["reference_latents_method"] == "index"
    # 96x64 px -> longest side 64 -> 64x42, sides floored to multiples of 16: 64x32 px; the person 64x64; 8x VAE
    assert refs[0].shape[-2:] == (8, 4) and refs[1].shape[-2:] == (8, 8)
    assert "reference_latents" not in cond[0][1], "the input conditioning is not modified"
    latent = torch.zeros(1, 16, 8, 8)

    def sample(c):
        return lambda: comfy.sample.sample(flux.model, comfy.sample.prepare_noise(latent, 0), 2, 1.0, "euler",
                                           "simple", c, c, latent, disable_pbar=True)

    plain, with_refs = _image_tokens(flux.model, sample(cond)), _image_tokens(flux.model, sample(out))
    # 8x8 latent in 2x2 patches = 16 tokens; the references add 4*2 = 8 and 4*4 = 16
    assert set(plain) == {16} and set(with_refs) == {16 + 8 + 16}


def test_tryon_on_flux_fill_keeps_every_pixel_outside_the_mask(nodes, person, pose_and_mask):
    import comfy.sample
    from nodes import InpaintModelConditioning

    from editlab.models.tiny import build_tiny_models

    _, render, mask = pose_and_mask
    fill = build_tiny_models("flux_fill", 0)
    product = torch.rand(1, 80, 60, 3, generator=torch.Generator().manual_seed(2))
    canvas, canvas_mask, info = nodes.EditLabTryOnStitch.execute(
        person=person, mask=mask, product=product, pose_image=render, layout="triptych_with_pose",
        height=128).result
    assert canvas.shape[1] == 128 and canvas.shape[2] % 16 == 0
    cond = fill.clip.encode_from_tokens_scheduled(fill.clip.tokenize("the person wearing the product"))
    pos, neg, latent = InpaintModelConditioning().encode(cond, cond, canvas, fill.vae, canvas_mask, True)
    samples = comfy.sample.sample(fill.model, comfy.sample.prepare_noise(latent["samples"], 3), 3, 1.0, "euler",
                                  "simple", pos, neg, latent["samples"], noise_mask=latent.get("noise_mask"),
                                  disable_pbar=True)
    generated = fill.vae.decode(samples)
    assert generated.shape[1:3] == canvas.shape[1:3]
    result, = nodes.EditLabTryOnUnstitch.execute(generated=generated, stitch=info, person=person, mask=mask).result
    outside = mask[0] == 0
    assert outside.any() and (~outside).any()
    assert torch.equal(result[0][outside], person[0][outside])
    assert not torch.equal(result[0][~outside], person[0][~outside])


def test_bad_sizes_and_batches_are_named(nodes, person, pose_and_mask):
    from editlab.nodes.common import EditLabInputError

    _, _, mask = pose_and_mask
    for size in ((1, 1), (10000, 16)):
        with pytest.raises(EditLabInputError, match="input 'product': expected an image with sides of 8 to 8192 px"):
            nodes.EditLabTryOnStitch.execute(person=person, mask=mask, product=torch.rand(1, *size, 3),
                                             layout="side_by_side", height=128)
    with pytest.raises(EditLabInputError, match="input 'mask'.*the mask is empty"):
        nodes.EditLabTryOnStitch.execute(person=person, mask=torch.zeros(1, 128, 128),
                                         product=torch.rand(1, 32, 32, 3), layout="side_by_side", height=128)
    with pytest.raises(EditLabInputError, match="input 'product'.*batch of 3"):
        nodes.EditLabTryOnStitch.execute(person=person.expand(2, -1, -1, -1), mask=mask,
                                         product=torch.rand(3, 32, 32, 3), layout="side_by_side", height=128)


def test_reference_tokens_sample_as_the_hosts_reference_latent_does(nodes, person):
    """On a model that takes reference latents, Reference Tokens conditions the sampler exactly as the host's own
    ReferenceLatent node given the same encoded latent (the guard it carries changes nothing there)."""
    import comfy.sample
    from comfy_extras.nodes_edit_model import ReferenceLatent

    from editlab.models.tiny import build_tiny_models

    flux = build_tiny_models("flux", 0)
    cond = flux.clip.encode_from_tokens_scheduled(flux.clip.tokenize("a person wearing the jacket"))
    ours, = nodes.EditLabReferenceTokens.execute(conditioning=cond, vae=flux.vae, image=person, method="offset",
                                                 max_size=64).result
    encoded = flux.vae.encode(nodes.scale_to_fit(person, 64))
    theirs = ReferenceLatent.execute(cond, {"samples": encoded}).result[0]
    latent = torch.zeros(1, 16, 8, 8)

    def sample(c):
        return comfy.sample.sample(flux.model, comfy.sample.prepare_noise(latent, 4), 2, 2.0, "euler", "simple",
                                   c, cond, latent, disable_pbar=True)

    assert torch.equal(sample(ours), sample(theirs))
    assert not torch.equal(sample(ours), sample(cond)), "the reference changes the result"


def test_reference_tokens_on_flux_fill_are_refused_naming_the_node(nodes, person):
    """Flux Fill's tokens carry the inpaint channels: the sampler stops with an error naming Reference Tokens and
    what to use instead, not the host's shape error; the model and its conditioning are usable afterwards."""
    import comfy.sample
    from nodes import InpaintModelConditioning

    from editlab.models.tiny import build_tiny_models
    from editlab.models.tryon.references import ReferenceTokensError

    fill = build_tiny_models("flux_fill", 0)
    cond = fill.clip.encode_from_tokens_scheduled(fill.clip.tokenize("the person wearing the product"))
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:48, 16:48] = 1
    image = person[:, :64, :64]
    pos, neg, latent = InpaintModelConditioning().encode(cond, cond, image, fill.vae, mask, False)
    with_refs, = nodes.EditLabReferenceTokens.execute(conditioning=pos, vae=fill.vae, image=person, method="offset",
                                                      max_size=64).result

    def sample(positive):
        return comfy.sample.sample(fill.model, comfy.sample.prepare_noise(latent["samples"], 3), 2, 1.0, "euler",
                                   "simple", positive, neg, latent["samples"], disable_pbar=True)

    with pytest.raises(ReferenceTokensError) as err:
        sample(with_refs)
    message = str(err.value)
    assert "Reference Tokens" in message and "Flux Fill" in message and "Try-On Stitch" in message
    assert "96 channels per latent pixel" in message and "carries 16" in message
    assert sample(pos).shape == latent["samples"].shape, "the same model samples the plain conditioning afterwards"
