"""Model files a workflow needs, and ``--tiny``: the stock loaders swapped for EditLabTinyModels at submission time.

Both work on the API format (what /prompt takes), so the client and the browser tests share them: the browser test
takes what the page would queue (``app.graphToPrompt()``), passes it through :func:`substitute_tiny` and queues
that from the page.

Which tiny architecture replaces a loader is read from the loader itself (the CLIP loader's ``type``, the file
name's family: ``flux1-fill-dev`` -> flux_fill, ``sd3.5...`` -> sd3, ``v1-5...`` -> sd15), falling back to the
architecture of the workflow's other loaders. Each architecture gets one EditLabTinyModels node (seed 0), and every
link from a loader's output is moved to the tiny node's output of the same kind (MODEL 0, CLIP 1, VAE 2). The tiny
Flux and Flux Fill builders share their text encoders and VAE bit for bit, so a Fill UNet beside a Flux CLIP/VAE
stays consistent. LoRA loaders pass their inputs through (a LoRA cannot apply to random tiny weights).
No tiny model has a CLIP vision encoder: ``CLIPVisionLoader`` and the ``CLIPVisionEncode`` nodes it feeds are removed,
and the links from them are cut; the inputs they fed must be optional (Wan's ``clip_vision_output`` is, in
WanImageToVideo and ChronoEdit Conditioning alike).

The shipped workflows carry the authors' settings (Flux and SDXL at 1024 px, SD1.5 at 512, ChronoEdit's 921,600-pixel
area, 20-50 steps, training at full resolution): on tiny random weights on a CPU that is minutes of noise. So
``substitute_tiny`` also scales sizes and step counts down for the dry run (:data:`TINY_CAPS`, :func:`scale_for_tiny`)
and says each change (node, input, old -> new). Only values above a cap change: a value already small (a ``--set``
override, a test's own graph) is kept.
"""
from __future__ import annotations

import json
import re

from . import ClientError

TINY_NODE = "EditLabTinyModels"
# Stock loader -> {its output slot: the tiny node's output slot}.
LOADERS = {
    "UNETLoader": {0: 0},
    "CheckpointLoaderSimple": {0: 0, 1: 1, 2: 2},
    "DualCLIPLoader": {0: 1},
    "TripleCLIPLoader": {0: 1},
    "CLIPLoader": {0: 1},
    "VAELoader": {0: 2},
}
# Pass-through loaders: their output slot -> the input it passes on.
PASS_THROUGH = {"LoraLoaderModelOnly": {0: "model"}, "LoraLoader": {0: "model", 1: "clip"}}
# Dropped with --tiny (no tiny CLIP vision model), with the nodes of DROPPED_USERS they feed.
DROPPED = ("CLIPVisionLoader",)
DROPPED_USERS = ("CLIPVisionEncode",)
# Nodes that refuse to run without the CLIP vision features --tiny removes, unless told it is a dry run: the input
# that says so, turned on (and said) when --tiny drops a CLIP vision encoder.
CLIP_VISION_OPT_OUT = {"EditLabTemporalReasoningSampler": "without_clip_vision"}
# The models folder each file input reads from (LOADER_FOLDERS: where a loader's own folder differs).
LOADER_FOLDERS = {"CLIPVisionLoader": "clip_vision"}
MODEL_INPUTS = {"unet_name": "diffusion_models", "ckpt_name": "checkpoints", "clip_name": "text_encoders",
                "clip_name1": "text_encoders", "clip_name2": "text_encoders", "clip_name3": "text_encoders",
                "vae_name": "vae", "lora_name": "loras"}
CLIP_TYPES = {"flux": "flux", "sd3": "sd3", "sdxl": "sdxl", "stable_diffusion": "sd15", "wan": "wan21_i2v"}
FILE_FAMILIES = [  # (pattern in a model file's name, architecture), first match wins
    (r"flux.*fill|fill.*flux", "flux_fill"), (r"flux", "flux"), (r"sd3|stable[-_]?diffusion[-_]?3", "sd3"),
    (r"sdxl|sd_xl|xl[-_]base", "sdxl"), (r"wan2?\.?1|wan_2\.1|chrono_?edit", "wan21_i2v"),
    (r"v1-5|sd15|sd_1\.5|v1_5|stable-diffusion-v1", "sd15"), (r"^ae\.safetensors$", "flux"),
]


# --tiny: class_type -> {input: the most it may be on the tiny models}. Sizes in pixels (the tiny VAEs still divide
# by 8 or 16), ChronoEdit's target area in pixels, try-on canvas height, training resolutions and step counts.
TINY_SIZE, TINY_AREA, TINY_STITCH_HEIGHT = 64, 64 * 64, 128
TINY_CAPS = {
    "EmptyLatentImage": {"width": TINY_SIZE, "height": TINY_SIZE},
    "EmptySD3LatentImage": {"width": TINY_SIZE, "height": TINY_SIZE},
    "EmptyHunyuanLatentVideo": {"width": TINY_SIZE, "height": TINY_SIZE},
    "ImageScale": {"width": TINY_SIZE, "height": TINY_SIZE},
    "KSampler": {"steps": 8},
    "KSamplerAdvanced": {"steps": 8},
    "BasicScheduler": {"steps": 8},
    "EditLabWorldToImage": {"width": TINY_SIZE, "height": TINY_SIZE, "steps": 4},
    "EditLabChronoEditConditioning": {"target_area": TINY_AREA},
    "EditLabTemporalReasoningSampler": {"steps": 8},
    "EditLabTryOnStitch": {"height": TINY_STITCH_HEIGHT},
    "EditLabAttentionMaps": {"steps": 4},
    "EditLabLODA": {"loda_steps": 2},
    "EditLabToVATrain": {"resolution": TINY_SIZE, "steps": 4},
    "EditLabTrainExpressionAdapter": {"resolution": TINY_SIZE, "steps": 8},
    "EditLabTrainReferenceLoRA": {"resolution": TINY_SIZE, "steps": 2},
    "EditLabLayeredTrain": {"resolution": TINY_SIZE, "steps_stage1": 2, "steps_stage2": 2},
}
# Inputs that count sampling steps of the same node: scaled with its ``steps`` (rounded, kept within the new count).
STEP_INDICES = {"EditLabTemporalReasoningSampler": ("reasoning_steps",),
                "EditLabAttentionMaps": ("start_step", "end_step")}


def scale_for_tiny(prompt: dict) -> tuple[dict, list[str]]:
    """A copy of ``prompt`` with sizes and step counts capped for a dry run on the tiny models (:data:`TINY_CAPS`),
    and one line per change: ``node ID CLASS: INPUT OLD -> NEW``."""
    prompt = json.loads(json.dumps(prompt))
    said = []
    for node_id in sorted(prompt, key=lambda k: (len(k), k)):
        node = prompt[node_id]
        kind, inputs = node.get("class_type"), node.get("inputs", {})
        changed = {}
        for name, cap in TINY_CAPS.get(kind, {}).items():
            value = inputs.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > cap:
                changed[name] = (value, cap)
        steps = changed.get("steps")
        if steps:
            old, new = steps
            for name in STEP_INDICES.get(kind, ()):
                value = inputs.get(name)
                if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                    scaled = min(new, max(1, round(value * new / old)))
                    if scaled != value:
                        changed[name] = (value, scaled)
        for name, (old, new) in changed.items():
            inputs[name] = new
            said.append(f"node {node_id} {kind}: {name} {old} -> {new} (scaled down for the tiny models)")
    return prompt, said


def _family(file_name: str):
    name = str(file_name).lower().rsplit("/", 1)[-1]
    for pattern, arch in FILE_FAMILIES:
        if re.search(pattern, name):
            return arch
    return None


def loader_architecture(node: dict):
    """The tiny architecture that stands in for one stock loader node, or None if the node does not say."""
    inputs, kind = node.get("inputs", {}), node.get("class_type")
    if kind in ("DualCLIPLoader", "CLIPLoader") and isinstance(inputs.get("type"), str):
        arch = CLIP_TYPES.get(inputs["type"])
        if arch:
            return arch
    if kind == "TripleCLIPLoader":
        return "sd3"
    for name in ("unet_name", "ckpt_name", "vae_name", "clip_name", "clip_name1", "clip_name2"):
        if isinstance(inputs.get(name), str):
            arch = _family(inputs[name])
            if arch:
                return arch
    return None


def _is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)


def substitute_tiny(prompt: dict) -> tuple[dict, list[str]]:
    """A copy of ``prompt`` with every stock loader replaced by EditLabTinyModels and sizes and steps scaled down
    for them (:func:`scale_for_tiny`); and one line per swap and per change."""
    prompt, said = _swap_loaders(prompt)
    prompt, scaled = scale_for_tiny(prompt)
    return prompt, said + scaled


def _swap_loaders(prompt: dict) -> tuple[dict, list[str]]:
    """A copy of ``prompt`` with every stock loader replaced by EditLabTinyModels; and one line per swap."""
    prompt = json.loads(json.dumps(prompt))
    prompt, said = _drop_clip_vision(prompt)
    loaders = {k: v for k, v in prompt.items() if v.get("class_type") in LOADERS}
    if not loaders:
        return prompt, said
    archs = {k: loader_architecture(v) for k, v in loaders.items()}
    known = [a for a in archs.values() if a]
    fallback = max(set(known), key=known.count) if known else None
    tiny_ids = {}
    for node_id in sorted(loaders, key=lambda k: (len(k), k)):
        node = loaders[node_id]
        arch = archs[node_id] or fallback
        if arch is None:
            raise ClientError(f"--tiny: cannot tell which model family node {node_id} ({node['class_type']}) loads; "
                              f"name a family in its file name (flux, sd3, sdxl, v1-5, wan2.1)")
        tiny_ids.setdefault(arch, f"tiny_{arch}")
        files = ", ".join(str(v) for k, v in node["inputs"].items() if k in MODEL_INPUTS)
        said.append(f"node {node_id} {node['class_type']} ({files}) -> {TINY_NODE} {arch}")
    for arch, tiny_id in tiny_ids.items():
        prompt[tiny_id] = {"class_type": TINY_NODE, "inputs": {"architecture": arch, "seed": 0},
                           "_meta": {"title": f"Tiny {arch} (random weights, --tiny)"}}

    def target(link):
        """Where a link to a loader or pass-through node's output now points (None: leave it)."""
        src = prompt.get(link[0]) if link[0] not in tiny_ids.values() else None
        if src is None:
            return None
        kind = src.get("class_type")
        if link[0] in loaders:
            slot = LOADERS[kind].get(link[1])
            return None if slot is None else [tiny_ids[archs[link[0]] or fallback], slot]
        if kind in PASS_THROUGH and link[1] in PASS_THROUGH[kind]:
            upstream = src["inputs"].get(PASS_THROUGH[kind][link[1]])
            return (target(upstream) or upstream) if _is_link(upstream) else None
        return None

    passed = [k for k, v in prompt.items() if v.get("class_type") in PASS_THROUGH]
    for node_id, node in prompt.items():
        for name, value in node.get("inputs", {}).items():
            if _is_link(value):
                new = target(value)
                if new is not None:
                    node["inputs"][name] = new
    for node_id in passed:
        said.append(f"node {node_id} {prompt[node_id]['class_type']} passes its inputs through (no LoRA on tiny "
                    f"random weights)")
        del prompt[node_id]
    for node_id in loaders:
        del prompt[node_id]
    return prompt, said


def _drop_clip_vision(prompt: dict) -> tuple[dict, list[str]]:
    """``prompt`` without its CLIP vision loaders and the encoders they feed, links from them cut."""
    dropped = {k for k, v in prompt.items() if v.get("class_type") in DROPPED}
    dropped |= {k for k, v in prompt.items() if v.get("class_type") in DROPPED_USERS and any(
        _is_link(x) and x[0] in dropped for x in v.get("inputs", {}).values())}
    if not dropped:
        return prompt, []
    for node in prompt.values():
        inputs = node.get("inputs", {})
        for name in [n for n, x in inputs.items() if _is_link(x) and x[0] in dropped]:
            del inputs[name]
    said = [f"node {k} {prompt[k]['class_type']} removed (no tiny CLIP vision model; the inputs it fed are "
            f"optional)" for k in sorted(dropped, key=lambda k: (len(k), k))]
    for node_id in sorted(prompt, key=lambda k: (len(k), k)):
        node = prompt[node_id]
        flag = CLIP_VISION_OPT_OUT.get(node.get("class_type"))
        if flag and node_id not in dropped and node.setdefault("inputs", {}).get(flag) is not True:
            node["inputs"][flag] = True
            said.append(f"node {node_id} {node['class_type']}: {flag} on (a dry run without CLIP vision features)")
    return {k: v for k, v in prompt.items() if k not in dropped}, said


def missing_model_files(prompt: dict, object_info: dict) -> list[str]:
    """One line per model file the workflow names that the server does not have (not in its loader's list)."""
    lines = []
    for node_id, node in sorted(prompt.items(), key=lambda kv: (len(kv[0]), kv[0])):
        info = object_info.get(node.get("class_type"), {})
        specs = {**info.get("input", {}).get("required", {}), **info.get("input", {}).get("optional", {})}
        for name, value in node.get("inputs", {}).items():
            if name not in MODEL_INPUTS or not isinstance(value, str) or name not in specs:
                continue
            spec = specs[name]
            choices = spec[0] if isinstance(spec[0], list) else (spec[1] if len(spec) > 1 and
                                                                  isinstance(spec[1], dict) else {}).get("options")
            if isinstance(choices, list) and value not in choices:
                folder = LOADER_FOLDERS.get(node.get("class_type"), MODEL_INPUTS[name])
                lines.append(f"{value} (node {node_id} {node['class_type']}): put it in ComfyUI's "
                             f"models/{folder}/")
    return lines
