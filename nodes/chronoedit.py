"""ChronoEdit nodes: an image edit as a short Wan 2.1 image-to-video clip (input first, edit last), optionally with
temporal reasoning frames dropped at step k, with any of the host's samplers; the reasoning trajectory as frames.

The method lives in ``models/chronoedit/``; these nodes check inputs, call it, return. Sampling is the host's
(``host.sample_with``: the sampler object KSampler uses, run by SamplerCustom's entry point).
"""
from __future__ import annotations

import logging

import torch
from comfy_api.latest import io

from ..models.chronoedit import (AUTHORS_AREA, AUTHORS_FRAMES, DEFAULT_REASONING_FRAMES, MAX_LATENT_FRAMES,
                                 conditioning_video, frame0_mask, keep_ends, kept_positions, rope_scale_for,
                                 size_for_area, start_latent, temporal_reasoning, video_frames)
from . import host
from .common import CATEGORY, EditLabInputError, EditLabNode, rgb_images

log = logging.getLogger(__name__)
CAT = f"{CATEGORY}/ChronoEdit"
CONCAT_KEYS = ("concat_latent_image", "concat_mask")
MAX_SIDE = 4096  # px: a 4096x4096 edit is already far past what Wan 2.1 was trained on (1280x720)


def _video_vae_frames(vae, latent_frames: int) -> bool:
    """Whether ``vae`` is a video VAE that turns 4(T-1)+1 video frames into T latent frames (Wan 2.1's does)."""
    ratio = getattr(vae, "downscale_ratio", None)
    if not isinstance(ratio, tuple) or not callable(ratio[0]):
        return False
    try:
        return int(ratio[0](video_frames(latent_frames))) == latent_frames
    except Exception:  # noqa: BLE001 - a VAE of another kind
        return False


def _checked_image(image, input_name: str = "image"):
    shape = tuple(getattr(image, "shape", ()))
    if len(shape) == 4 and shape[0] == 0:
        raise EditLabInputError(input_name, "one input image (this IMAGE batch is empty)")
    image = rgb_images(image, input_name, min_side=16, max_side=16384)
    if image.shape[0] > 1:
        log.info("EditLab ChronoEdit: %s holds %d images; editing the first", input_name, image.shape[0])
    return image[:1]


def _slice_conditioning(conditioning):
    """A copy of ``conditioning`` whose concat latents and masks keep frames [0, -1] (other values shared)."""
    out = []
    for tensor, values in conditioning:
        values = dict(values)
        for key in CONCAT_KEYS:
            if key in values and torch.is_tensor(values[key]) and values[key].ndim == 5:
                values[key] = keep_ends(values[key])
        out.append([tensor, values])
    return out


def _check_conditioning(conditioning, frames: int, input_name: str) -> None:
    for _, values in conditioning:
        concat = values.get("concat_latent_image")
        if not torch.is_tensor(concat) or concat.ndim != 5 or concat.shape[2] != frames:
            got = tuple(concat.shape) if torch.is_tensor(concat) else "no concat latent"
            raise EditLabInputError(input_name, f"the {input_name} conditioning of ChronoEdit Conditioning for this "
                                                f"latent (a concat latent of {frames} frames)", got)


def _layout_from_conditioning(positive, samples):
    """ChronoEdit's start latent and frame-0 noise mask for an empty latent of WanImageToVideo (ComfyUI's template):
    frame 0 is the conditioning's encoded input image."""
    concat = next((v.get("concat_latent_image") for _, v in positive if "concat_latent_image" in v), None)
    if not torch.is_tensor(concat) or concat.ndim != 5 or concat.shape[2] != samples.shape[2]:
        _check_conditioning(positive, samples.shape[2], "positive")
    if concat.shape[-2:] != samples.shape[-2:]:
        raise EditLabInputError("latent", f"a latent of the conditioning's size {tuple(concat.shape[-2:])}",
                                tuple(samples.shape))
    log.info("EditLab ChronoEdit: an empty latent without a noise mask (WanImageToVideo): frame 0 is pinned to the "
             "conditioning's input latent")
    start = start_latent(concat.to(samples), samples.shape[2]).expand(samples.shape[0], -1, -1, -1, -1).clone()
    return start, frame0_mask(samples.shape[2], *samples.shape[-2:], device=samples.device, dtype=samples.dtype)


def _expects_image_features(model) -> bool:
    """Whether the diffusion model projects CLIP vision features into its cross-attention (Wan 2.1 I2V's img_emb)."""
    return getattr(getattr(model.model, "diffusion_model", None), "img_emb", None) is not None


def _check_image_features(model, positive, negative, allow_missing: bool) -> None:
    """Refuse conditioning without CLIP vision features for a model whose image cross-attention reads them: the
    host's Wan code would then give that attention the text tokens instead."""
    if not _expects_image_features(model):
        return
    for name, conditioning in (("positive", positive), ("negative", negative)):
        if all(values.get("clip_vision_output") is not None for _, values in conditioning):
            continue
        if allow_missing:
            log.warning("EditLab ChronoEdit: no CLIP vision features in the %s conditioning (without_clip_vision): "
                        "the model's image cross-attention reads the text tokens", name)
            return
        raise EditLabInputError(name, "conditioning with the input's CLIP vision features: this model has an image "
                                      "projection (Wan 2.1 I2V / ChronoEdit 14B) and without them the host feeds "
                                      "the text tokens into its image cross-attention. Connect CLIP Vision Encode "
                                      "(clip_vision_h) to clip_vision_output of ChronoEdit Conditioning (or of "
                                      "WanImageToVideo), or turn on without_clip_vision for a dry run",
                                "no clip_vision_output")


class EditLabChronoEditConditioning(EditLabNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EditLabChronoEditConditioning", display_name="ChronoEdit Conditioning", category=CAT,
            description="Lays an image edit out as ChronoEdit does: a short video whose frame 0 is the input image "
                        "and whose last frame is the edit. Resizes the image to the target area (keeping its aspect "
                        "ratio, sides in multiples of 16, as the authors) or to width x height, encodes input + grey "
                        "frames for the conditioning (mask on frame 0) and returns a LATENT holding the input's "
                        "latent at frame 0, zeros after, with a noise mask that keeps frame 0 at the input. Without "
                        "reasoning: 2 latent frames (5 video frames), the edit at temporal position 7; with "
                        "reasoning: more frames (8 = 29 video frames, the authors' default).",
            inputs=[
                io.Conditioning.Input("positive", tooltip="The edit instruction, encoded (Wan's UMT5 text encoder)."),
                io.Conditioning.Input("negative", tooltip="The negative prompt, encoded."),
                io.Vae.Input("vae", tooltip="The Wan 2.1 VAE (wan_2.1_vae.safetensors)."),
                io.Image.Input("image", tooltip="The image to edit (the first of a batch is used)."),
                io.Int.Input("target_area", default=AUTHORS_AREA, min=16 * 16, max=MAX_SIDE * MAX_SIDE, step=16,
                             tooltip="Pixels of the edit when width/height are 0: the input's aspect ratio kept, "
                                     "sides rounded down to multiples of 16 (authors: 720x1280 = 921600)."),
                io.Int.Input("width", default=0, min=0, max=MAX_SIDE, step=16,
                             tooltip="Width of the edit in px (a multiple of 16); 0 = from target_area."),
                io.Int.Input("height", default=0, min=0, max=MAX_SIDE, step=16,
                             tooltip="Height of the edit in px (a multiple of 16); 0 = from target_area."),
                io.Boolean.Input("reasoning", default=False,
                                 tooltip="Temporal reasoning: the model also imagines the frames between the input "
                                         "and the edit (slower; the trajectory can be saved as a video)."),
                io.Int.Input("reasoning_frames", default=DEFAULT_REASONING_FRAMES, min=2, max=MAX_LATENT_FRAMES,
                             tooltip="Latent frames with reasoning, input and edit included (8 = 29 video frames, "
                                     "the authors' default and the only count their temporal positions are "
                                     "defined for; 3-7 and 9-21 are ours: frames at positions 0..T-1, the edit at "
                                     "T-1, a warning is logged). Ignored without reasoning (2 frames)."),
                io.ClipVisionOutput.Input("clip_vision_output", optional=True,
                                          tooltip="CLIP vision features of the input (CLIP Vision Encode with "
                                                  "clip_vision_h), as Wan 2.1 I2V 14B and ChronoEdit use them. "
                                                  "The sampler refuses a model with an image projection without "
                                                  "them (unless its without_clip_vision is on: tiny dry runs)."),
            ],
            outputs=[io.Conditioning.Output(display_name="positive"), io.Conditioning.Output(display_name="negative"),
                     io.Latent.Output(display_name="latent")],
        )

    @classmethod
    def execute(cls, positive, negative, vae, image, target_area, width, height, reasoning, reasoning_frames,
                clip_vision_output=None) -> io.NodeOutput:
        image = _checked_image(image)
        frames = int(reasoning_frames) if reasoning else 2
        if reasoning and not 3 <= frames <= MAX_LATENT_FRAMES:
            raise EditLabInputError("reasoning_frames", f"3 to {MAX_LATENT_FRAMES} latent frames with reasoning on "
                                                        f"(2 frames is the plain edit: turn reasoning off)", frames)
        if not _video_vae_frames(vae, frames):
            raise EditLabInputError("vae", f"a video VAE that makes {frames} latent frames out of "
                                           f"{video_frames(frames)} video frames (the Wan 2.1 VAE)",
                                    type(getattr(vae, "first_stage_model", vae)).__name__)
        if width or height:
            for name, side in (("width", width), ("height", height)):
                if side < 16 or side % 16:
                    raise EditLabInputError(name, "a multiple of 16 (or width and height both 0: from target_area)",
                                            side)
            w, h = int(width), int(height)
        else:
            w, h = size_for_area(image.shape[2], image.shape[1], int(target_area))
        if (image.shape[2], image.shape[1]) != (w, h):
            log.info("EditLab ChronoEdit: input image %dx%d resized to %dx%d (bilinear, centre crop)",
                     image.shape[2], image.shape[1], w, h)
            image = host.resize_image(image, w, h)
        concat = vae.encode(conditioning_video(image, frames))
        if concat.ndim != 5 or concat.shape[2] != frames:
            raise EditLabInputError("vae", f"a video VAE making {frames} latent frames", tuple(concat.shape))
        mask = frame0_mask(frames, concat.shape[-2], concat.shape[-1], device=concat.device, dtype=concat.dtype)
        values = {"concat_latent_image": concat, "concat_mask": mask}
        if clip_vision_output is not None:
            values["clip_vision_output"] = clip_vision_output
        positive = host.conditioning_set_values(positive, values)
        negative = host.conditioning_set_values(negative, values)
        latent = {"samples": start_latent(concat, frames), "noise_mask": mask.clone()}
        return io.NodeOutput(positive, negative, latent)


class EditLabTemporalReasoningSampler(EditLabNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EditLabTemporalReasoningSampler", display_name="ChronoEdit Temporal Reasoning Sampler",
            category=CAT,
            description="Samples a ChronoEdit latent with any of ComfyUI's samplers. Steps 0..k-1 denoise all frames "
                        "jointly (reasoning); at step k only frames [0, -1] are kept (latents, the conditioning's "
                        "concat latents and masks, and their temporal positions) and the same sampler restarts on "
                        "them at the same sigma, so multistep and SDE samplers work. k = 0 is the plain 2-frame "
                        "edit, k = steps never drops. Frame 0 stays the input. Returns the edit (2 latent frames: "
                        "input, edit) and the reasoning trajectory.",
            inputs=[
                io.Model.Input("model", tooltip="A Wan 2.1 image-to-video model: ChronoEdit 14B "
                                                "(chrono_edit_14B_fp16.safetensors), with its distill LoRA or not."),
                io.Conditioning.Input("positive", tooltip="Positive conditioning of ChronoEdit Conditioning."),
                io.Conditioning.Input("negative", tooltip="Negative conditioning of ChronoEdit Conditioning."),
                io.Latent.Input("latent", tooltip="The LATENT of ChronoEdit Conditioning (or WanImageToVideo's: "
                                                  "frame 0 is then pinned to its conditioning's input)."),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="Noise seed, as KSampler (the restart's SDE noise uses seed + 1)."),
                io.Int.Input("steps", default=50, min=1, max=10000,
                             tooltip="Sampling steps (authors: 50; the 8-step distill LoRA: 8)."),
                io.Float.Input("cfg", default=5.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance (authors: 5; the distill LoRA: 1)."),
                io.Combo.Input("sampler_name", options=list(host.SAMPLER_NAMES), default="uni_pc",
                               tooltip="Any ComfyUI sampler (authors: UniPC)."),
                io.Combo.Input("scheduler", options=list(host.SCHEDULER_NAMES), default="simple",
                               tooltip="The scheduler; the flow shift comes from ModelSamplingSD3 on the model "
                                       "(authors: 5; the distill LoRA: 2)."),
                io.Int.Input("reasoning_steps", default=50, min=0, max=10000,
                             tooltip="k: steps that denoise all reasoning frames before they are dropped (0 = the "
                                     "plain 2-frame edit; = steps: never dropped, authors' default 50). Ignored "
                                     "for a 2-frame latent (reasoning off)."),
                io.Boolean.Input("pin_first_frame", default=True, optional=True,
                                 tooltip="On (ours): frame 0 is held at the input's latent by a noise mask and set "
                                         "to it in the results. Off (the authors'): frame 0 is denoised from noise "
                                         "with the other frames, only the concat conditioning carries the input."),
                io.Boolean.Input("without_clip_vision", default=False, optional=True,
                                 tooltip="A model with an image projection (Wan 2.1 I2V, ChronoEdit 14B) needs the "
                                         "input's CLIP vision features (clip_vision_output of ChronoEdit "
                                         "Conditioning); without them the host would feed the text tokens into the "
                                         "image cross-attention, so the sampler refuses. On: run anyway (dry runs "
                                         "on the tiny models, which have no CLIP vision encoder)."),
            ],
            outputs=[io.Latent.Output(display_name="edited"), io.Latent.Output(display_name="trajectory")],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent, seed, steps, cfg, sampler_name, scheduler,
                reasoning_steps, pin_first_frame=True, without_clip_vision=False) -> io.NodeOutput:
        channels = host.wan_i2v_latent_channels(model)
        if channels is None:
            raise EditLabInputError("model", "a Wan 2.1 image-to-video model (ChronoEdit 14B or Wan 2.1 I2V)",
                                    host.model_family(model))
        samples, mask = latent.get("samples"), latent.get("noise_mask")
        if (torch.is_tensor(samples) and samples.ndim == 5 and mask is None and not samples.any()
                and samples.shape[2] >= 2):
            samples, mask = _layout_from_conditioning(positive, samples)  # WanImageToVideo's empty latent
        if (not torch.is_tensor(samples) or samples.ndim != 5 or samples.shape[1] != channels[0]
                or samples.shape[2] < 2 or not torch.is_tensor(mask) or mask.ndim != 5
                or mask.shape[2] != samples.shape[2]):
            raise EditLabInputError("latent", "the LATENT of ChronoEdit Conditioning (a video latent of 2 or more "
                                              "frames with its frame-0 noise mask) or WanImageToVideo's empty one",
                                    tuple(samples.shape) if torch.is_tensor(samples) else type(samples).__name__)
        frames = samples.shape[2]
        _check_conditioning(positive, frames, "positive")
        _check_conditioning(negative, frames, "negative")
        if reasoning_steps > steps:
            raise EditLabInputError("reasoning_steps", f"at most steps ({steps})", reasoning_steps)
        _check_image_features(model, positive, negative, without_clip_vision)
        k = int(reasoning_steps) if frames > 2 else 0
        if frames == 2 and reasoning_steps:
            log.info("EditLab ChronoEdit: a 2-frame latent (reasoning off): reasoning_steps %d has nothing to drop",
                     reasoning_steps)

        last = kept_positions(frames)[1]
        options = host.rope_options(model)
        if float(options.get("scale_t", 1.0)) != 1.0:
            log.info("EditLab ChronoEdit: the model's RoPE scale_t %s is replaced by ChronoEdit's temporal positions",
                     options["scale_t"])
        models = {}
        for now in {frames, 2}:
            m = model.clone()
            host.set_rope_options(m, {**options, "scale_t": rope_scale_for(now, last)})
            models[now] = m
        kept_conds = (_slice_conditioning(positive), _slice_conditioning(negative))
        sigmas = host.sampling_sigmas(models[frames], steps, sampler_name, scheduler)
        k = min(k, len(sigmas) - 1)  # a scheduler may give fewer steps than asked
        if 0 < k < len(sigmas) - 1 and float(sigmas[k]) >= 1.0:
            # the hand-over divides the leftover state by (1 - sigma_k), as KSamplerAdvanced's does
            raise EditLabInputError("reasoning_steps", "a step where this schedule has left sigma 1 (the drop hands "
                                                       "the frames over at sigma_k < 1)", reasoning_steps)
        update = host.step_previews(models[frames], len(sigmas) - 1)
        seed = int(seed)

        def sample(lat, noise, noise_mask, sig, first_step, on_denoised, restart):
            now = lat.shape[2]
            pos, neg = (positive, negative) if now == frames else kept_conds

            def callback(step, x0, x, total):
                host.check_interrupted()
                if on_denoised is not None:
                    on_denoised(first_step + step, x0)
                update(first_step + step, x0[:, :, -1:])

            run_seed = (seed + 1) % 2**64 if restart else seed
            return host.sample_with(models[now], sampler_name, noise, cfg, sig, pos, neg, lat, noise_mask, run_seed,
                                    callback)

        if frames not in AUTHORS_FRAMES:
            log.warning("EditLab ChronoEdit: %d latent frames: the authors' temporal positions are defined for 2 "
                        "(edit at 7) and 8 (0..7) frames only; these %d sit at 0..%d", frames, frames, frames - 1)
        result = temporal_reasoning(sample, samples, mask, lambda lat: host.initial_noise(lat, seed), sigmas, k,
                                    lambda x: host.latent_to_outer(models[frames], x),
                                    pin_frame0=bool(pin_first_frame))
        return io.NodeOutput({"samples": result.edited}, {"samples": result.trajectory})


class EditLabTrajectoryToVideo(EditLabNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EditLabTrajectoryToVideo", display_name="ChronoEdit Trajectory to Video", category=CAT,
            description="Decodes a ChronoEdit trajectory (or edit) LATENT as the authors do: the reasoning frames in "
                        "one pass, the edit in context of the input only. Returns every video frame (for Save "
                        "Animated WEBP / Create Video) and the edited image (the last frame).",
            inputs=[
                io.Latent.Input("trajectory", tooltip="The trajectory (or edited) LATENT of the Temporal Reasoning "
                                                      "Sampler."),
                io.Vae.Input("vae", tooltip="The Wan 2.1 VAE."),
            ],
            outputs=[io.Image.Output(display_name="frames"), io.Image.Output(display_name="edited")],
        )

    @classmethod
    def execute(cls, trajectory, vae) -> io.NodeOutput:
        samples = trajectory.get("samples")
        if not torch.is_tensor(samples) or samples.ndim != 5 or samples.shape[2] < 2:
            raise EditLabInputError("trajectory", "a ChronoEdit video latent (B, C, T >= 2, h, w)",
                                    tuple(samples.shape) if torch.is_tensor(samples) else type(samples).__name__)
        if not _video_vae_frames(vae, samples.shape[2]):
            raise EditLabInputError("vae", "a video VAE (the Wan 2.1 VAE)",
                                    type(getattr(vae, "first_stage_model", vae)).__name__)
        samples = samples[:1]

        def decode(lat):
            images = vae.decode(lat)
            return images.reshape(-1, *images.shape[-3:])

        reasoning = decode(samples[:, :, :-1])
        edit = decode(keep_ends(samples))
        frames = torch.cat([reasoning, edit[1:].to(reasoning)], dim=0)
        return io.NodeOutput(frames, edit[-1:])


NODES = [EditLabChronoEditConditioning, EditLabTemporalReasoningSampler, EditLabTrajectoryToVideo]
