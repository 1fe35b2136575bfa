"""Real size in one process (issue 23): the full-size Flux dev transformer (fp8 e4m3fn weights, bf16 compute: the stock
UNETLoader's fp8 option), the full-size SDXL UNet (fp16 on a GPU) and the full-size SD1.5 UNet, built from the host's
own config classes with seeded random weights made on the device and wrapped in the host's ModelPatcher, so every
node loads them through the host's model management. Each EditLab node that patches, samples or trains runs once at
the authors' resolution (Flux and SDXL 1024x1024, SD1.5 512x512), beside the host's plain KSampler and the host's own
TrainLoraNode of the same model. Made for a GPU; on the CPU the SD1.5 rows fit this machine.

    python -P bench/real_size/device_run.py [--smoke] [--only flux,sdxl,sd15] [--rows tova_train,...] [--steps 2]
                                            [--size PX] [--out DIR]

Text encoders are the host's classes at the real output widths (Flux: CLIP-L 768 + T5 4096; SDXL: CLIP-L 768 +
CLIP-G 1280; SD1.5: CLIP-L 768) with few, narrow layers, and the VAE a small KL autoencoder with the real latent
channels: the diffusion network sees inputs of the real shapes; the encoders' own weights (several GiB for a real
T5-XXL, which the host unloads before sampling where memory is short) are outside the comparison.

Peak on a GPU: ``torch.cuda.max_memory_allocated`` during the row, its statistics reset once the diffusion model is
loaded. On the CPU: the process's resident high-water mark (VmHWM, reset through /proc/self/clear_refs after
``malloc_trim``), and, per phase, the highest resident size sampled every 10 ms while the host's VAE encoded, its
text encoder ran, the diffusion network ran forward, or backward ran (:class:`CpuMeter`): what separates a trainer's
peak into its parts. "extra" is the peak above what the process held when the row started (the diffusion weights are
in that), "ratio" the peak over the plain row's peak. Time: the row's wall time over its steps (sampling or training
steps), text encoding and image encoding included.

``--smoke``: tiny configs at 64 px on whatever device there is (the test suite runs it on the CPU, so the script
cannot rot between GPU sessions).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # bench/ (benchlib: the pack importable as editlab)
sys.path.insert(0, str(HERE))
import benchlib  # noqa: E402,F401
import live  # noqa: E402 - bench/real_size/live.py: /proc status reading

import torch  # noqa: E402

MiB = 2**20
PROMPT = "a photo of a person wearing a shirt, smiling"
TINY_FLUX = {"image_model": "flux", "in_channels": 16, "out_channels": 16, "patch_size": 2, "vec_in_dim": 768,
             "context_in_dim": 4096, "hidden_size": 64, "mlp_ratio": 4.0, "num_heads": 2, "depth": 1,
             "depth_single_blocks": 1, "axes_dim": [8, 12, 12], "theta": 10000, "qkv_bias": True,
             "guidance_embed": True}
TINY_SDXL = {"model_channels": 64, "in_channels": 4, "out_channels": 4, "num_res_blocks": [1, 1],
             "channel_mult": [1, 2], "transformer_depth": [1, 1], "transformer_depth_output": [1, 1, 1, 1],
             "transformer_depth_middle": 1, "context_dim": 2048, "num_heads": 2, "num_head_channels": -1,
             "use_linear_in_transformer": True, "adm_in_channels": 2816, "use_temporal_attention": False,
             "use_spatial_transformer": True, "legacy": False, "image_size": 32, "use_temporal_resblock": False,
             "num_classes": "sequential"}
# text encoders at the real output widths, with the fewest layers the host's code paths read (SDXL reads the
# penultimate layer)
CLIP_L = {"hidden_size": 768, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 3,
          "projection_dim": 768}
CLIP_G = {"hidden_size": 1280, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 3,
          "projection_dim": 1280}
SIZES = {"flux": 1024, "sdxl": 1024, "sd15": 512}  # the authors' resolutions
TOVA = {"flux": (16, 1e-4), "sdxl": (16, 1e-4), "sd15": (32, 5e-4)}  # rank, lr (the authors' for SD / SDXL)
T5 = {"d_model": 4096, "d_ff": 64, "d_kv": 16, "num_heads": 2, "num_layers": 1, "num_decoder_layers": 1}


def setup_host(cpu: bool, root: Path):
    """ComfyUI importable here, its model and input folders under ``root``."""
    from editlab.client.hostenv import comfyui_path

    path = str(comfyui_path())
    if path not in sys.path:
        sys.path.insert(0, path)
    from comfy.cli_args import args

    args.cpu = cpu
    import comfy.model_management  # noqa: F401 - reads args at import
    import folder_paths

    from editlab.nodes import conceptsplit, expression

    for name in (conceptsplit.TOVA_FOLDER, "loras", expression.ADAPTER_FOLDER):
        (root / name).mkdir(parents=True, exist_ok=True)
        folder_paths.folder_names_and_paths[name] = ([str(root / name)], {".safetensors"})
    folder_paths.set_input_directory(str(root / "input"))
    _inputs(root / "input")


FACE = HERE.parents[1] / "workflows" / "input" / "editlab_photo.png"  # the shipped portrait (a real face)


def _inputs(root: Path, size: int = 256):
    """Two concept images (ToVA Train), two edit pairs with product masks (Layered Edit Train), and the shipped
    portrait as a face folder (Train Expression Adapter: MediaPipe finds the face and measures its blendshapes)."""
    import shutil

    import numpy as np
    from PIL import Image

    (root / "faces").mkdir(parents=True, exist_ok=True)
    shutil.copy(FACE, root / "faces" / "face.png")

    rng = np.random.default_rng(0)
    (root / "concept").mkdir(parents=True, exist_ok=True)
    (root / "pairs").mkdir(parents=True, exist_ok=True)
    for i in range(2):
        img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / "concept" / f"c{i}.png")
        mask = np.zeros((size, size), np.uint8)
        mask[size // 4: 3 * size // 4, size // 3: 2 * size // 3] = 255
        target = img.copy()
        target[mask == 0] = (30 + 100 * i, 140, 220)
        Image.fromarray(img).save(root / "pairs" / f"p{i}_source.png")
        Image.fromarray(target).save(root / "pairs" / f"p{i}_target.png")
        Image.fromarray(mask).save(root / "pairs" / f"p{i}_mask.png")
        (root / "pairs" / f"p{i}.txt").write_text("replace the background with a blue sky")


def fill_random(module: torch.nn.Module, seed: int) -> None:
    """Seeded random weights drawn on the weights' own device (fan-in scaled, norm weights near 1), written in the
    weights' dtype (fp8 included): the scaling of ``models.tiny.builders.seed_parameters``, whose CPU generator
    would move tens of GiB through the CPU, with a generator per parameter instead (other values, same statistics).
    Buffers are left as built: these networks (the SD UNets, Flux) have no persistent float buffers."""
    with torch.no_grad():
        for i, (name, p) in enumerate(sorted(module.named_parameters(), key=lambda kv: kv[0])):
            gen = torch.Generator(device=p.device).manual_seed(seed * 100_003 + i)
            vals = torch.randn(p.shape, generator=gen, device=p.device, dtype=torch.float32)
            if p.ndim >= 2:
                vals /= math.sqrt(max(math.prod(p.shape[1:]), 1))
            elif name.rsplit(".", 1)[-1] in ("weight", "scale", "gamma") or "norm" in name:
                vals = vals.mul_(0.02).add_(1.0)
            else:
                vals = vals.mul_(0.02)
            p.copy_(vals)
            del vals


class Built:
    def __init__(self, family, model, clip, vae, size, parameters, weight_dtype):
        self.family, self.model, self.clip, self.vae, self.size = family, model, clip, vae, size
        self.parameters, self.weight_dtype = parameters, weight_dtype


def build(family: str, smoke: bool, seed: int = 0, size: int | None = None) -> Built:
    import comfy.model_management as mm
    import comfy.sdxl_clip
    import comfy.supported_models
    import comfy.text_encoders.flux

    import meta_counts
    from editlab.models.tiny import builders

    device = mm.get_torch_device()
    if family == "flux":
        cls, unet = comfy.supported_models.Flux, dict(TINY_FLUX if smoke else meta_counts.FLUX_DEV)
        dtype, compute = torch.float8_e4m3fn, torch.bfloat16  # UNETLoader weight_dtype fp8_e4m3fn on a GPU
        clip = builders._clip(comfy.text_encoders.flux.flux_clip(), comfy.text_encoders.flux.FluxTokenizer,
                              {"clip_l_model_config": dict(CLIP_L), "t5xxl_model_config": dict(T5)}, seed + 1)
        latent_channels = 16
    elif family == "sd15":
        import comfy.sd1_clip

        tiny = {**TINY_SDXL, "context_dim": 768, "adm_in_channels": None, "num_classes": None,
                "use_linear_in_transformer": False}
        cls, unet = comfy.supported_models.SD15, dict(tiny if smoke else meta_counts.SD15)
        dtype, compute = (torch.float32, None) if device.type == "cpu" else (torch.float16, None)
        clip = builders._clip(comfy.sd1_clip.SD1ClipModel, comfy.sd1_clip.SD1Tokenizer,
                              {"clip_l_model_config": dict(CLIP_L)}, seed + 1)
        latent_channels = 4
    else:
        cls, unet = comfy.supported_models.SDXL, dict(TINY_SDXL if smoke else meta_counts.SDXL)
        dtype, compute = (torch.float32, None) if device.type == "cpu" else (torch.float16, None)
        clip = builders._clip(comfy.sdxl_clip.SDXLClipModel, comfy.sdxl_clip.SDXLTokenizer,
                              {"clip_l_model_config": dict(CLIP_L), "clip_g_model_config": dict(CLIP_G)}, seed + 1)
        latent_channels = 4
    model = diffusion_patcher(cls, unet, dtype, compute, seed)
    base = model.model
    vae = builders._kl_vae(latent_channels, seed + 2)
    parameters = sum(p.numel() for p in base.diffusion_model.parameters())
    size = 64 if smoke else (size or SIZES[family])
    return Built(family, model, clip, vae, size, parameters, str(dtype).removeprefix("torch."))


def diffusion_patcher(cls, unet: dict, dtype, compute, seed: int, disable_dynamic: bool = False):
    """The diffusion model in the host's ModelPatcher with seeded random weights, built in the caller's inference
    mode (:func:`main` builds under inference mode, as the server runs its loaders: inference-mode weights are what
    forced the weight copies of issue 23 in the trainers). Its ``cached_patcher_init`` rebuilds it the same way, as a
    core loader's reloads the file: ComfyUI 0.33's TrainLoraNode clones the model with ``force_deepcopy``, which asks
    for that second model (built, and timed, inside the host trainer's row)."""
    import comfy.model_management as mm
    import comfy.model_patcher

    from editlab.models.tiny import builders

    device = mm.get_torch_device()
    config = cls(builders.host_unet_config(cls, unet))
    config.set_inference_dtype(dtype, compute)
    with torch.device(device):  # in the caller's inference mode, as a loader builds in its caller's
        base = config.get_model({})
        fill_random(base.diffusion_model, seed)
    base.eval()
    model = comfy.model_patcher.ModelPatcher(base, load_device=device, offload_device=mm.unet_offload_device())
    model.cached_patcher_init = (diffusion_patcher, (cls, unet, dtype, compute, seed))
    return model


def call(cls, lists=(), **inputs):
    """A node as the executor calls it: V3 nodes through ``execute``, V1 through their FUNCTION; the inputs a call
    leaves out take the node's own defaults. ``lists``: inputs given as lists already (an input-list node's)."""
    spec = cls.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, desc in spec.get(section, {}).items():
            if name not in inputs and len(desc) > 1 and isinstance(desc[1], dict) and "default" in desc[1]:
                inputs[name] = desc[1]["default"]
    if getattr(cls, "INPUT_IS_LIST", False):  # e.g. the host's TrainLoraNode: every input arrives as a list
        inputs = {k: v if k in lists else [v] for k, v in inputs.items()}
    if hasattr(cls, "define_schema"):
        out = cls.execute(**inputs)
        return out.result if hasattr(out, "result") else out
    return getattr(cls(), cls.FUNCTION)(**inputs)


class CpuMeter:
    """Resident memory of this process on the CPU: writing 5 to /proc/self/clear_refs resets the high-water mark
    (VmHWM, the row's peak) to the resident size; each phase of :func:`phases` (image encoding, text encoding, the
    network's forward with or without autograd, backward with its recomputation, the rest) gets the highest resident
    size seen while it ran, read every 10 ms by a thread and at each phase's start and end. A phase's figure is the
    process's resident size at the time, so memory an earlier phase of the row freed but the allocator kept counts in
    a later one: the phase with the highest figure is where the peak was reached."""

    active = None  # the meter of the row being measured (read at phase boundaries)

    def __init__(self):
        import threading

        self.threading = threading

    @staticmethod
    def status(key: str) -> int:
        return live._status(os.getpid())[key]

    def sample(self):
        rss, phase = self.status("VmRSS"), _PHASE[-1]
        self.by_phase[phase] = max(self.by_phase.get(phase, 0), rss)

    def __enter__(self):
        gc.collect()
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)  # what earlier rows freed goes back to the system first
        except OSError:
            pass
        Path("/proc/self/clear_refs").write_text("5")
        self.base, self.by_phase, self._stop = self.status("VmRSS"), {}, self.threading.Event()

        def loop():
            while not self._stop.wait(0.01):
                self.sample()
        self._thread = self.threading.Thread(target=loop, daemon=True)
        self._thread.start()
        CpuMeter.active = self
        return self

    def __exit__(self, *exc):
        CpuMeter.active = None
        self._stop.set()
        self._thread.join()
        self.peak = self.status("VmHWM")


_PHASE = ["rest"]


def _in_phase(label: str, fn):
    def wrapped(*args, **kwargs):
        if _PHASE[-1] == "backward":  # a recomputation inside backward stays there
            phase = "backward"
        elif label == "network forward":
            phase = label + (" (autograd)" if torch.is_grad_enabled() else " (no grad)")
        else:
            phase = label
        _PHASE.append(phase)
        meter = CpuMeter.active
        try:
            if meter:
                meter.sample()
            return fn(*args, **kwargs)
        finally:
            if meter:
                meter.sample()
            _PHASE.pop()
    wrapped.__wrapped__ = fn
    return wrapped


@contextlib.contextmanager
def phases():
    """While the context runs, the memory sampled is filed under the phase running: the host's VAE encoding and text
    encoding, the diffusion network's forward (UNet or Flux; with autograd recording or not: a trainer's steps or its
    loss evaluation and sampling), backward. The functions are the host's and torch's own, wrapped and restored."""
    import comfy.ldm.flux.model
    import comfy.ldm.modules.diffusionmodules.openaimodel as openai
    import comfy.sd

    from editlab.nodes import expression

    wrapped = [(comfy.sd.VAE, "encode", "image encoding"), (comfy.sd.CLIP, "encode_from_tokens", "text encoding"),
               (expression, "_face_folder_images", "face analysis (MediaPipe)"),
               (openai.UNetModel, "forward", "network forward"),
               (comfy.ldm.flux.model.Flux, "forward", "network forward"), (torch.Tensor, "backward", "backward"),
               (torch.autograd, "backward", "backward"), (torch.autograd, "grad", "backward")]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in wrapped]
    try:
        for owner, name, label in wrapped:
            setattr(owner, name, _in_phase(label, getattr(owner, name)))
        yield
    finally:
        for owner, name, fn in originals:
            setattr(owner, name, fn)


class Rows:
    """Runs each workflow once, measuring its peak and time; a row that fails records its error and the run goes on."""

    def __init__(self, built: Built, steps: int, keys=(), cpu_memory: bool = False):
        self.b, self.steps, self.rows, self.keys, self.cpu_memory = built, steps, [], set(keys), cpu_memory
        self.cuda = built.model.load_device.type == "cuda"

    def measure(self, key: str, label: str, steps: int, fn):
        """Run ``fn`` (one workflow) under inference mode with the diffusion model loaded first, and record its
        peak memory (GPU: allocated bytes; CPU: resident bytes, by phase), the peak above what was held at its
        start, its ratio to the plain row's peak and its time per step; an error is recorded as the row's status."""
        import comfy.model_management as mm

        row = {"family": self.b.family, "key": key, "workflow": label, "steps": steps, "size": self.b.size}
        if self.keys and key not in self.keys and key != "plain":
            return None
        gc.collect()
        mm.load_models_gpu([self.b.model])
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        meter = contextlib.nullcontext() if self.cuda or not self.cpu_memory else CpuMeter()
        t0 = time.perf_counter()
        try:
            with meter, torch.inference_mode():  # the executor runs every node under inference mode
                result = fn()
            if self.cuda:
                torch.cuda.synchronize()
            row["s_per_step"] = round((time.perf_counter() - t0) / steps, 3)
            if self.cuda:
                peak = torch.cuda.max_memory_allocated()
                row.update(peak_mib=round(peak / MiB), extra_mib=round((peak - base) / MiB),
                           base_mib=round(base / MiB))
            elif isinstance(meter, CpuMeter):
                row.update(peak_mib=round(meter.peak / MiB), extra_mib=round((meter.peak - meter.base) / MiB),
                           base_mib=round(meter.base / MiB),
                           phases_extra_mib={k: round((v - meter.base) / MiB) for k, v in meter.by_phase.items()})
            row["status"] = "ok"
        except Exception as exc:  # the finding is the error; the other rows still run
            result = None
            row["status"] = f"{type(exc).__name__}: {str(exc)[:400]}"
            traceback.print_exc()
        plain = next((r for r in self.rows if r["key"] == "plain" and r.get("peak_mib")), None)
        if plain and row.get("peak_mib"):
            row["ratio"] = round(row["peak_mib"] / plain["peak_mib"], 3)
        print(json.dumps(row), flush=True)
        self.rows.append(row)
        return result

    # --- the workflows -------------------------------------------------------------------------------------------
    def conditioning(self):
        from nodes import CLIPTextEncode

        pos = call(CLIPTextEncode, clip=self.b.clip, text=PROMPT)[0]
        neg = call(CLIPTextEncode, clip=self.b.clip, text="")[0]
        if self.b.family == "flux":
            import node_helpers

            pos = node_helpers.conditioning_set_values(pos, {"guidance": 3.5})
        return pos, neg

    @property
    def cfg(self):
        return 1.0 if self.b.family == "flux" else 7.5

    @property
    def scheduler(self):
        return "simple" if self.b.family == "flux" else "normal"

    def latent(self):
        c = 16 if self.b.family == "flux" else 4
        return {"samples": torch.zeros(1, c, self.b.size // 8, self.b.size // 8)}

    def sample(self, model):
        from nodes import common_ksampler

        pos, neg = self.conditioning()
        return common_ksampler(model, 1, self.steps, self.cfg, "euler", self.scheduler, pos, neg, self.latent())

    def run(self):
        from comfy_extras import nodes_train

        from editlab.nodes import conceptsplit, expression, layered

        b, steps = self.b, self.steps
        if self.cuda:  # CUDA's and cuBLAS's start-up, and the kernels' first compilation, outside every row
            with torch.inference_mode():
                self.sample(b.model)
        self.measure("plain", "host KSampler (plain sampling)", steps, lambda: self.sample(b.model))

        def maps():
            pos, neg = self.conditioning()
            return call(conceptsplit.EditLabAttentionMaps, model=b.model, clip=b.clip, positive=pos, negative=neg,
                        latent_image=self.latent(), prompt=PROMPT, words="person, shirt", seed=1, steps=steps,
                        cfg=self.cfg, sampler_name="euler", scheduler=self.scheduler, start_step=0, end_step=steps)
        self.measure("attention_maps", "Attention Maps (its own sampler)", steps, maps)
        if b.family != "flux":
            self.measure("loda", "LODA (1 LODA step per sampling step) + AFG", steps, self.loda)
        tova = self.measure(
            "tova_train", f"ToVA Train (rank {TOVA[b.family][0]}, its default gradient checkpointing)", steps,
            lambda: call(conceptsplit.EditLabToVATrain, model=b.model, clip=b.clip, vae=b.vae, folder="concept",
                         prompt=PROMPT, word="person", resolution=b.size, rank=TOVA[b.family][0], steps=steps,
                         lr=TOVA[b.family][1],
                         batch_size=1, seed=0, name=f"real_size_{b.family}", overwrite=True))
        if tova is None and (not self.keys or "tova_apply" in self.keys):
            self.rows.append({"family": b.family, "key": "tova_apply", "workflow": "ToVA Apply", "steps": steps,
                              "size": b.size, "status": "skipped: it applies the adapter the tova_train row trains"})
        if tova is not None:
            def apply():
                m = call(conceptsplit.EditLabToVAApply, model=b.model, clip=b.clip, prompt=PROMPT, strength=1.0,
                         adapter_1=tova[0])[0]
                return self.sample(m)
            self.measure("tova_apply", "ToVA Apply (the adapter just trained)", steps, apply)
        if b.family != "flux":
            self.measure(
                "expression_train", "Train Expression Adapter (4 tokens, its default gradient checkpointing)", steps,
                lambda: call(expression.EditLabTrainExpressionAdapter, model=b.model, clip=b.clip, vae=b.vae,
                             folder="faces", prompt="a photo of a face", resolution=b.size, steps=steps, lr=1e-4,
                             batch_size=1, num_tokens=4, seed=0, name=f"real_size_{b.family}", overwrite=True))
        if b.family == "flux":
            self.measure(
                "layered_train", "Layered Edit Train, both stages (rank 16, reference latent: Kontext's token count, "
                "its default gradient checkpointing)", 2 * steps,
                lambda: call(layered.EditLabLayeredTrain, model=b.model, clip=b.clip, vae=b.vae, folder="pairs",
                             stages="both", pattern_shift_lora="None", resolution=b.size, rank=16,
                             steps_stage1=steps, steps_stage2=steps, lr=1e-4, product_weight=5.0, guidance=2.5,
                             seed=0, name=f"real_size_{b.family}", overwrite=True))

        def host_train():
            from nodes import VAEEncode

            import numpy as np
            image = torch.from_numpy(np.random.default_rng(0).random((1, b.size, b.size, 3), dtype=np.float32))
            latents = call(VAEEncode, pixels=image, vae=b.vae)[0]
            pos, _ = self.conditioning()
            train_dtype = "bf16" if self.cuda else "fp32"  # the CPU computes in float32, as the stock loader loads
            # two images, as a list of latents (0.3.75's node fails on a single latent batch: an unset variable)
            return call(nodes_train.TrainLoraNode, lists=("latents",), model=b.model, latents=[latents, latents],
                        positive=pos, batch_size=1, grad_accumulation_steps=1, steps=steps, learning_rate=1e-4,
                        rank=16, optimizer="AdamW", loss_function="MSE", seed=0, training_dtype=train_dtype,
                        lora_dtype=train_dtype, gradient_checkpointing=True, existing_lora="[None]")
        label = f"host TrainLoraNode (rank 16, {'bf16' if self.cuda else 'fp32'}, its default checkpointing)"
        self.measure("host_train_lora", label, steps, host_train)
        return self.rows

    def loda(self):
        from comfy_extras import nodes_custom_sampler as cs

        from editlab.nodes import conceptsplit

        b = self.b
        pos, neg = self.conditioning()
        sampler = call(cs.KSamplerSelect, sampler_name="euler")[0]
        loda = call(conceptsplit.EditLabLODA, sampler=sampler, clip=b.clip, prompt=PROMPT, concepts="person, shirt",
                    loda_steps=1, step_size=20.0, threshold=3.0, afg_strength=2.0, map_layers="authors")[0]
        sigmas = call(cs.BasicScheduler, model=b.model, scheduler="normal", steps=self.steps, denoise=1.0)[0]
        return call(cs.SamplerCustom, model=b.model, add_noise=True, noise_seed=1, cfg=7.5, positive=pos,
                    negative=neg, sampler=loda, sigmas=sigmas, latent_image=self.latent())


def render(data: dict) -> str:
    lines = [f"Device: {data['device']}; torch {data['torch']}; {data['host']}; measured {data['time']} at "
             f"{data['git']}; {data['steps']} step(s) per row, euler.", ""]
    for fam in data["families"]:
        size = "tiny" if data["smoke"] else "full"
        lines += [f"**{fam['family']} at {fam['size']}x{fam['size']}, {size} size ({fam['parameters']:,} parameters, "
                  f"{fam['weight_dtype']} weights), one process, the host's model management**", "",
                  "| workflow | peak MiB | extra over the row's start, MiB | ratio to plain | s/step | status |",
                  "|---|---:|---:|---:|---:|---|"]
        for r in fam["rows"]:
            num = lambda k: f"{r[k]:,}" if isinstance(r.get(k), int) else "-"  # noqa: E731
            ratio = f"{r['ratio']:.2f}x" if "ratio" in r else "-"
            lines.append(f"| {r['workflow']} | {num('peak_mib')} | {num('extra_mib')} | {ratio} | "
                         f"{r.get('s_per_step', '-')} | {r['status']} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny configs at 64 px (any device)")
    parser.add_argument("--only", default="flux,sdxl", help="families, comma-separated (flux, sdxl, sd15)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--rows", default="", help="only these rows (keys, comma-separated; plain always runs)")
    parser.add_argument("--size", type=int, default=None,
                        help="image side in pixels instead of the authors' (e.g. where a row does not fit this machine)")
    args = parser.parse_args(argv)
    args.smoke = args.smoke or benchlib.SMOKE  # benchlib takes --smoke off the command line (and sets its size)
    cuda = torch.cuda.is_available()
    root = Path(tempfile.mkdtemp(prefix="editlab_device_run_"))
    setup_host(not cuda, root)
    import comfy.model_management as mm

    import run  # bench/real_size/run.py: the commit stamp

    data = {"device": torch.cuda.get_device_name() if cuda else "CPU", "torch": torch.__version__,
            "host": f"ComfyUI at {os.environ.get('COMFYUI_PATH', 'the set-up host')}",
            "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "steps": args.steps, "smoke": args.smoke,
            "git": run._git(), "families": []}
    args.out.mkdir(parents=True, exist_ok=True)
    name = "device_run_smoke" if args.smoke else "device_run"
    for family in [f.strip() for f in args.only.split(",") if f.strip()]:
        t0 = time.monotonic()
        with torch.inference_mode():  # as the stock loaders build under the server: inference-mode weights
            built = build(family, args.smoke, size=args.size)
        print(f"built {family}: {built.parameters:,} parameters in {time.monotonic() - t0:.1f} s", flush=True)
        with contextlib.nullcontext() if cuda else phases():
            rows = Rows(built, args.steps, [k for k in args.rows.split(",") if k], cpu_memory=not cuda).run()
        data["families"].append({"family": family, "size": built.size, "parameters": built.parameters,
                                 "weight_dtype": built.weight_dtype, "rows": rows})
        del built
        mm.unload_all_models()
        mm.soft_empty_cache()
        gc.collect()
        # written after each family: a run stopped by its time limit keeps what it measured
        (args.out / f"{name}.json").write_text(json.dumps(data, indent=1))
        (args.out / f"{name}.md").write_text(render(data))
    print(render(data))
    failed = [r for fam in data["families"] for r in fam["rows"] if r["status"] != "ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
