"""DiT-VTON nodes: pose, agnostic mask, pose-image stitching, reference tokens for DiTs, and exact paste-back."""
from __future__ import annotations

import json

import cv2  # noqa: F401 - imported here so a missing dependency removes only these nodes, with one log line
import mediapipe  # noqa: F401
import numpy as np
import torch
from comfy_api.latest import io

from ..models.tryon.mask import CATEGORIES, tryon_mask
from ..models.tryon.pose import PoseEstimator, pose_model_path, render_pose
from ..models.tryon.references import check_reference_channels
from ..models.tryon.stitch import LAYOUTS, MAX_SIDE, MIN_SIDE, check_image, scale_to_fit, stitch, unstitch
from .common import CATEGORY, EditLabInputError, EditLabNode, rgb_images
from . import host
from .host import mediapipe_dirs

CAT = f"{CATEGORY}/TryOn"
PoseType = io.Custom("EDITLAB_POSE")
StitchType = io.Custom("EDITLAB_STITCH")
REFERENCE_METHODS = ("offset", "index", "uxo")


def _uint8(image: torch.Tensor) -> np.ndarray:
    return (image.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def _checked(fn, input_name: str):
    """Run ``fn``; its ValueError becomes the error of the input it names (a StitchInputError), else of
    ``input_name``."""
    try:
        return fn()
    except EditLabInputError:
        raise
    except ValueError as exc:
        raise EditLabInputError(getattr(exc, "input_name", input_name), str(exc)) from None


def _image(image, name: str):
    """An IMAGE input as RGB (alpha dropped), its size checked before MediaPipe, OpenCV or a VAE sees it."""
    image = rgb_images(image, name, min_side=MIN_SIDE, max_side=MAX_SIDE)
    check_image(image, name)
    return image


class EditLabPoseEstimate(EditLabNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EditLabPoseEstimate", display_name="Pose Estimate (MediaPipe)", category=CAT,
            description="33 body landmarks per image (MediaPipe pose, offline) and a skeleton render on black in "
                        "OpenPose-style colours. With allow_no_person off, an image without a person is an error; "
                        "on, it gives an empty pose and a black render.",
            inputs=[io.Image.Input("image", tooltip="Photo(s) of a person."),
                    io.Boolean.Input("allow_no_person", default=False,
                                     tooltip="On: an image without a person gives an empty pose and a black render "
                                             "instead of an error.")],
            outputs=[PoseType.Output(display_name="pose"), io.Image.Output(display_name="pose_image"),
                     io.String.Output(display_name="json")],
        )

    @classmethod
    def execute(cls, image, allow_no_person) -> io.NodeOutput:
        image = _checked(lambda: _image(image, "image"), "image")
        try:
            model_path = pose_model_path(mediapipe_dirs())
        except FileNotFoundError as exc:
            raise EditLabInputError("image", str(exc)) from None
        poses = []
        with PoseEstimator(model_path) as estimator:
            for frame in image:  # a batch can be long: interruptible between frames
                host.check_interrupted()
                poses.append(estimator(_uint8(frame)))
        missing = [i + 1 for i, p in enumerate(poses) if not p.found]
        if missing and not allow_no_person:
            raise EditLabInputError("image", f"a photo with a person in it; no person found in image(s) {missing} "
                                             f"(turn on allow_no_person to pass them through)")
        renders = torch.from_numpy(np.stack([render_pose(p) for p in poses])).float() / 255.0
        return io.NodeOutput(poses, renders, json.dumps([p.to_dict() for p in poses]))


class EditLabTryOnMask(EditLabNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EditLabTryOnMask", display_name="Try-On Mask", category=CAT,
            description="The agnostic mask of the region to replace for a product category, from the pose and "
                        "person segmentation. Face and hands stay out of garment masks unless asked; feathering "
                        "softens only inside the mask. 'custom' passes your own mask through.",
            inputs=[
                PoseType.Input("pose", tooltip="The person's pose (Pose Estimate)."),
                io.Combo.Input("category", options=list(CATEGORIES), default="upper",
                               tooltip="The region the product replaces; 'custom' uses custom_mask."),
                io.Int.Input("grow", default=8, min=0, max=256, tooltip="Pixels to dilate the mask by."),
                io.Int.Input("feather", default=8, min=0, max=256, tooltip="Soft edge width, inside the mask."),
                io.Boolean.Input("keep_face", default=True, tooltip="Keep the face out of the mask."),
                io.Boolean.Input("keep_hands", default=True, tooltip="Keep the hands out of the mask."),
                io.Mask.Input("custom_mask", optional=True, tooltip="Your own mask, used when category is 'custom'."),
            ],
            outputs=[io.Mask.Output()],
        )

    @classmethod
    def execute(cls, pose, category, grow, feather, keep_face, keep_hands, custom_mask=None) -> io.NodeOutput:
        if category == "custom":
            if custom_mask is None:
                raise EditLabInputError("custom_mask", "a MASK when category is 'custom'")
            return io.NodeOutput(custom_mask)
        if not all(p.found for p in pose):
            raise EditLabInputError("pose", f"a pose with a person for category '{category}'; some images have none")
        masks = [tryon_mask(p, category, grow, feather, keep_face, keep_hands) for p in pose]
        return io.NodeOutput(torch.from_numpy(np.stack(masks)))


class EditLabTryOnStitch(EditLabNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EditLabTryOnStitch", display_name="Try-On Stitch", category=CAT,
            description="Person (masked) | products | optional pose render, side by side on one canvas of the given "
                        "height (sides in multiples of 16), with a canvas mask covering only the person's masked "
                        "region, for inpainting with Flux Fill or an edit model. Products: "
                        f"{MIN_SIDE} to {MAX_SIDE} px a side, letterboxed on white.",
            inputs=[
                io.Image.Input("person", tooltip="The person photo."),
                io.Mask.Input("mask", tooltip="Where the product goes on the person (Try-On Mask)."),
                io.Image.Input("product", tooltip="The product photo."),
                io.Image.Input("product_2", optional=True, tooltip="Optional second product."),
                io.Image.Input("product_3", optional=True, tooltip="Optional third product."),
                io.Image.Input("pose_image", optional=True, tooltip="Optional pose render, shown as its own panel."),
                io.Combo.Input("layout", options=list(LAYOUTS), default="side_by_side",
                               tooltip="Panel arrangement on the canvas (with or without the pose panel)."),
                io.Int.Input("height", default=1024, min=64, max=4096, step=16,
                             tooltip="Canvas height in pixels (a multiple of 16)."),
            ],
            outputs=[io.Image.Output(display_name="canvas"), io.Mask.Output(display_name="canvas_mask"),
                     StitchType.Output(display_name="stitch")],
        )

    @classmethod
    def execute(cls, person, mask, product, layout, height, product_2=None, product_3=None,
                pose_image=None) -> io.NodeOutput:
        person = _checked(lambda: _image(person, "person"), "person")
        products = [_checked(lambda: _image(image, name), name)
                    for name, image in (("product", product), ("product_2", product_2), ("product_3", product_3))
                    if image is not None]
        if pose_image is not None:
            pose_image = _checked(lambda: _image(pose_image, "pose_image"), "pose_image")
        canvas, canvas_mask, info = _checked(lambda: stitch(person, mask, products, pose_image, layout, height),
                                             "mask")
        return io.NodeOutput(canvas, canvas_mask, info)


def _reference_guard(executor, *args, **kwargs):
    """Around the model's apply_model while this conditioning is sampled: a model whose image tokens the references
    cannot join (Flux Fill) stops with an error naming Reference Tokens, not the host's shape error."""
    layout = host.flux_token_layout(executor.class_obj)
    if layout is not None and kwargs.get("ref_latents"):
        check_reference_channels(*layout, kwargs["ref_latents"])
    return executor(*args, **kwargs)


class EditLabReferenceTokens(EditLabNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EditLabReferenceTokens", display_name="Reference Tokens", category=CAT,
            description="Appends images (products, pose render) to a DiT conditioning as reference tokens: each is "
                        "VAE-encoded and concatenated to the image tokens by the host's reference-latent mechanism "
                        "(Flux Kontext style), placed by the chosen offset method. For models that take reference "
                        "latents (Flux Kontext and the like); Flux Fill does not, as its input carries the inpaint "
                        "channels: sampling Flux Fill with them stops with an error naming this node; with Fill, "
                        "stitch the product into the canvas instead.",
            inputs=[
                io.Conditioning.Input("conditioning", tooltip="The conditioning to append the references to."),
                io.Vae.Input("vae", tooltip="The model's VAE, to encode the references."),
                io.Image.Input("image", tooltip="A reference image (product or pose render)."),
                io.Image.Input("image_2", optional=True, tooltip="Optional second reference."),
                io.Image.Input("image_3", optional=True, tooltip="Optional third reference."),
                io.Combo.Input("method", options=list(REFERENCE_METHODS), default="offset",
                               tooltip="Where the reference tokens are placed (offset, index or uxo)."),
                io.Int.Input("max_size", default=1024, min=64, max=4096, step=16,
                             tooltip="Longest side after scaling (tokens grow with the area)."),
            ],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, conditioning, vae, image, method, max_size, image_2=None, image_3=None) -> io.NodeOutput:
        given = [(name, _checked(lambda: _image(img, name), name))
                 for name, img in (("image", image), ("image_2", image_2), ("image_3", image_3)) if img is not None]
        bar = host.progress(sum(img.shape[0] for _, img in given))
        latents = []
        for _, img in given:  # scaled and encoded one picture at a time, interruptible between them
            encoded = []
            for i in range(img.shape[0]):
                host.check_interrupted()
                encoded.append(vae.encode(scale_to_fit(img[i:i + 1], max_size)))
                bar.update(1)
            latents.append(torch.cat(encoded))
        out = host.conditioning_set_values(conditioning, {"reference_latents": latents}, append=True)
        out = host.conditioning_set_values(out, {"reference_latents_method": method})
        return io.NodeOutput(host.with_apply_model_wrapper(out, "editlab_reference_tokens", _reference_guard))


class EditLabTryOnUnstitch(EditLabNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EditLabTryOnUnstitch", display_name="Try-On Unstitch", category=CAT,
            description="Cuts the person panel out of the generated canvas, brings it back to the original size and "
                        "blends it in only where the mask is above 0: every other pixel is the input's, bit for bit.",
            inputs=[io.Image.Input("generated", tooltip="The decoded canvas from the sampler."),
                    StitchType.Input("stitch", tooltip="The layout from Try-On Stitch."),
                    io.Image.Input("person", tooltip="The original person photo."),
                    io.Mask.Input("mask", tooltip="The try-on mask: only pixels inside it change.")],
            outputs=[io.Image.Output()],
        )

    @classmethod
    def execute(cls, generated, stitch, person, mask) -> io.NodeOutput:
        return io.NodeOutput(_checked(lambda: unstitch(generated, stitch, person, mask), "stitch"))


NODES = [EditLabPoseEstimate, EditLabTryOnMask, EditLabTryOnStitch, EditLabReferenceTokens, EditLabTryOnUnstitch]
