"""ConceptSplit nodes: token-wise value adapters (ToVA) trained, loaded and applied to a MODEL bound to their words'
tokens; per-word attention maps; the LODA sampler (latent optimisation + attention fixing guidance).

The method lives in ``models/conceptsplit/``; these nodes check inputs, call it, clone, patch, return.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
import os

import numpy as np
import torch
from comfy_api.latest import io

from ..models import panels
from ..models.conceptsplit.flux import FluxToVAPatch, double_block_layers, value_width, with_text_length
from ..models.conceptsplit.loda import HARD, MAP_LAYERS

AFG_MODES = ("soft", "hard (authors)")
CAPTION_MODES = ("templates (authors)", "prompt for every image")
from ..models.conceptsplit.patch import ToVAPatch, named_cross_attention_layers
from ..models.conceptsplit.train import DEFAULT_TEMPLATES
from ..models.conceptsplit.tova import Binding, ToVAFileError, ValueLoRA, load_tova, save_tova
from ..models.saedit.tokens import prompt_tokens, word_positions
from . import host
from .common import CATEGORY, EditLabInputError, EditLabNode, checked_image_size, save_as_inputs
from .files import input_folder, inside_input_folder, output_file, saved

CAT = f"{CATEGORY}/ConceptSplit"
TOVA_FOLDER = host.model_folder("tova", {".safetensors"})
ToVAType = io.Custom("EDITLAB_TOVA")  # LoadedToVA


@dataclass
class LoadedToVA:
    """What travels on an EDITLAB_TOVA link: one concept's value adapter and the file it came from."""
    adapter: ValueLoRA
    name: str
MAX_ADAPTERS = 4  # adapter_1 .. adapter_4 on the apply node
MAX_PROMPT_CHARS = 4000
MAX_TRAIN_IMAGES = 1000
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
UNET_FAMILIES = ("sd15", "sd2", "sdxl")
MAX_WORDS = 16  # Attention Maps' words, LODA's concepts
LATENT_SCALE = 8  # pixels per latent cell of the SD1.5 / SD2.1 / SDXL / Flux VAEs: the heat-maps' size


def _checked_prompt(prompt: str, input_name: str) -> str:
    if not prompt.strip():
        raise EditLabInputError(input_name, "a prompt holding the concepts' words")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise EditLabInputError(input_name, f"a prompt of at most {MAX_PROMPT_CHARS} characters", prompt)
    return prompt


def _unet_layers(model) -> dict:
    """The cross-attention layers of an SD1.5 / SD2.1 / SDXL MODEL by name; an error naming ``model`` otherwise."""
    family = host.model_family(model)
    layers = named_cross_attention_layers(model.get_model_object("diffusion_model")) \
        if family in UNET_FAMILIES else {}
    if not layers:
        raise EditLabInputError("model", "an SD1.5, SD2.1, SDXL or Flux model (ToVA patches a UNet's cross-attention "
                                         "or Flux's text values)", family)
    return layers


def _tova_layers(model) -> tuple[str, dict, dict]:
    """(family, layers by name, {name: (width the adapter reads, value width)}) of a UNet or Flux MODEL."""
    family = host.model_family(model)
    if family == "flux":
        blocks = double_block_layers(model.get_model_object("diffusion_model"))
        if blocks:
            return family, blocks, {n: (value_width(b), value_width(b)) for n, b in blocks.items()}
    layers = _unet_layers(model)
    return family, layers, {n: tuple(a.to_v.weight.shape[::-1]) for n, a in layers.items()}


def _check_adapter(adapter: ValueLoRA, input_name: str, family: str, dims: dict) -> None:
    """The adapter was trained for this model: same family, same input width, its layers there and as wide."""
    if adapter.family != family:
        raise EditLabInputError(input_name, f"an adapter trained for this model's family ({family})",
                                f"one for {adapter.family}")
    width = next(iter(dims.values()))[0]
    if adapter.context_dim != width:
        raise EditLabInputError(input_name, f"an adapter for this model's {width}-wide text context",
                                f"one for a {adapter.context_dim}-wide context")
    for name, inner in adapter.inner_dims().items():
        if name not in dims or dims[name][1] != inner:
            raise EditLabInputError(input_name, "an adapter whose layers are this model's attention layers",
                                    f"layer {name} ({inner} wide)")


def _positions(clip, prompt: str, word: str, input_name: str) -> list[int]:
    """Conditioning positions of ``word`` in ``prompt`` (the SAE slider's text-to-positions code); an error naming
    ``input_name`` when the word is not there."""
    try:
        return word_positions(clip, prompt_tokens(clip, prompt), word)
    except ValueError as exc:
        raise EditLabInputError(input_name, f"a prompt holding the word '{word.strip()}' ({exc})", prompt) from None


def _folder_images(folder: str, resolution: int) -> tuple[torch.Tensor, list[str]]:
    """The images of a folder inside ComfyUI's input folder, centre-cropped square and resized, as (N, H, W, 3) in
    [0, 1]; unreadable, oversized or linked-out ones are skipped and listed."""
    from PIL import Image

    path = input_folder(folder, "folder")
    images, skipped = [], []
    for name in sorted(os.listdir(path)):
        if not name.lower().endswith(IMAGE_EXTS):
            continue
        host.check_interrupted()
        file = os.path.join(path, name)
        if not inside_input_folder(file):
            skipped.append(f"{name}: links outside the input folder")
            continue
        try:
            with Image.open(file) as im:
                checked_image_size(im.height, im.width, "folder")  # before decoding
                rgb = im.convert("RGB")
        except EditLabInputError:
            skipped.append(f"{name}: too small or too large")
            continue
        except Exception as exc:  # noqa: BLE001 - corrupt, truncated, not an image, a decompression bomb
            skipped.append(f"{name}: not a readable image ({type(exc).__name__})")
            continue
        side = min(rgb.size)
        left, top = (rgb.width - side) // 2, (rgb.height - side) // 2
        square = rgb.crop((left, top, left + side, top + side)).resize((resolution, resolution), Image.LANCZOS)
        images.append(torch.from_numpy(np.asarray(square).copy()).float() / 255.0)
        if len(images) > MAX_TRAIN_IMAGES:
            raise EditLabInputError("folder", f"a folder of at most {MAX_TRAIN_IMAGES} images", folder)
    if not images:
        raise EditLabInputError("folder", "a folder holding images of the concept",
                                f"{folder}: none found" + (f"; skipped: {'; '.join(skipped)}" if skipped else ""))
    return torch.stack(images), skipped


class EditLabToVALoader(EditLabNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EditLabToVALoader", display_name="ToVA Loader", category=CAT,
            description="Loads one concept's token-wise value adapter (ToVA) from models/tova/: a value-only LoRA "
                        "for the cross-attention layers, with the concept's word and the model family it was "
                        "trained for.",
            inputs=[io.Combo.Input("adapter_name", options=host.model_files(TOVA_FOLDER),
                                   tooltip="A ToVA file in models/tova/ (.safetensors).")],
            outputs=[ToVAType.Output(display_name="adapter")],
        )

    @classmethod
    def execute(cls, adapter_name) -> io.NodeOutput:
        path = host.model_file_path(TOVA_FOLDER, adapter_name)
        if path is None:
            raise EditLabInputError("adapter_name", f"a file in models/{TOVA_FOLDER}/", adapter_name)
        try:
            adapter = load_tova(path)
        except ToVAFileError as exc:
            raise EditLabInputError("adapter_name", f"a ToVA file: {exc}", adapter_name) from None
        return io.NodeOutput(LoadedToVA(adapter, adapter_name))


class EditLabToVAApply(EditLabNode):
    @classmethod
    def define_schema(cls):
        adapters = [ToVAType.Input(f"adapter_{i}", optional=i > 1,
                                   tooltip="A concept's adapter (ToVA Loader or ToVA Train); it acts at its word's "
                                           "positions in the prompt." + (" Optional." if i > 1 else ""))
                    for i in range(1, MAX_ADAPTERS + 1)]
        return io.Schema(
            node_id="EditLabToVAApply", display_name="ToVA Apply", category=CAT,
            description="Attaches up to four concepts' value adapters to an SD1.5/SD2.1/SDXL or Flux MODEL, each "
                        "acting only on the value vectors of its own word's tokens in the prompt (never merged), on "
                        "the conditional branch. UNets: list-style attention patches (other packs' still run). Flux: "
                        "the text stream's values in the double blocks, through the attention override (it calls "
                        "the override that was set before it).",
            inputs=[io.Model.Input("model", tooltip="An SD1.5, SD2.1, SDXL or Flux model."),
                    io.Clip.Input("clip", tooltip="Its text encoder, to find the words' token positions."),
                    io.String.Input("prompt", multiline=True, default="a photo of a dog and a cat",
                                    tooltip="The positive prompt, exactly as encoded for sampling; it must hold each "
                                            "adapter's word."),
                    io.Float.Input("strength", default=1.0, min=-2.0, max=3.0, step=0.05,
                                   tooltip="Scale of every adapter's value change; 0 gives the base model's output."),
                    *adapters],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, clip, prompt, strength, adapter_1, adapter_2=None, adapter_3=None,
                adapter_4=None) -> io.NodeOutput:
        _checked_prompt(prompt, "prompt")
        family, layers, dims = _tova_layers(model)
        bindings, taken = [], {}
        given = [(f"adapter_{i}", a) for i, a in enumerate((adapter_1, adapter_2, adapter_3, adapter_4), 1)]
        for input_name, a in given:
            if a is None:
                continue
            adapter = a.adapter
            _check_adapter(adapter, input_name, family, dims)
            positions = _positions(clip, prompt, adapter.token, "prompt")
            shared = sorted(set(positions) & set(taken))
            if shared:
                raise EditLabInputError(input_name, f"a concept on its own tokens; '{adapter.token}' sits on the "
                                                    f"tokens of {taken[shared[0]]}", a.name)
            taken.update({p: input_name for p in positions})
            bindings.append(Binding(adapter, positions, strength))
        m = model.clone()
        if family == "flux":
            patch = FluxToVAPatch(bindings, layers, previous=host.attention_override(m))
            host.set_attention_override(m, patch)
            m.set_model_post_input_patch(patch.input_hook)
            m.model_options["transformer_options"] = with_text_length(m.model_options["transformer_options"])
        else:
            patch = ToVAPatch(bindings, layers)
            m.set_model_attn2_patch(patch.input_hook)
            m.set_model_attn2_output_patch(patch.output_hook)
        return io.NodeOutput(m)


class EditLabToVATrain(EditLabNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EditLabToVATrain", display_name="ToVA Train", category=CAT, is_output_node=True,
            description="Trains one concept's token-wise value adapter: a LoRA on the cross-attention value "
                        "projections only (on Flux: the text stream's values in the double blocks), acting only at "
                        "the concept word's positions, from a folder of images of "
                        "the concept (in ComfyUI's input folder) captioned with a prompt holding the word; diffusion "
                        "loss, the model frozen and left unchanged. Saves models/tova/NAME.safetensors with the word "
                        "and the model family. Authors' defaults: SD rank 32 lr 5e-4; SDXL rank 16 lr 1e-4.",
            inputs=[
                io.Model.Input("model", tooltip="The SD1.5 / SD2.1 / SDXL or Flux model the adapter is for (kept "
                                                "frozen)."),
                io.Clip.Input("clip", tooltip="Its text encoder."),
                io.Vae.Input("vae", tooltip="Its VAE, to encode the images."),
                io.String.Input("folder", default="concept",
                                tooltip="Folder of images of the concept inside ComfyUI's input folder ('.' = the "
                                        "input folder itself)."),
                io.String.Input("prompt", default="a photo of a dog",
                                tooltip="The caption of every image when captions is 'prompt for every image' "
                                        "(it must hold the word); unused with templates."),
                io.String.Input("word", default="dog",
                                tooltip="The concept's word in the prompt: the adapter acts at its tokens only (all of "
                                        "them; the authors' script at the word's first token, the same for a "
                                        "one-token word). The authors bind ToVA to the class noun (dog, cat), no "
                                        "rare token."),
                io.Int.Input("resolution", default=512, min=64, max=1024, step=64,
                             tooltip="Training image size in pixels (images are centre-cropped square)."),
                io.Int.Input("rank", default=32, min=1, max=256, tooltip="LoRA rank (authors: SD 32, SDXL 16)."),
                io.Int.Input("steps", default=500, min=1, max=100000, tooltip="Training steps."),
                io.Float.Input("lr", default=5e-4, min=1e-6, max=1e-1, step=1e-5,
                               tooltip="AdamW learning rate (authors: SD 5e-4, SDXL 1e-4)."),
                io.Int.Input("batch_size", default=1, min=1, max=64, tooltip="Images per step."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1,
                             tooltip="Seed for the initial weights, noise and batch order."),
                *save_as_inputs("tova", "my_concept"),
                io.Combo.Input("captions", options=list(CAPTION_MODES), default=CAPTION_MODES[0], optional=True,
                               tooltip="templates (authors): each training example is captioned with one of the "
                                       "templates below filled with the word (example e: image e mod N, template "
                                       "e mod P, as the authors' training script pairs them; drawn at random from "
                                       "max(N, P) examples, where their dataset has P and never shows images past "
                                       "the P-th). prompt for every image: the prompt input captions all images "
                                       "(the node's old behaviour)."),
                io.String.Input("templates", multiline=True, default="\n".join(DEFAULT_TEMPLATES), optional=True,
                                tooltip="Caption templates, one per line, {} where the word goes (ours, in the "
                                        "authors' style: their own list is not published)."),
                io.Boolean.Input("gradient_checkpointing", default=True, optional=True,
                                 tooltip="Recompute each UNet block's activations in backward instead of keeping "
                                         "them: much less memory while training, about one more forward pass of "
                                         "compute per step. The same gradients either way. (Flux models: not yet "
                                         "checkpointed.)"),
            ],
            outputs=[ToVAType.Output(display_name="adapter"), io.String.Output(display_name="stats")],
        )

    @classmethod
    def execute(cls, model, clip, vae, folder, prompt, word, resolution, rank, steps, lr, batch_size, seed, name,
                overwrite=False, captions=None, templates=None, gradient_checkpointing=True) -> io.NodeOutput:
        from comfy_api.latest import ui

        from ..models.conceptsplit.train import fill_templates, parse_templates, template_examples, train_tova

        path = output_file(TOVA_FOLDER, name, "name", overwrite)
        captions = CAPTION_MODES[0] if captions is None else captions
        if captions not in CAPTION_MODES:
            raise EditLabInputError("captions", f"one of {list(CAPTION_MODES)}", captions)
        if not word.strip() or len(word) > 200:
            raise EditLabInputError("word", "a word of the prompt (at most 200 characters)", word)
        if captions == CAPTION_MODES[0]:
            try:
                texts = fill_templates(parse_templates("\n".join(DEFAULT_TEMPLATES) if templates is None
                                                       else templates), word)
            except ValueError as exc:
                raise EditLabInputError("templates", str(exc), templates) from None
            for text in texts:
                _checked_prompt(text, "templates")
            positions = [_positions(clip, text, word, "templates") for text in texts]
        else:
            _checked_prompt(prompt, "prompt")
            texts = [prompt]
            positions = _positions(clip, prompt, word, "word")
        model = host.training_clone(model)
        family, layers, dims = _tova_layers(model)
        images, skipped = _folder_images(folder, resolution)
        base = model.model
        conds = [host.encoded(clip.encode_from_tokens_scheduled, clip.tokenize(text)) for text in texts]
        latents = host.encoded(lambda: base.process_latent_in(vae.encode(images)))  # data: no graph through the VAE
        host.load_models([model])
        device = host.compute_device()
        width = next(iter(dims.values()))[0]
        with torch.inference_mode(False), torch.no_grad():
            latents = latents.to(device)
            lengths = {tuple(c[0][0].shape[1:]) for c in conds}
            if len(lengths) > 1:
                raise EditLabInputError("templates", "templates whose encodings have one token length (a longer "
                                                     "one spills into another chunk)", sorted(lengths))
            context = torch.cat([c[0][0] for c in conds]).to(device)
            pooled = [c[0][1].get("pooled_output") for c in conds]
            pooled = None if pooled[0] is None else torch.cat(pooled).to(device)
            adapter = ValueLoRA(word.strip(), family, rank, width, {n: d[1] for n, d in dims.items()},
                                seed).to(device).train()
        examples = {}
        if captions == CAPTION_MODES[0]:
            example_images, example_captions = template_examples(latents.shape[0], len(texts))
            examples = dict(example_images=example_images, example_captions=example_captions)
        bar = host.progress(steps)
        stats = train_tova(base, adapter, layers, context, pooled, positions, latents, resolution, steps, lr,
                           batch_size, seed, device, on_step=lambda i, n, loss: bar.update_absolute(i, n),
                           should_stop=host.check_interrupted, gradient_checkpointing=gradient_checkpointing,
                           **examples)
        stats["caption_mode"] = captions
        adapter = adapter.cpu().eval().requires_grad_(False)
        stats.update(skipped=skipped, positions=positions, file=os.path.basename(path))
        saved(lambda p, o: save_tova(adapter, p, stats, overwrite=o), path, "name", overwrite)
        text = json.dumps(stats)
        return io.NodeOutput(LoadedToVA(adapter, os.path.basename(path)), text, ui=ui.PreviewText(text))


class EditLabAttentionMaps(EditLabNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EditLabAttentionMaps", display_name="Attention Maps (per word)", category=CAT,
            description="Samples like KSampler (same result) while recording, at every cross-attention layer of an "
                        "SD1.5/SD2.1/SDXL UNet (or double block of a Flux model), how much attention each image "
                        "position pays to each chosen word's tokens (softmax over the text keys; on Flux over all "
                        "keys of the joint attention; averaged over heads, layers and the chosen steps, "
                        "conditional branch only). Returns the latent, one heat-map IMAGE per word (each scaled to "
                        "its own maximum) and the same maps as MASKs, at the decoded image's size.",
            inputs=[
                io.Model.Input("model", tooltip="An SD1.5, SD2.1, SDXL or Flux model (ToVA-patched or not)."),
                io.Clip.Input("clip", tooltip="Its text encoder, to find the words' token positions."),
                io.Conditioning.Input("positive", tooltip="The positive conditioning, encoded from the prompt."),
                io.Conditioning.Input("negative", tooltip="The negative conditioning."),
                io.Latent.Input("latent_image", tooltip="The latent to sample from (e.g. Empty Latent Image)."),
                io.String.Input("prompt", multiline=True, default="a photo of a dog and a cat",
                                tooltip="The text the positive conditioning was encoded from."),
                io.String.Input("words", default="dog, cat",
                                tooltip="Comma-separated words of the prompt whose maps to record (at most 16)."),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, tooltip="Noise seed, as KSampler."),
                io.Int.Input("steps", default=20, min=1, max=10000, tooltip="Sampling steps."),
                io.Float.Input("cfg", default=7.0, min=0.0, max=100.0, step=0.1, tooltip="Classifier-free guidance."),
                io.Combo.Input("sampler_name", options=list(host.SAMPLER_NAMES), tooltip="The sampler."),
                io.Combo.Input("scheduler", options=list(host.SCHEDULER_NAMES), tooltip="The scheduler."),
                io.Int.Input("start_step", default=0, min=0, max=10000,
                             tooltip="First step whose attention is averaged (0 = the first)."),
                io.Int.Input("end_step", default=10000, min=1, max=10000,
                             tooltip="Step after the last one averaged (clamped to steps)."),
            ],
            outputs=[io.Latent.Output(display_name="latent"), io.Image.Output(display_name="heatmaps"),
                     io.Mask.Output(display_name="masks")],
        )

    @classmethod
    def execute(cls, model, clip, positive, negative, latent_image, prompt, words, seed, steps, cfg, sampler_name,
                scheduler, start_step, end_step) -> io.NodeOutput:
        from ..models.conceptsplit.attention_maps import AttentionMapRecorder
        from ..models.heatmap import heatmap, normalised

        _checked_prompt(prompt, "prompt")
        chosen = [w.strip() for w in words.split(",") if w.strip()]
        if not chosen or len(chosen) > MAX_WORDS or len(words) > MAX_PROMPT_CHARS:
            raise EditLabInputError("words", f"1 to {MAX_WORDS} comma-separated words of the prompt", words)
        end_step = min(end_step, steps)
        if start_step >= end_step:
            raise EditLabInputError("start_step", f"a step before end_step and steps ({end_step})", start_step)
        family, layers, _ = _tova_layers(model)
        positions = {w: _positions(clip, prompt, w, "words") for w in chosen}
        samples = latent_image["samples"]
        if samples.ndim != 4:
            raise EditLabInputError("latent_image", "an image latent (B, C, H, W)", tuple(samples.shape))
        sigmas = host.sampling_sigmas(model, steps, sampler_name, scheduler)
        lo, hi = float(sigmas[end_step - 1]), float(sigmas[start_step])
        latent_size = tuple(samples.shape[-2:])
        m = model.clone()
        if family == "flux":
            from ..models.conceptsplit.flux import FluxMapTap, image_grid

            def in_window(options):
                sig = options.get("sigmas")
                return sig is None or lo - 1e-6 <= float(sig.reshape(-1)[0]) <= hi + 1e-6

            tap = FluxMapTap(list(positions.values()), layers, latent_size,
                             image_grid(m.get_model_object("diffusion_model"), latent_size),
                             previous=host.attention_override(m), when=in_window)
            host.set_attention_override(m, tap)
            m.set_model_post_input_patch(tap.input_hook)
            m.model_options["transformer_options"] = with_text_length(m.model_options["transformer_options"])
        else:
            recorder = AttentionMapRecorder(positions, layers, latent_size, (lo, hi))
            m.set_model_attn2_patch(recorder.input_hook)
            m.set_model_attn2_output_patch(recorder.output_hook)
        latent = host.ksample(m, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image)
        if family == "flux":
            maps = list(tap.maps()) if tap.collected else [torch.zeros(latent_size) for _ in positions]
        else:
            maps = list(recorder.maps().values())
        size = (samples.shape[-2] * LATENT_SCALE, samples.shape[-1] * LATENT_SCALE)
        masks = torch.stack([normalised(torch.nn.functional.interpolate(v[None, None].float().cpu(), size=size,
                                                                        mode="bilinear", align_corners=False)[0, 0]
                                        .clamp(min=0)) for v in maps])
        images = torch.stack([heatmap(v) for v in masks])
        return io.NodeOutput(latent, images, masks,
                             ui=panels.ui_for("attention_maps", panels.attention_maps(list(positions), images)))


class _LODASampler(host.Sampler):
    """A host sampler running LODA's first steps around the wrapped one (``models/conceptsplit/loda.py``)."""

    def __init__(self, wrapped, concepts: list, n_steps: int, threshold: float, step_size: float,
                 afg_strength: float, map_layers: str = "authors"):
        self.wrapped, self.concepts, self.n_steps, self.map_layers = wrapped, concepts, n_steps, map_layers
        self.threshold, self.step_size, self.afg_strength = threshold, step_size, afg_strength
        self.afg_patches = []  # the AFG patch of each run (its per-call attention mass outside the masks)
        self.inspect_afg = 0  # Flux: how many calls' outside mass AFG measures (dense products; tests set it)

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        from ..models.conceptsplit.loda import loda_sample
        from ..models.frozen import frozen_for_autograd

        if self.n_steps > len(sigmas) - 1:
            raise EditLabInputError("loda_steps", f"at most the {len(sigmas) - 1} sampling steps", self.n_steps)
        net = model_wrap.inner_model.diffusion_model
        layers = {}
        if self.n_steps:
            layers = named_cross_attention_layers(net) if hasattr(net, "input_blocks") else double_block_layers(net)
        if self.n_steps and not layers:
            raise EditLabInputError("sampler", "sampling an SD1.5, SD2.1, SDXL or Flux model (LODA reads its "
                                               "cross-attention maps)")
        bar = host.progress(max(self.n_steps, 1))
        try:
            return loda_sample(self.wrapped, model_wrap, sigmas, extra_args, callback, noise, latent_image,
                               denoise_mask, disable_pbar, self.concepts, layers, self.n_steps, self.threshold,
                               self.step_size, self.afg_strength, frozen=frozen_for_autograd,
                               should_stop=host.check_interrupted, on_step=lambda i, n: bar.update_absolute(i, n),
                               afg_out=self.afg_patches, map_layers=self.map_layers,
                               down_only=self.map_layers == "authors" and host.is_sdxl(model_wrap.inner_model),
                               inspect_afg=self.inspect_afg)
        except ValueError as exc:
            if isinstance(exc, EditLabInputError):
                raise
            raise EditLabInputError("sampler", str(exc)) from None


class EditLabLODA(EditLabNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EditLabLODA", display_name="LODA Sampler (ConceptSplit)", category=CAT,
            description="Wraps a SAMPLER (for SamplerCustom / SamplerCustomAdvanced): before each of the first "
                        "loda_steps steps the latent moves down the gradient of relu(threshold - harmonic mean of "
                        "the pairwise KL between the concepts' smoothed cross-attention maps), so the concepts "
                        "separate; then the wrapped sampler takes the step. For the remaining steps, attention "
                        "fixing guidance lowers each concept's attention logits outside its mask (its smoothed map "
                        "at or above the 90th percentile at the last LODA step). 0 steps: the wrapped sampler as it "
                        "is. SD1.5/SD2.1/SDXL UNets and Flux (maps from the double blocks' joint attention).",
            inputs=[io.Sampler.Input("sampler", tooltip="The sampler to wrap (KSamplerSelect or any other)."),
                    io.Clip.Input("clip", tooltip="The text encoder, to find the concepts' token positions."),
                    io.String.Input("prompt", multiline=True, default="a photo of a dog and a cat",
                                    tooltip="The positive prompt, exactly as encoded for sampling."),
                    io.String.Input("concepts", default="dog, cat",
                                    tooltip="At least two comma-separated words of the prompt to keep apart."),
                    io.Int.Input("loda_steps", default=10, min=0, max=1000,
                                 tooltip="Steps with latent optimisation (authors: the first 10 of 50)."),
                    io.Float.Input("step_size", default=20.0, min=0.0, max=1e6, step=0.5,
                                   tooltip="Latent step at the first step, decaying as sqrt(linspace(1, 0.5))."),
                    io.Float.Input("threshold", default=3.0, min=0.0, max=100.0, step=0.1,
                                   tooltip="The loss stops pushing once the harmonic-mean KL reaches it (authors "
                                           "3; their command line uses 1)."),
                    io.Float.Input("afg_strength", default=2.0, min=0.0, max=100.0, step=0.1,
                                   tooltip="How far attention fixing guidance lowers a concept's attention logits "
                                           "outside its mask after the LODA steps (0: no AFG). Ours: a soft "
                                           "bias; the authors' hard mask is afg_mode 'hard (authors)'."),
                    io.Combo.Input("map_layers", options=list(MAP_LAYERS), default="authors", optional=True,
                                   tooltip="UNets: which cross-attention layers' maps LODA separates. 'authors': "
                                           "those nearest a quarter of the latent's side (24x24 on SD2.1 at 768 "
                                           "px, 32x32 on SDXL at 1024 px, where the authors read the down blocks "
                                           "only), blurred and compared at that size; 'all': every layer. Flux: "
                                           "always all double blocks."),
                    io.Combo.Input("afg_mode", options=list(AFG_MODES), default=AFG_MODES[0], optional=True,
                                   tooltip="'soft': logits outside a concept's mask are lowered by afg_strength "
                                           "(our default: the paper gives no formula); 'hard (authors)': they get "
                                           "-1e8, the authors' code, so a concept attends only inside its mask "
                                           "(afg_strength 0 still turns AFG off).")],
            outputs=[io.Sampler.Output()],
        )

    @classmethod
    def execute(cls, sampler, clip, prompt, concepts, loda_steps, step_size, threshold,
                afg_strength=2.0, map_layers="authors", afg_mode=None) -> io.NodeOutput:
        _checked_prompt(prompt, "prompt")
        words = [w.strip() for w in concepts.split(",") if w.strip()]
        if len(words) < 2 or len(words) > MAX_WORDS or len(concepts) > MAX_PROMPT_CHARS:
            raise EditLabInputError("concepts", f"2 to {MAX_WORDS} comma-separated words of the prompt", concepts)
        positions = [_positions(clip, prompt, w, "concepts") for w in words]
        if afg_mode not in (None, *AFG_MODES):
            raise EditLabInputError("afg_mode", f"one of {list(AFG_MODES)}", afg_mode)
        if afg_mode == AFG_MODES[1] and afg_strength > 0:
            afg_strength = HARD
        return io.NodeOutput(_LODASampler(sampler, positions, loda_steps, threshold, step_size, afg_strength,
                                          map_layers))


NODES = [EditLabToVALoader, EditLabToVAApply, EditLabToVATrain, EditLabAttentionMaps, EditLabLODA]
