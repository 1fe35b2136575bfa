"""Layered edit (TBStar-Edit) nodes: a pattern-shift and a consistency LoRA on any ComfyUI edit model, each with its
own strength and step window; their two-stage training; the product lock; the consistency report.

The LoRAs are the host's: files read as LoraLoader reads them, applied as weight hooks with keyframes (what
CreateHookLora + CreateHookKeyframe + SetClipHooks build), trained with the host's LoRA layers. The method's own
parts (lock, report, loss weighting, the pair folder) live in ``models/layered/``.
"""
from __future__ import annotations

import json
import logging
import os

import torch
from comfy_api.latest import io

from ..models.common import atomic_save_safetensors
from ..models.layered import LayeredInputError
from . import host
from .common import CATEGORY, EditLabInputError, EditLabNode, rgb_images
from .files import inside_input_folder, input_folder, output_file, saved

CAT = f"{CATEGORY}/LayeredEdit"
log = logging.getLogger("editlab")
NONE = "None"
LORA_FOLDER = host.LORA_FOLDER
STAGES = ("both", "consistency_only")


def _input_error(exc: LayeredInputError) -> EditLabInputError:
    return EditLabInputError(exc.input_name, exc.expected, exc.got)


def _lora_options() -> list[str]:
    return [NONE] + list(host.model_files(LORA_FOLDER))


def _read_lora(name: str, input_name: str) -> dict | None:
    if name == NONE:
        return None
    path = host.model_file_path(LORA_FOLDER, name)
    if path is None:
        raise EditLabInputError(input_name, f"a LoRA file in models/{LORA_FOLDER}/ (or None)", name)
    try:
        return host.load_lora_file(path)
    except Exception as exc:  # noqa: BLE001 - a corrupt or foreign file: say so, the server goes on
        raise EditLabInputError(input_name, f"a LoRA file LoraLoader can read ({type(exc).__name__})", name) from None


def _file_stamp(name):
    path = host.model_file_path(LORA_FOLDER, name) if isinstance(name, str) and name != NONE else None
    if path is None:
        return name
    try:
        st = os.stat(path)
    except OSError:
        return name
    return name, st.st_mtime_ns, st.st_size


def _check_window(start: float, end: float, prefix: str) -> None:
    if not 0.0 <= start < end <= 1.0:
        raise EditLabInputError(f"{prefix}_start", f"0 <= {prefix}_start < {prefix}_end <= 1", (start, end))


# -- adapters ----------------------------------------------------------------------------------------------------------

class EditLabLayeredAdapters(EditLabNode):
    @classmethod
    def define_schema(cls):
        def window(prefix, what):
            return [io.Float.Input(f"{prefix}_strength", default=1.0, min=-4.0, max=4.0, step=0.05,
                                   tooltip=f"Strength of the {what} LoRA (0: installed but no change)."),
                    io.Float.Input(f"{prefix}_start", default=0.0, min=0.0, max=1.0, step=0.01,
                                   tooltip=f"Where in sampling the {what} LoRA starts acting (0 = the first step, "
                                           "as start_percent of the host's hook keyframes)."),
                    io.Float.Input(f"{prefix}_end", default=1.0, min=0.0, max=1.0, step=0.01,
                                   tooltip=f"Where it stops acting (1 = the last step); outside the window the "
                                           f"model is as without it.")]

        return io.Schema(
            node_id="EditLabLayeredAdapters", display_name="Layered Edit Adapters (TBStar)", category=CAT,
            description="TBStar-Edit's layered stack on any ComfyUI edit model (Flux Kontext and others): a "
                        "pattern-shift LoRA (turns generation into editing) and a consistency LoRA (keeps the "
                        "product's identity), each with its own strength and step window. Built on the host's LoRA "
                        "loading and hook keyframes: encode the prompt with the CLIP output (the conditioning "
                        "carries the hooks) and sample with the MODEL output. Composes with LoraLoader before or "
                        "after. 'None' leaves an adapter out.",
            inputs=[io.Model.Input("model", tooltip="The edit model (e.g. Flux Kontext from UNETLoader)."),
                    io.Clip.Input("clip", tooltip="Its text encoder: prompts encoded with the CLIP output carry the "
                                                  "adapters' hooks to the sampler."),
                    io.Combo.Input("pattern_shift_lora", options=_lora_options(), default=NONE,
                                   tooltip="Stage-1 LoRA in models/loras/ (Layered Edit Train writes "
                                           "NAME_pattern_shift.safetensors), or None."),
                    *window("pattern_shift", "pattern-shift"),
                    io.Combo.Input("consistency_lora", options=_lora_options(), default=NONE,
                                   tooltip="Stage-2 LoRA in models/loras/ (NAME_consistency.safetensors), or None."),
                    *window("consistency", "consistency")],
            outputs=[io.Model.Output(), io.Clip.Output()],
        )

    @classmethod
    def fingerprint_inputs(cls, pattern_shift_lora=NONE, consistency_lora=NONE, **kwargs):
        """A LoRA file rewritten under the same name (Layered Edit Train with overwrite) is read again."""
        return tuple(_file_stamp(name) for name in (pattern_shift_lora, consistency_lora))

    @classmethod
    def execute(cls, model, clip, pattern_shift_lora, pattern_shift_strength, pattern_shift_start,
                pattern_shift_end, consistency_lora, consistency_strength, consistency_start,
                consistency_end) -> io.NodeOutput:
        _check_window(pattern_shift_start, pattern_shift_end, "pattern_shift")
        _check_window(consistency_start, consistency_end, "consistency")
        groups, patches = [], []
        for prefix, name, strength, start, end in (
                ("pattern_shift", pattern_shift_lora, pattern_shift_strength, pattern_shift_start, pattern_shift_end),
                ("consistency", consistency_lora, consistency_strength, consistency_start, consistency_end)):
            lora = _read_lora(name, f"{prefix}_lora")
            if lora is None:
                continue
            loaded = host.lora_patches(model, lora)
            if not loaded:
                raise EditLabInputError(f"{prefix}_lora", "a LoRA for this model (none of its keys matches the "
                                                          "model's weights)", name)
            groups.append(host.windowed_lora_hooks(lora, float(strength), float(start), float(end)))
            patches.append(loaded)
        if not groups:
            return io.NodeOutput(model.clone(), clip.clone())
        hooks = host.combine_hooks(groups)
        m, _ = host.model_with_weight_hooks(model, hooks, patches)
        return io.NodeOutput(m, host.clip_with_cond_hooks(clip, hooks))


# -- training ----------------------------------------------------------------------------------------------------------

def encode_pairs(model, clip, vae, pairs, resolution: int, device=None, should_stop=None) -> list:
    """Each pair as the tensors training needs: target latent (model space), source latent (the reference, as
    ReferenceLatent stores it), instruction context + pooled, the product mask (or None); uniform loss weights
    (stage 1: ``weighted(data, 1.0)``; stage 2: ``weighted(data, product_weight)``). All kept on the CPU (a Flux T5
    context is 256 x 4096 fp32 per pair): training moves one pair's tensors to the compute device per step.
    ``device`` is accepted for older callers and not used."""
    from ..models.layered.data import load_square
    from ..models.layered.train import latent_weights

    base = model.model
    out = []
    with torch.inference_mode(False), torch.no_grad():
        for p in pairs:
            if should_stop:
                should_stop()
            try:
                src = load_square(p.source, resolution)[None]
                tgt = load_square(p.target, resolution)[None]
                mask = load_square(p.mask, resolution, "L") if p.mask else None
            except Exception as exc:  # noqa: BLE001 - unreadable, truncated, a decompression bomb
                raise EditLabInputError("folder", f"readable images for pair {p.name} ({exc})") from None
            cond = host.encoded(clip.encode_from_tokens_scheduled, clip.tokenize(p.instruction))
            pooled = cond[0][1].get("pooled_output")
            x0 = host.encoded(lambda: base.process_latent_in(vae.encode(tgt)).float())
            cpu = torch.device("cpu")
            out.append({"name": p.name, "target": x0.to(cpu),
                        "ref": host.encoded(lambda: vae.encode(src).float()).to(cpu),
                        "context": cond[0][0].float().to(cpu),
                        "pooled": None if pooled is None else pooled.float().to(cpu),
                        "mask": mask, "weights": latent_weights(None, tuple(x0.shape[-2:]), 1.0)})
    return out


def weighted(data: list, product_weight: float) -> list:
    """The pairs with each latent cell's loss weight 1 + (product_weight - 1) x the product's cover of the cell."""
    from ..models.layered.train import latent_weights

    with torch.inference_mode(False):  # ordinary tensors: autograd saves them
        return [{**d, "weights": latent_weights(d["mask"], tuple(d["target"].shape[-2:]), product_weight)
                 .to(d["target"].device)} for d in data]


def training_forward(base, checkpoint: bool = True):
    """(transformer_options patches, saved-tensor hooks) for training through the host's Flux: every double and
    single block replaced by itself run on fresh streams (checkpointed when ``checkpoint``), attention that autograd
    can run backward through, and the hooks that copy only the saves the blocks' in-place residual adds would
    overwrite (``models/layered/blocks.py``)."""
    from ..kernels.attention.comfy import differentiable_attention
    from ..models.layered.blocks import BlockTraining, saved_tensor_copies

    patches = BlockTraining(checkpoint).patches(base.diffusion_model)
    return differentiable_attention({"patches_replace": {"dit": patches}}), saved_tensor_copies()


def train_lora_stage(model, data: list, rank: int, steps: int, lr: float, seed: int, guidance: float,
                     frozen_lora: dict | None = None, on_step=None, should_stop=None, grad_sync=None,
                     data_seed: int | None = None, gradient_checkpointing: bool = True):
    """Train one stage's LoRA on a clone of ``model`` (with ``frozen_lora`` patched in at strength 1 for stage 2),
    through the host's model_sampling and apply_model; the shared model is unpatched afterwards. ``seed`` draws the
    initial LoRA weights, ``data_seed`` (default ``seed``) the pairs, sigmas and noise (data-parallel processes share
    the first and differ in the second). The pairs stay where they are (the CPU); each step moves its pair's tensors
    to the compute device. ``gradient_checkpointing`` recomputes each transformer block in backward instead of
    keeping its activations.
    Returns (LoRA tensors in LoraLoader's format, stats)."""
    from ..models.frozen import frozen_for_autograd
    from ..models.layered.train import train_stage

    with torch.inference_mode(False):  # the server runs nodes in inference mode; trainable layers must not be
        mp = host.training_clone(model)
        if frozen_lora is not None:
            host.model_patches_lora(mp, frozen_lora, 1.0)
        layers = host.add_lora_train_layers(mp, rank, seed)
        try:
            host.load_for_training(mp)
            base, device = mp.model, host.compute_device()
            sampling = base.model_sampling

            options, saves = training_forward(base, gradient_checkpointing)

            def denoise(x, sigma, pair):
                pooled = pair["pooled"]
                extra = base.extra_conds(cross_attn=pair["context"].to(x.device),
                                         pooled_output=None if pooled is None else pooled.to(x.device),
                                         guidance=guidance, reference_latents=[pair["ref"].to(x.device)], noise=x,
                                         device=device)
                conds = {k: v.cond for k, v in extra.items() if hasattr(v, "cond")}
                return base.apply_model(x, sigma, transformer_options={**options, "sigmas": sigma}, **conds)

            params = [p for layer in layers.values() for p in layer.parameters() if p.requires_grad]
            with torch.enable_grad(), frozen_for_autograd(base.diffusion_model), saves:
                stats = train_stage(params, data, denoise, sampling.noise_scaling, sampling.percent_to_sigma, steps,
                                    lr, seed if data_seed is None else data_seed, on_step=on_step,
                                    should_stop=should_stop, grad_sync=grad_sync, device=device)
            for p in params:
                p.requires_grad_(False)
            return host.lora_state_dict(layers), stats
        finally:
            host.release(mp)


def _metadata(stage: str, stats: dict, args: dict) -> dict:
    return {"editlab_method": "layered_edit", "editlab_stage": stage,
            "editlab_stats": json.dumps(stats), "editlab_args": json.dumps(args)}


class EditLabLayeredTrain(EditLabNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EditLabLayeredTrain", display_name="Layered Edit Train (TBStar)", category=CAT,
            is_output_node=True,
            description="TBStar-Edit's two-stage training on edit pairs from a folder in ComfyUI's input folder "
                        "(NAME_source.png, NAME_target.png, NAME.txt = the instruction, NAME_mask.png = the "
                        "product mask). The source conditions the edit model as a reference latent (Flux Kontext "
                        "style); the loss is the model's own denoising objective. Stage 1 trains the pattern-shift "
                        "LoRA; stage 2 freezes it and trains the consistency LoRA with the loss weighted towards the "
                        "product mask (on the same pairs: the paper builds separate stage-2 data, which is not "
                        "implemented here). The host's LoRA layers, gradient checkpointing per block, the pairs "
                        "kept on the CPU; saved to models/loras/ in LoraLoader's format. The "
                        "input MODEL is left unchanged. Stage 1 is saved when it ends (a cancelled stage 2 can be "
                        "rerun with consistency_only). For long runs: scripts/train_layered.py.",
            inputs=[
                io.Model.Input("model", tooltip="The edit model with reference latents (Flux Kontext; kept frozen)."),
                io.Clip.Input("clip", tooltip="Its text encoder, for the instructions."),
                io.Vae.Input("vae", tooltip="Its VAE, to encode sources and targets."),
                io.String.Input("folder", default="layered_pairs",
                                tooltip="Folder of edit pairs inside ComfyUI's input folder ('.' = the input folder "
                                        "itself)."),
                io.Combo.Input("stages", options=list(STAGES), default="both",
                               tooltip="both: stage 1 then stage 2. consistency_only: stage 2 on top of the "
                                       "pattern-shift LoRA chosen below (kept frozen, its file untouched)."),
                io.Combo.Input("pattern_shift_lora", options=_lora_options(), default=NONE,
                               tooltip="consistency_only: the stage-1 LoRA to freeze (models/loras/)."),
                io.Int.Input("resolution", default=512, min=64, max=2048, step=16,
                             tooltip="Training image size in pixels (centre-cropped square)."),
                io.Int.Input("rank", default=16, min=1, max=256, tooltip="LoRA rank of both adapters."),
                io.Int.Input("steps_stage1", default=1000, min=1, max=1000000, tooltip="Stage-1 steps."),
                io.Int.Input("steps_stage2", default=500, min=1, max=1000000, tooltip="Stage-2 steps."),
                io.Float.Input("lr", default=1e-4, min=1e-7, max=1e-1, step=1e-5, tooltip="AdamW learning rate."),
                io.Float.Input("product_weight", default=5.0, min=1.0, max=100.0, step=0.5,
                               tooltip="Stage 2: how many times more a product cell's error counts than the rest. "
                                       "Ours: stage 2 trains the same LoRA type on the same pairs with this "
                                       "mask-weighted loss; the paper's own stage-2 data construction is not "
                                       "implemented."),
                io.Float.Input("guidance", default=2.5, min=0.0, max=100.0, step=0.1,
                               tooltip="Flux guidance embedded while training (Kontext's template uses 2.5)."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1,
                             tooltip="Seed of the initial weights, noise, sigmas and pair order."),
                io.String.Input("name", default="layered",
                                tooltip="Saved as models/loras/NAME_pattern_shift.safetensors and "
                                        "NAME_consistency.safetensors."),
                io.Boolean.Input("overwrite", default=False, optional=True,
                                 tooltip="Replace existing files of these names (off: an error)."),
                io.Boolean.Input("gradient_checkpointing", default=True, optional=True,
                                 tooltip="Recompute each transformer block in backward instead of keeping its "
                                         "activations (much less memory on Flux-size models, a second forward "
                                         "per step). Off: faster, every block's activations kept."),
            ],
            outputs=[io.String.Output(display_name="pattern_shift_lora"),
                     io.String.Output(display_name="consistency_lora"), io.String.Output(display_name="stats")],
        )

    @classmethod
    def execute(cls, model, clip, vae, folder, stages, pattern_shift_lora, resolution, rank, steps_stage1,
                steps_stage2, lr, product_weight, guidance, seed, name, overwrite=False,
                gradient_checkpointing=True) -> io.NodeOutput:
        from comfy_api.latest import ui

        from ..models.layered.data import read_pairs

        both = stages == "both"
        if not isinstance(name, str) or not name.strip() or len(name) > 80:
            raise EditLabInputError("name", "a file name of at most 80 characters", name)
        path2 = output_file(LORA_FOLDER, f"{name}_consistency", "name", overwrite)
        path1 = output_file(LORA_FOLDER, f"{name}_pattern_shift", "name", overwrite) if both else None
        frozen = None
        if not both:
            frozen = _read_lora(pattern_shift_lora, "pattern_shift_lora")
            if frozen is None:
                raise EditLabInputError("pattern_shift_lora", "the stage-1 LoRA to freeze (consistency_only)", NONE)
            if not host.lora_patches(model, frozen):
                raise EditLabInputError("pattern_shift_lora", "a LoRA for this model", pattern_shift_lora)
        if host.model_family(model) != "flux":
            raise EditLabInputError("model", "a Flux-family edit model with reference latents (Flux Kontext)",
                                    host.model_family(model))
        try:
            pairs, skipped = read_pairs(input_folder(folder, "folder"), "folder", inside=inside_input_folder)
        except LayeredInputError as exc:
            raise _input_error(exc) from None
        if not any(p.mask for p in pairs):
            raise EditLabInputError("folder", "product masks (NAME_mask.png) for stage 2's weighting", folder)
        device = host.compute_device()
        bar = host.progress((steps_stage1 if both else 0) + steps_stage2)
        done = [0]

        def tick(i, n, loss):
            bar.update_absolute(done[0] + i)

        args = {"resolution": resolution, "rank": rank, "lr": lr, "seed": seed, "guidance": guidance}
        stats = {"pairs": [p.name for p in pairs], "skipped": skipped}
        data = encode_pairs(model, clip, vae, pairs, resolution, device, host.check_interrupted)
        if both:
            frozen, stats["stage1"] = train_lora_stage(model, weighted(data, 1.0), rank, steps_stage1, lr, seed,
                                                       guidance, on_step=tick, should_stop=host.check_interrupted,
                                                       gradient_checkpointing=gradient_checkpointing)
            # saved now: a stage 2 cancelled later can be run again with stages = consistency_only
            saved(lambda p, o: atomic_save_safetensors(frozen, p, _metadata("pattern_shift", stats["stage1"], args),
                                                       overwrite=o), path1, "name", overwrite)
            done[0] = steps_stage1
        lora2, stats["stage2"] = train_lora_stage(model, weighted(data, product_weight), rank, steps_stage2, lr,
                                                  seed + 1, guidance, frozen_lora=frozen, on_step=tick,
                                                  should_stop=host.check_interrupted,
                                                  gradient_checkpointing=gradient_checkpointing)
        stats["stage2"]["product_weight"] = product_weight
        saved(lambda p, o: atomic_save_safetensors(lora2, p, _metadata("consistency", stats["stage2"], args),
                                                   overwrite=o), path2, "name", overwrite)
        name1 = os.path.basename(path1) if both else pattern_shift_lora
        text = json.dumps(stats)
        return io.NodeOutput(name1, os.path.basename(path2), text, ui=ui.PreviewText(text))


# -- product lock and consistency report -------------------------------------------------------------------------------

def _images(original, edited):
    original = rgb_images(original, "original")
    edited = rgb_images(edited, "edited")
    if tuple(original.shape[1:3]) != tuple(edited.shape[1:3]):
        raise EditLabInputError("edited", f"an image of the original's size ({original.shape[2]}x"
                                          f"{original.shape[1]} px)", f"{edited.shape[2]}x{edited.shape[1]} px")
    if original.shape[0] not in (1, edited.shape[0]):
        raise EditLabInputError("original", f"one original or one per edited image ({edited.shape[0]})",
                                f"{original.shape[0]} images")
    return original, edited


def _mask(mask):
    shape = tuple(getattr(mask, "shape", ()))
    if len(shape) not in (2, 3):
        raise EditLabInputError("mask", "a MASK (B, H, W)", shape or type(mask).__name__)
    return mask


class EditLabProductLock(EditLabNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EditLabProductLock", display_name="Product Lock", category=CAT,
            description="Keeps the product exactly as photographed: pixels where the mask is >= 0.5 are the "
                        "original's, bit for bit; outside, the edited image's, bit for bit, except a seam band of "
                        "`feather` px around the product where the two are blended (the original's weight falls "
                        "from ~1 to 0 across the band). Optional colour match moves the edit's colours outside the "
                        "product towards the original's around the seam.",
            inputs=[io.Image.Input("original", tooltip="The product photo before the edit."),
                    io.Image.Input("edited", tooltip="The edited image (same size; a batch of edits is fine)."),
                    io.Mask.Input("mask", tooltip="The product's mask (white = product), the images' size."),
                    io.Int.Input("feather", default=8, min=0, max=256,
                                 tooltip="Width of the seam band in px outside the product (0: a hard edge)."),
                    io.Float.Input("colour_match", default=0.0, min=0.0, max=1.0, step=0.05,
                                   tooltip="0: off (outside the band the edit is returned exactly). Up to 1: move "
                                           "the edit's colours outside the product (per-channel mean and spread) "
                                           "towards the original's in a ring around the product.")],
            outputs=[io.Image.Output()],
        )

    @classmethod
    def execute(cls, original, edited, mask, feather, colour_match=0.0) -> io.NodeOutput:
        from ..models.layered.lock import product_lock

        original, edited = _images(original, edited)
        try:
            out = product_lock(original, edited, _mask(mask), feather, colour_match)
        except LayeredInputError as exc:
            raise _input_error(exc) from None
        return io.NodeOutput(out)


class EditLabEditConsistency(EditLabNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EditLabEditConsistency", display_name="Edit Consistency Report", category=CAT,
            is_output_node=True,
            description="What an edit touched: L1, PSNR and SSIM (kornia) between the original and the edited "
                        "image, inside and outside the product mask, as JSON (optionally saved in ComfyUI's output "
                        "folder), and a heat-map of the per-pixel change with the mask's outline in cyan.",
            inputs=[io.Image.Input("original", tooltip="The photo before the edit."),
                    io.Image.Input("edited", tooltip="The edited image (same size)."),
                    io.Mask.Input("mask", optional=True,
                                  tooltip="The product's mask (white = product); without it everything is "
                                          "'outside'."),
                    io.String.Input("filename_prefix", default="", optional=True,
                                    tooltip="When set, the report is also saved as output/PREFIX_NNNNN.json.")],
            outputs=[io.String.Output(display_name="report"), io.Image.Output(display_name="heatmap")],
        )

    @classmethod
    def execute(cls, original, edited, mask=None, filename_prefix="") -> io.NodeOutput:
        from comfy_api.latest import ui

        from ..models.layered.consistency import consistency_report

        original, edited = _images(original, edited)
        try:
            report, heat = consistency_report(original, edited, None if mask is None else _mask(mask))
        except LayeredInputError as exc:
            raise _input_error(exc) from None
        text = json.dumps(report, indent=1)
        if filename_prefix:  # the file's numbered name is logged, not put in the report (same inputs, same report)
            log.info("EditLab: consistency report saved as output/%s",
                     host.save_output_text(filename_prefix, text, "json", "filename_prefix"))
        return io.NodeOutput(text, heat, ui=ui.PreviewText(text))


NODES = [EditLabLayeredAdapters, EditLabLayeredTrain, EditLabProductLock, EditLabEditConsistency]
