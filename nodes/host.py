"""Every host (ComfyUI) API the pack's nodes use, other than the node schema itself, in one module: when upstream
changes one of these, this file changes and nothing else in nodes/. The node schema (``comfy_api.latest``: ``io``,
``ui``, ``ComfyExtension``) is imported where the nodes are defined; ``models/tiny`` builds the host's model classes
directly; ``models/`` otherwise never imports the host.

The APIs, grouped as the README's "host APIs" line lists them:
- ``folder_paths``: model folders (register, list, resolve), the input folder;
- ``comfy.supported_models``: which model family a MODEL is;
- ``comfy.model_management``: compute device, ``load_models_gpu``, interruption;
- ``comfy.utils.ProgressBar``;
- ``comfy.model_patcher.ModelPatcher`` (wrapping an adapter so memory management counts and moves it);
- ``comfy.hooks`` + ``comfy.patcher_extension.WrappersMP``: an apply-model wrapper carried by one conditioning;
- ``comfy.samplers.Sampler`` / ``comfy.sample.sample_custom``: a custom sampler run inside the host's guider;
  ``comfy.sample.sample``: a KSampler run (``ksample``), its sampler and scheduler names and sigmas;
- ``node_helpers.conditioning_set_values``;
- ChronoEdit: ``comfy.model_base.WAN21`` (is a MODEL Wan image-to-video), the model's RoPE options
  (``rope_options``, as ScaleROPE sets them), its latent space (``process_latent_in/out``), the sampler objects
  (``comfy.samplers.sampler_object``) run by ``comfy.sample.sample_custom`` with a noise mask and seed, KSampler's
  noise (``comfy.sample.prepare_noise``), ``latent_preview`` (the host's step previews), ``comfy.utils.common_upscale``.
"""
from __future__ import annotations

import inspect
import os

import torch

import comfy.hooks
import comfy.ldm.flux.model
import comfy.model_base
import comfy.model_management
import comfy.patcher_extension
import comfy.sample
import comfy.samplers
import comfy.supported_models
import comfy.utils
import folder_paths
import latent_preview
import node_helpers
from comfy.model_patcher import ModelPatcher

MEDIAPIPE_FOLDER = "mediapipe"

# -- files ---------------------------------------------------------------------------------------------------------


def model_folder(name: str, extensions: set[str]) -> str:
    """Register ``models/<name>/`` with the host unless the user's config already names it; return the name."""
    if name not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[name] = ([os.path.join(folder_paths.models_dir, name)], set(extensions))
    return name


def model_dirs(name: str) -> list[str]:
    return folder_paths.get_folder_paths(name)


def model_files(name: str) -> list[str]:
    """The files of a model folder, as a loader's combo lists them."""
    return folder_paths.get_filename_list(name)


def model_file_path(name: str, file_name: str) -> str | None:
    return folder_paths.get_full_path(name, file_name)


def input_directory() -> str:
    return folder_paths.get_input_directory()


def mediapipe_dirs() -> list[str]:
    """Where MediaPipe's .task files are looked for first: ComfyUI's models/mediapipe/ (and extra paths)."""
    return model_dirs(model_folder(MEDIAPIPE_FOLDER, {".task"}))


_FAMILIES = ((comfy.supported_models.SDXLRefiner, "sdxl_refiner"), (comfy.supported_models.SDXL, "sdxl"),
             (comfy.supported_models.SD20, "sd2"), (comfy.supported_models.SD15, "sd15"),
             (comfy.supported_models.Flux, "flux"))


def model_family(model) -> str:
    """The family of a MODEL: "sd15", "sd2", "sdxl", "sdxl_refiner", "flux", else its config class in lower case."""
    config = getattr(getattr(model, "model", None), "model_config", None)
    for cls, name in _FAMILIES:
        if isinstance(config, cls):
            return name
    return type(config).__name__.lower()


def is_sdxl(base) -> bool:
    """Whether a host BaseModel (what a sampler's ``model_wrap.inner_model`` is) is an SDXL base model."""
    return isinstance(base, comfy.model_base.SDXL)


def flux_token_layout(base) -> tuple[int, int] | None:
    """(numbers per image token, patch size) of a host BaseModel whose diffusion model is a Flux-style DiT (each
    token one patch of the input latent and any channels concatenated to it), else None."""
    dit = getattr(base, "diffusion_model", None)
    if not isinstance(dit, comfy.ldm.flux.model.Flux):
        return None
    try:
        return int(dit.img_in.weight.shape[1]), int(dit.patch_size)
    except (AttributeError, IndexError, TypeError):  # weights not reachable (as the host allows for TensorRT)
        return None


def attention_override(model):
    """The attention override a MODEL's options carry (``transformer_options["optimized_attention_override"]``,
    one slot), or None."""
    return model.model_options.get("transformer_options", {}).get("optimized_attention_override")


def set_attention_override(model, override) -> None:
    """Set the attention override on ``model`` (a clone: its model_options are its own). ``override`` must call the
    one it replaces (``attention_override`` read before) so that both act."""
    model.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = override


# -- execution -----------------------------------------------------------------------------------------------------


def compute_device():
    return comfy.model_management.get_torch_device()


def load_models(models: list) -> None:
    """Load MODELs (and what their patches name) onto the compute device, as sampling does."""
    comfy.model_management.load_models_gpu(models)


def encoded(fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, a host computation whose result is training data (text or VAE encoding), run as the
    host runs it, in inference mode, with every tensor of the result copied outside inference mode: ordinary
    tensors that autograd may save. On a GPU the host loads weights while in inference mode, and its layers refuse
    to run on them outside it ("Inference tensors do not track version counter")."""
    with torch.inference_mode():
        out = fn(*args, **kwargs)
    with torch.inference_mode(False):
        return _ordinary(out)


def _ordinary(value):
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {k: _ordinary(v) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_ordinary(v) for v in value)
    return value


def check_interrupted() -> None:
    """Raises the host's interruption exception when the user pressed Cancel / POSTed /interrupt."""
    comfy.model_management.throw_exception_if_processing_interrupted()


def progress(total: int):
    """The host's progress bar (the page's per-node bar)."""
    return comfy.utils.ProgressBar(total)


def host_model(module, like, kept: dict | None = None) -> ModelPatcher:
    """``module`` (an adapter) as a host model on the devices of the MODEL ``like``, so memory management counts,
    loads and offloads it with that model. ``kept``: a dict that lives as long as ``module`` (its socket payload),
    where the wrapper is kept and found again. The host keeps only weak references to what it loaded and calls a
    module whose wrapper died while the module lives on a leak: from then on every model load runs a full garbage
    collection (a prompt that loads models per call slowed 10-70x). So a module that outlives one node's output
    (an adapter a loader's cached output holds) must keep one wrapper for its whole life."""
    def wrap():
        return ModelPatcher(module, load_device=like.load_device, offload_device=like.offload_device)

    if kept is None:
        return wrap()
    key = (str(like.load_device), str(like.offload_device))
    if key not in kept:
        kept[key] = wrap()
    return kept[key]


# -- conditioning and sampling ---------------------------------------------------------------------------------------


def with_apply_model_wrapper(conditioning, key: str, wrapper):
    """A copy of ``conditioning`` carrying ``wrapper`` around the model's apply_model, for this conditioning only
    (a hook with HookedOnly scope: other conditionings, the negative included, never see it)."""
    hook = comfy.hooks.TransformerOptionsHook(
        {"wrappers": {comfy.patcher_extension.WrappersMP.APPLY_MODEL: {key: [wrapper]}}},
        hook_scope=comfy.hooks.EnumHookScope.HookedOnly)
    group = comfy.hooks.HookGroup()
    group.add(hook)
    return comfy.hooks.set_hooks_for_conditioning(conditioning, group, append_hooks=True)


def conditioning_set_values(conditioning, values: dict, append: bool = False):
    return node_helpers.conditioning_set_values(conditioning, values, append=append)


Sampler = comfy.samplers.Sampler  # base of a custom sampler that sample_custom runs inside the host's guider


SAMPLER_NAMES = comfy.samplers.KSampler.SAMPLERS
SCHEDULER_NAMES = comfy.samplers.KSampler.SCHEDULERS


def sampling_sigmas(model, steps: int, sampler_name: str, scheduler: str):
    """The sigmas a KSampler run with these settings steps through (steps + 1 values)."""
    return comfy.samplers.KSampler(model, steps=steps, device=model.load_device, sampler=sampler_name,
                                   scheduler=scheduler, model_options=model.model_options).sigmas


LATENT_RATIO_KEYS = ("downscale_ratio_spacial", "downscale_ratio_temporal")


def prepared_latent(model, latent: dict):
    """A LATENT's samples as the host's samplers prepare them (``fix_empty_latent_channels``), passing the downscale
    ratios newer hosts' empty latents carry (0.33+: ``downscale_ratio_spacial``) where the host takes them."""
    params = inspect.signature(comfy.sample.fix_empty_latent_channels).parameters
    extra = {k: latent.get(k) for k in LATENT_RATIO_KEYS if k in params}
    return comfy.sample.fix_empty_latent_channels(model, latent["samples"], **extra)


def sampled_latent(latent: dict, samples) -> dict:
    """The LATENT a sampler returns: ``latent`` with new samples, no longer empty (the ratios go, as the host's)."""
    out = {**latent, "samples": samples}
    for k in LATENT_RATIO_KEYS:
        out.pop(k, None)
    return out


def ksample(model, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str, positive, negative,
            latent: dict, denoise: float = 1.0) -> dict:
    """KSampler's sampling (the same noise, the same result), with the host's progress bar; a new LATENT dict."""
    samples = prepared_latent(model, latent)
    noise = comfy.sample.prepare_noise(samples, seed, latent.get("batch_index"))
    bar = comfy.utils.ProgressBar(steps)
    out = comfy.sample.sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, samples,
                              denoise=denoise, noise_mask=latent.get("noise_mask"), seed=seed, disable_pbar=True,
                              callback=lambda step, x0, x, total: bar.update_absolute(step + 1, total))
    return sampled_latent(latent, out)


def sample_custom(model, noise, cfg, sampler, sigmas, positive, negative, latent):
    return comfy.sample.sample_custom(model, noise, cfg, sampler, sigmas, positive, negative, latent)


# -- ChronoEdit: Wan image-to-video sampling -------------------------------------------------------------------------


def wan_i2v_latent_channels(model):
    """(latent channels, concat channels) of a Wan 2.1-style image-to-video MODEL (its patch embedding takes the
    latent, a 4-channel mask and the concat latent), or None for any other model."""
    base = getattr(model, "model", None)
    if not isinstance(base, comfy.model_base.WAN21) or not getattr(base, "image_to_video", False):
        return None
    weight = getattr(getattr(base.diffusion_model, "patch_embedding", None), "weight", None)
    latent = base.latent_format.latent_channels
    if weight is None or weight.ndim != 5 or weight.shape[1] != 2 * latent + 4:
        return None
    return latent, weight.shape[1] - latent


def rope_options(model) -> dict:
    """The RoPE scale/shift options a MODEL carries (ScaleROPE's), a copy; empty when none."""
    return dict(model.model_options.get("transformer_options", {}).get("rope_options", {}) or {})


def set_rope_options(model, options: dict) -> None:
    """Set RoPE options on ``model`` (a clone), as ScaleROPE does."""
    full = {"scale_x": 1.0, "shift_x": 0.0, "scale_y": 1.0, "shift_y": 0.0, "scale_t": 1.0, "shift_t": 0.0}
    full.update(options)
    model.set_model_rope_options(**full)


def latent_to_outer(model, latent):
    """The host's inner latent space (what samplers and callbacks see) to the outer one (what LATENT holds)."""
    return model.model.process_latent_out(latent)


def initial_noise(latent, seed: int):
    """The noise KSampler draws for ``latent`` with ``seed``."""
    return comfy.sample.prepare_noise(latent, seed, None)


def sample_with(model, sampler_name: str, noise, cfg, sigmas, positive, negative, latent, noise_mask, seed,
                callback=None):
    """The host's sampler ``sampler_name`` run on ``sigmas`` as SamplerCustom runs it (KSampler's code path: the same
    sampler object, guider and noise mask); ``callback(step, x0, x, total)`` per step. Returns the outer LATENT
    tensor; a run ending above sigma 0 returns its state with the leftover noise (KSamplerAdvanced's way)."""
    sampler = comfy.samplers.sampler_object(sampler_name)
    return comfy.sample.sample_custom(model, noise, cfg, sampler, sigmas, positive, negative, latent,
                                      noise_mask=noise_mask, callback=callback, disable_pbar=True, seed=seed)


def step_previews(model, total_steps: int):
    """``update(step, x0)``: the host's progress bar over ``total_steps`` with the host's preview of ``x0`` (inner
    space; a video latent previews its first frame, so pass the frame to show)."""
    previewer = latent_preview.get_previewer(model.load_device, model.model.latent_format)
    bar = comfy.utils.ProgressBar(total_steps)

    def update(step: int, x0) -> None:
        preview = previewer.decode_latent_to_preview_image("JPEG", x0) if previewer is not None else None
        bar.update_absolute(step + 1, total_steps, preview)

    return update


def resize_image(image, width: int, height: int):
    """IMAGE (B, H, W, C) resized as WanImageToVideo resizes its start image (bilinear, centre crop)."""
    return comfy.utils.common_upscale(image.movedim(-1, 1), width, height, "bilinear", "center").movedim(1, -1)


# -- World-To-Image / LLM nodes ---------------------------------------------------------------------------------------

CLIP_VISION_FOLDER = "clip_vision"


def user_cache_dir(name: str) -> str:
    """A cache folder of the pack under ComfyUI's user directory (kept across restarts, unlike the temp folder)."""
    return os.path.join(folder_paths.get_user_directory(), "editlab", name)


def clip_vision_files() -> list[str]:
    """The files of ComfyUI's clip_vision model folder (what the stock CLIPVisionLoader lists)."""
    return folder_paths.get_filename_list(CLIP_VISION_FOLDER)


def load_clip_vision(name: str):
    """The host's CLIP vision loader (``comfy.clip_vision.load``) on a file of the clip_vision folder."""
    import comfy.clip_vision

    return comfy.clip_vision.load(folder_paths.get_full_path_or_raise(CLIP_VISION_FOLDER, name))


def progress_preview(bar, value: int, total: int, pil_image, max_side: int = 512) -> None:
    """Advance the host's progress bar and send ``pil_image`` as the node's preview."""
    bar.update_absolute(value, total, ("JPEG", pil_image, max_side))


def apply_style_model(conditioning, style_model, clip_vision_output, strength: float = 1.0):
    """The host's StyleModelApply (an image prompt such as Flux Redux: the image's tokens appended to the text's)."""
    import nodes as host_nodes

    return host_nodes.StyleModelApply().apply_stylemodel(conditioning, style_model, clip_vision_output, strength,
                                                         "multiply")[0]


# -- LoRA files, hook keyframes, LoRA training layers (layered edit) --------------------------------------------------
# The stock loaders' LoRA code (comfy.utils.load_torch_file, comfy.lora key maps, comfy.sd.load_lora_for_models), the
# hook system's weight hooks with keyframes (comfy.hooks: what CreateHookLora / CreateHookKeyframe / SetClipHooks
# build) and the host's own LoRA training layers (comfy.weight_adapter, as comfy_extras/nodes_train.py uses them).

LORA_FOLDER = "loras"


def load_lora_file(path: str) -> dict:
    """A LoRA file's tensors, as LoraLoader reads them."""
    return comfy.utils.load_torch_file(path, safe_load=True)


def lora_patches(model, lora: dict) -> dict:
    """``lora`` mapped onto ``model``'s diffusion-model weights (the host's key map); empty when nothing matches."""
    import comfy.lora

    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    return comfy.lora.load_lora(lora, key_map, log_missing=False)


def lora_model(model, lora: dict, strength: float):
    """What LoraLoaderModelOnly returns: a clone of ``model`` with ``lora`` patched in at ``strength``."""
    import comfy.sd

    return comfy.sd.load_lora_for_models(model, None, lora, strength, 0)[0]


def model_patches_lora(model, lora: dict, strength: float) -> None:
    """Patch ``lora`` into ``model`` itself (a clone of the caller's) at ``strength``, as LoraLoaderModelOnly does."""
    import comfy.lora_convert

    model.add_patches(lora_patches(model, comfy.lora_convert.convert_lora(lora)), strength)


def windowed_lora_hooks(lora: dict, strength: float, start_percent: float, end_percent: float):
    """A hook group with one weight hook carrying ``lora`` at ``strength`` (CreateHookLora), active from
    ``start_percent`` to ``end_percent`` of sampling and at strength 0 outside (CreateHookKeyframe keyframes, no
    guaranteed steps, so the window is exact: on where sigma(end) < sigma <= sigma(start))."""
    group = comfy.hooks.create_hook_lora(lora, strength_model=strength, strength_clip=0.0)
    keyframes = comfy.hooks.HookKeyframeGroup()
    if start_percent > 0.0:
        keyframes.add(comfy.hooks.HookKeyframe(strength=0.0, start_percent=0.0, guarantee_steps=0))
    keyframes.add(comfy.hooks.HookKeyframe(strength=1.0, start_percent=start_percent, guarantee_steps=0))
    if end_percent < 1.0:
        keyframes.add(comfy.hooks.HookKeyframe(strength=0.0, start_percent=end_percent, guarantee_steps=0))
    group.set_keyframes_on_hooks(keyframes)
    return group


def combine_hooks(groups: list):
    return comfy.hooks.HookGroup.combine_all_hooks(groups)


def model_with_weight_hooks(model, hooks, patches: list[dict]):
    """A clone of ``model`` with each weight hook's patches (mapped by ``lora_patches``) registered, as
    ``comfy.hooks.load_hook_lora_for_models`` does: they act only while a conditioning carrying the hook is sampled,
    at the hook's keyframe strength. Returns (clone, number of weights patched per hook)."""
    m = model.clone()
    counts = []
    for hook, loaded in zip(hooks.get_type(comfy.hooks.EnumHookType.Weight), patches):
        counts.append(len(m.add_hook_patches(hook=hook, patches=loaded, strength_patch=hook._strength_model)))
    return m, counts


def clip_with_cond_hooks(clip, hooks):
    """A clone of ``clip`` whose encoded conditionings carry ``hooks`` (added to any hooks it already carried), as
    SetClipHooks with apply_to_conds on. The hooks change the diffusion model only (their CLIP strength is 0), so
    none is forced onto the text encoder's weights: a newer host's dynamic-VRAM CLIP refuses weight hooks."""
    c = clip.clone()
    c.apply_hooks_to_conds = comfy.hooks.HookGroup.combine_all_hooks([clip.apply_hooks_to_conds, hooks])
    return c


def conditioning_hooks(conditioning):
    """The hook groups a conditioning carries (one per entry; None where none)."""
    return [c[1].get("hooks") for c in conditioning]


def add_lora_train_layers(model, rank: int, seed: int) -> dict:
    """Add the host's trainable LoRA layers (``comfy.weight_adapter`` LoRA, as TrainLoraNode creates them; alpha =
    rank) as weight wrappers on ``model`` (a clone) for every 2-D weight of the diffusion model's blocks (all 2-D
    weights where it has no blocks). Returns {module name: layer}; the layers' parameters are the trainable ones."""
    from comfy.weight_adapter.lora import LoRAAdapter

    found = [(n, m) for n, m in model.model.named_modules()
             if n.startswith("diffusion_model.") and hasattr(m, "weight_function")
             and getattr(m, "weight", None) is not None and m.weight.ndim == 2]
    in_blocks = [(n, m) for n, m in found if "blocks" in n]
    layers = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        for n, m in (in_blocks or found):
            layer = LoRAAdapter.create_train(m.weight, rank=rank, alpha=float(rank))
            model.add_weight_wrapper(f"{n}.weight", layer)
            layers[n] = layer
    return layers


def lora_state_dict(layers: dict) -> dict:
    """The trained layers as a LoRA file's tensors in the format LoraLoader reads (``<module>.lora_up.weight``,
    ``.lora_down.weight``, ``.alpha``; the keys TrainLoraNode / SaveLoRA write), float32 on the CPU."""
    out = {}
    for n, layer in layers.items():
        out[f"{n}.lora_up.weight"] = layer.lora_up.weight.detach().float().cpu().contiguous()
        out[f"{n}.lora_down.weight"] = layer.lora_down.weight.detach().float().cpu().contiguous()
        out[f"{n}.alpha"] = layer.alpha.detach().float().cpu().reshape(())
    return out


def training_clone(model):
    """A clone of ``model`` to train through. On a host with dynamic VRAM (0.33+, ``ModelPatcherDynamic``, the default
    on NVIDIA), a non-dynamic one (``clone(disable_dynamic=True)``): dynamic loading pages weights through shared
    cast buffers that a backward pass would read after they were reused, and it implements no weight hooks. Any other
    MODEL is cloned as it is (no second copy of its weights)."""
    is_dynamic = getattr(model, "is_dynamic", None)
    if callable(is_dynamic) and is_dynamic():
        return model.clone(disable_dynamic=True)
    return model.clone()


def load_for_training(model) -> None:
    """Load ``model`` (a clone carrying weight wrappers) fully onto the compute device, as TrainLoraNode does."""
    with torch.no_grad():  # patching weights (a frozen LoRA, fp8 re-rounding) is not part of what trains
        comfy.model_management.load_models_gpu([model], memory_required=1e20, force_full_load=True)


def release(model) -> None:
    """Unpatch ``model`` (a training clone): the shared weights get their own values back, weight wrappers go."""
    model.detach(unpatch_all=True)


def save_output_text(prefix: str, text: str, extension: str, input_name: str) -> str:
    """Write ``text`` as output/PREFIX_NNNNN_.EXT with the numbering SaveImage uses (``folder_paths
    .get_save_image_path``, which refuses a prefix leading out of the output folder); atomic, never overwriting.
    Returns the path relative to the output folder."""
    from .errors import EditLabInputError

    out_dir = folder_paths.get_output_directory()
    try:
        folder, base, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, out_dir)
    except Exception:  # noqa: BLE001 - the host raises a bare Exception for a prefix outside the output folder
        raise EditLabInputError(input_name, "a file name prefix inside ComfyUI's output folder", prefix) from None
    os.makedirs(folder, exist_ok=True)
    for n in range(counter, counter + 1000):
        path = os.path.join(folder, f"{base}_{n:05}_.{extension}")
        tmp = path + ".part"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        try:
            os.link(tmp, path)
        except FileExistsError:
            continue
        finally:
            os.unlink(tmp)
        return os.path.relpath(path, out_dir)
    raise EditLabInputError(input_name, "a prefix with a free file number", prefix)


def load_flux_files(unet_path: str, clip_paths: list[str], vae_path: str):
    """(MODEL, CLIP, VAE) from files, as UNETLoader, DualCLIPLoader (type flux) and VAELoader load them (for
    scripts/train_layered.py)."""
    import comfy.sd

    model = comfy.sd.load_diffusion_model(unet_path)
    clip = comfy.sd.load_clip(clip_paths, clip_type=comfy.sd.CLIPType.FLUX)
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(vae_path))
    return model, clip, vae


# -- the pack's HTTP routes (web panels) ---------------------------------------------------------------------------
def add_get_route(path: str, handler) -> bool:
    """Register a GET route on the running server (``server.PromptServer.instance.routes``, which the host serves
    with and without the /api prefix). False where no server runs (the nodes imported in-process, in tests: the
    host's server module is then not imported at all)."""
    import sys

    if "server" not in sys.modules:
        return False
    import server

    instance = getattr(server.PromptServer, "instance", None)
    if instance is None:
        return False
    instance.routes.get(path)(handler)
    return True
