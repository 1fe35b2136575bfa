"""Live runs: a full-size random checkpoint in a headless ComfyUI, one prompt per workflow, its peak memory and time.

Peak: on the CPU the server process's resident high-water mark (VmHWM; /proc/PID/clear_refs resets it to the current
resident size before each prompt); on a GPU the device memory nvidia-smi reports for the server process, sampled every
0.1 s (the caching allocator's reserved bytes). "extra" is the peak above what the process held when the prompt was
queued (the loaded model included there), "ratio" the peak over the plain sampling prompt's peak.
Time: the prompt's wall time divided by its steps (sampling steps; training steps for the trainers), text encoding
and, for the trainers, encoding their one training image included.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import checkpoints
from benchlib import ROOT

PROMPT = "a photo of sks person wearing a zwx shirt, smiling"
FACE = ROOT / "workflows" / "input" / "editlab_photo.png"
SIZES = {"sd15": 512, "sdxl": 1024}  # the authors' resolutions
# cross-attention output widths in the adapter's order (down blocks, up blocks, mid block)
CROSS_WIDTHS = {"sd15": [320, 320, 640, 640, 1280, 1280] + [1280] * 3 + [640] * 3 + [320] * 3 + [1280],
                "sdxl": [640] * 4 + [1280] * 20 + [1280] * 30 + [640] * 6 + [1280] * 10}
CONTEXT = {"sd15": 768, "sdxl": 2048}
TOVA_RANK = {"sd15": 32, "sdxl": 16}  # the authors' ranks


def N(class_type, **inputs):
    return {"class_type": class_type, "inputs": inputs}


class Graphs:
    """The workflows, each with the stock checkpoint loader as node 1."""

    def __init__(self, family: str, steps: int, info: dict):
        self.family, self.steps, self.info = family, steps, info
        self.size = SIZES[family]
        self.seed = 1  # the first (loading) prompt runs with another seed: the host would serve a repeat from cache

    def out(self, node: str, kind: str) -> int:
        return self.info[node]["output"].index(kind)

    def filled(self, graph: dict) -> dict:
        """Required inputs a workflow leaves out take the node's own default (hosts differ in their extras)."""
        for node in graph.values():
            spec = self.info[node["class_type"]]["input"].get("required", {})
            for name, desc in spec.items():
                if name not in node["inputs"] and len(desc) > 1 and isinstance(desc[1], dict) \
                        and "default" in desc[1]:
                    node["inputs"][name] = desc[1]["default"]
        return graph

    def base(self) -> dict:
        return {"1": N("CheckpointLoaderSimple", ckpt_name="real_size_random.safetensors"),
                "5": N("CLIPTextEncode", text=PROMPT, clip=["1", 1]), "6": N("CLIPTextEncode", text="", clip=["1", 1]),
                "7": N("EmptyLatentImage", width=self.size, height=self.size, batch_size=1)}

    def sample(self, g: dict, model=("1", 0), positive=("5", 0)) -> dict:
        g["11"] = N("KSampler", model=list(model), seed=self.seed, steps=self.steps, cfg=7.5, sampler_name="euler",
                    scheduler="normal", positive=list(positive), negative=["6", 0], latent_image=["7", 0],
                    denoise=1.0)
        g["99"] = N("PreviewAny", source=["11", 0])
        return g

    def plain(self):
        return self.sample(self.base())

    def slider(self):
        g = self.base()
        g["20"] = N("EditLabSAELoader", sae_name="real_size_sae.safetensors")
        g["21"] = N("EditLabSAEDirection", clip=["1", 1], sae=["20", 0], pairs="a person | a smiling person",
                    pairs_file="", part="clip", method="svd", percentile=99.5, name="")
        g["22"] = N("EditLabSAESlider", conditioning=["5", 0], clip=["1", 1], sae=["20", 0],
                    direction=["21", self.out("EditLabSAEDirection", "EDITLAB_SAE_DIRECTION")], prompt=PROMPT,
                    word="person", strength=0.5, schedule="exponential", part="clip")
        return self.sample(g, positive=("22", self.out("EditLabSAESlider", "CONDITIONING")))

    def tova_apply(self):
        g = self.base()
        g["20"] = N("EditLabToVALoader", adapter_name="real_size_tova_random.safetensors")
        g["21"] = N("EditLabToVAApply", model=["1", 0], clip=["1", 1], prompt=PROMPT, strength=1.0,
                    adapter_1=["20", 0])
        return self.sample(g, model=("21", self.out("EditLabToVAApply", "MODEL")))

    def expression(self):
        g = self.base()
        g["20"] = N("EditLabExpressionAdapterLoader", adapter_name="real_size_expression.safetensors")
        g["21"] = N("EditLabBlendshapeEdit", preset="smile", values="{}", symmetric=True, intensity=1.0)
        g["22"] = N("EditLabApplyExpression", model=["1", 0], adapter=["20", 0], blendshapes=["21", 0], strength=1.0,
                    start_percent=0.0, end_percent=1.0)
        return self.sample(g, model=("22", self.out("EditLabApplyExpression", "MODEL")))

    def reference_adapter(self):
        g = self.base()
        g["20"] = N("LoadImage", image="real_size_face.png")
        g["21"] = N("EditLabReferenceAdapter", model=["1", 0], vae=["1", 2], reference=["20", 0], strength=0.8)
        return self.sample(g, model=("21", self.out("EditLabReferenceAdapter", "MODEL")))

    def attention_maps(self):
        g = self.base()
        g["11"] = N("EditLabAttentionMaps", model=["1", 0], clip=["1", 1], positive=["5", 0], negative=["6", 0],
                    latent_image=["7", 0], prompt=PROMPT, words="person, shirt", seed=1, steps=self.steps, cfg=7.5,
                    sampler_name="euler", scheduler="normal", start_step=0, end_step=self.steps)
        g["99"] = N("PreviewAny", source=["11", 0])
        return g

    def loda(self):
        g = self.base()
        g["8"] = N("KSamplerSelect", sampler_name="euler")
        g["9"] = N("EditLabLODA", prompt=PROMPT, concepts="person, shirt", loda_steps=1, step_size=20.0,
                   threshold=3.0, afg_strength=2.0, map_layers="authors", sampler=["8", 0], clip=["1", 1])
        g["10"] = N("BasicScheduler", model=["1", 0], scheduler="normal", steps=self.steps, denoise=1.0)
        g["11"] = N("SamplerCustom", add_noise=True, noise_seed=1, cfg=7.5, model=["1", 0], positive=["5", 0],
                    negative=["6", 0], sampler=["9", 0], sigmas=["10", 0], latent_image=["7", 0])
        g["99"] = N("PreviewAny", source=["11", 0])
        return g

    def _train(self, node: str, **inputs):
        g = {"1": self.base()["1"]}
        g["11"] = N(node, model=["1", 0], clip=["1", 1], vae=["1", 2], folder="real_size_faces",
                    resolution=self.size, steps=self.steps, batch_size=1, seed=0, overwrite=True, **inputs)
        g["99"] = N("PreviewAny", source=["11", 0])
        return g

    def tova_train(self):
        return self._train("EditLabToVATrain", prompt="a photo of sks person", word="sks",
                           rank=TOVA_RANK[self.family], lr=5e-4, name="real_size_sks")

    def expression_train(self):
        return self._train("EditLabTrainExpressionAdapter", prompt="a photo of a face", lr=1e-4, num_tokens=4,
                           name="real_size_expression_trained")

    def reference_lora_train(self):
        g = self._train("EditLabTrainReferenceLoRA", prompt="a photo of a face", lr=1e-4, rank=8,
                        name="real_size_reference", adapter=["20", 0])
        g["20"] = N("EditLabExpressionAdapterLoader", adapter_name="real_size_expression.safetensors")
        return g

    def host_train_lora_no_checkpointing(self):
        g = self.host_train_lora()
        g["11"]["inputs"]["gradient_checkpointing"] = False
        return g

    def host_train_lora(self):
        g = {"1": self.base()["1"], "5": self.base()["5"]}
        g["20"] = N("LoadImage", image="real_size_face.png")
        g["21"] = N("ImageScale", image=["20", 0], upscale_method="bilinear", width=self.size, height=self.size,
                    crop="center")
        # two copies of the image, rebatched to a list of two latents: given one latent (a tensor), 0.3.75's node
        # fails before training (UnboundLocalError: multi_res); a list takes the path that sets it, on both hosts
        g["23"] = N("RepeatImageBatch", image=["21", 0], amount=2)
        g["22"] = N("VAEEncode", pixels=["23", 0], vae=["1", 2])
        g["24"] = N("RebatchLatents", latents=["22", 0], batch_size=1)
        g["11"] = N("TrainLoraNode", model=["1", 0], latents=["24", 0], positive=["5", 0], batch_size=1,
                    grad_accumulation_steps=1, steps=self.steps, learning_rate=5e-4, rank=8, optimizer="AdamW",
                    loss_function="MSE", seed=0, training_dtype="fp32", lora_dtype="fp32",
                    gradient_checkpointing=True, existing_lora="[None]")
        g["99"] = N("PreviewAny", source=["11", 2])
        return g


# (key, label, what it is compared with, kind)
WORKFLOWS = [
    ("plain", "host KSampler (plain sampling)", "-", "sample"),
    ("slider", "SAE Slider conditioning", "plain", "sample"),
    ("tova_apply", "ToVA Apply", "plain", "sample"),
    ("expression", "Apply Expression (adapter)", "plain", "sample"),
    ("reference_adapter", "Reference Adapter", "plain", "sample"),
    ("attention_maps", "Attention Maps (its own sampler)", "plain", "sample"),
    ("loda", "LODA (1 LODA step per sampling step) + AFG", "plain", "sample"),
    ("host_train_lora_no_checkpointing", "host TrainLoraNode (rank 8, fp32, gradient checkpointing off)", "plain",
     "train"),
    ("host_train_lora", "host TrainLoraNode (rank 8, fp32, its default checkpointing)", "plain", "train"),
    ("tova_train", "ToVA Train (its default gradient checkpointing)", "plain", "train"),
    ("expression_train", "Train Expression Adapter (its default gradient checkpointing)", "plain",
     "train"),
    ("reference_lora_train", "Train Reference LoRA (its default gradient checkpointing)", "plain",
     "train"),
]
# the inference patches first (their <= 1.10x target; a run cut short has them; a trainer leaves the process holding
# ~1.2-1.5 GB more, which would count in a later row's peak); the host's TrainLoraNode last: on 0.3.75 it can fail
# after patching gradient checkpointing onto the shared model's blocks, which then breaks every later trainer
ORDER = ["plain", "slider", "tova_apply", "expression", "reference_adapter", "attention_maps", "loda", "tova_train",
         "expression_train", "reference_lora_train", "host_train_lora_no_checkpointing", "host_train_lora"]


def _status(pid: int) -> dict:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1]) * 1024
    return out


class GpuPeak:
    """Device memory nvidia-smi reports for one process, sampled every 0.1 s while a prompt runs."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0, threading.Event()

    def read(self) -> int:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True).stdout
        return sum(int(m) * 2**20 for p, m in (line.split(",") for line in out.splitlines() if "," in line)
                   if int(p) == self.pid)

    def __enter__(self):
        self.before = self.peak = self.read()

        def loop():
            while not self._stop.wait(0.1):
                self.peak = max(self.peak, self.read())
        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.read())


def _measure(srv, graph: dict, cuda: bool) -> tuple[int, int, float]:
    """(peak bytes, bytes held when queued, wall seconds) of one prompt."""
    pid = srv.proc.pid
    if cuda:
        with GpuPeak(pid) as gp:
            t0 = time.monotonic()
            srv.client.wait(srv.client.queue(graph), timeout=3600)
            wall = time.monotonic() - t0
        return gp.peak, gp.before, wall
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    before = _status(pid)["VmRSS"]
    t0 = time.monotonic()
    srv.client.wait(srv.client.queue(graph), timeout=3600)
    wall = time.monotonic() - t0
    return _status(pid)["VmHWM"], before, wall


def _prepare(base: Path, family: str) -> dict:
    import torch
    from safetensors.torch import save_file

    from editlab.models.expression.adapter import random_adapter, save_adapter

    models = base / "models"
    for sub in ("checkpoints", "sae", "expression_adapters", "tova"):
        (models / sub).mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    made = checkpoints.write_checkpoint(family, models / "checkpoints" / "real_size_random.safetensors")
    made["checkpoint_seconds"] = round(time.monotonic() - t0, 1)
    # a ToVA file at the model's real widths and the authors' rank, random (its up matrices too, so it acts): ToVA
    # Apply runs among the inference rows, before any trainer (a trainer's run leaves the process holding more)
    from editlab.models.conceptsplit.tova import ValueLoRA, save_tova

    widths = made.pop("cross_attention")
    tova = ValueLoRA("sks", family, TOVA_RANK[family], next(iter(widths.values()))[0],
                     {n: w[1] for n, w in widths.items()}, seed=0)
    with torch.no_grad():
        for up in tova.up:
            up.normal_(0, 0.02, generator=torch.Generator().manual_seed(1))
    save_tova(tova, models / "tova" / "real_size_tova_random.safetensors")
    # an SAE over CLIP-L's tokens (768 wide, 16x expansion) and an expression adapter at the model's real widths
    d, m = 768, 768 * 16
    gen = torch.Generator().manual_seed(0)
    sae = {"W_enc": torch.randn(d, m, generator=gen) / d ** 0.5, "W_dec": torch.randn(m, d, generator=gen) / m ** 0.5,
           "b_dec": torch.zeros(d), "b_enc": torch.zeros(m), "threshold": torch.tensor(0.1)}
    save_file(sae, str(models / "sae" / "real_size_sae.safetensors"),
              metadata={"format": "editlab.sae.v1", "encoder": "clip",
                        "config": json.dumps({"act_size": d, "dict_size": m, "top_k": 32})})
    save_adapter(random_adapter(52, CONTEXT[family], CROSS_WIDTHS[family], num_tokens=4),
                 str(models / "expression_adapters" / "real_size_expression.safetensors"), "arkit52")
    return made


def _inputs(inputs: Path) -> None:
    (inputs / "real_size_faces").mkdir(parents=True, exist_ok=True)
    shutil.copy(FACE, inputs / "real_size_face.png")
    shutil.copy(FACE, inputs / "real_size_faces" / "face.png")


def chosen(workflows) -> list[str]:
    """ORDER cut to ``workflows`` (keys), plain always first."""
    if not workflows:
        return list(ORDER)
    want = set(workflows) | {"plain"}
    unknown = sorted(want - set(ORDER))
    if unknown:
        raise ValueError(f"unknown workflows {unknown}; known: {', '.join(ORDER)}")
    return [k for k in ORDER if k in want]


def run_family(family: str, steps: int = 2, cuda: bool = False, workflows=None) -> dict:
    from editlab.client.server import HeadlessServer

    rows, labels = {}, {k: (label, vs, kind) for k, label, vs, kind in WORKFLOWS}
    with tempfile.TemporaryDirectory(prefix="real_size_") as tmp:
        base = Path(tmp)
        made = _prepare(base, family)
        print(f"{family}: checkpoint written ({made})", flush=True)
        (Path(__file__).resolve().parent / "results" / f"{family}_partial_stamp.json").write_text(json.dumps(
            {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "unet_parameters": made["unet_parameters"],
             "steps": steps, "load": [round(x, 1) for x in os.getloadavg()]}))
        with HeadlessServer(cpu=not cuda, base_directory=base) as srv:
            _inputs(srv.workdir / "input")
            graphs = Graphs(family, steps, srv.client.object_info())
            partial = Path(__file__).resolve().parent / "results" / f"{family}_partial.json"
            t0 = time.monotonic()
            graphs.seed = 0
            srv.client.wait(srv.client.queue(graphs.filled(graphs.plain())), timeout=3600)  # loads the checkpoint
            graphs.seed = 1
            load_s = time.monotonic() - t0
            for key in chosen(workflows):
                label, vs, kind = labels[key]
                try:
                    peak, before, wall = _measure(srv, graphs.filled(getattr(graphs, key)()), cuda)
                except Exception as exc:  # one workflow failing is reported, the others still run
                    print(f"  {key}: FAILED {type(exc).__name__}: {str(exc)[:400]}", flush=True)
                    rows[key] = {"key": key, "label": label, "error": f"{type(exc).__name__}: {str(exc)[:400]}"}
                    partial.write_text(json.dumps(rows, indent=1))
                    continue
                rows[key] = {"key": key, "label": label, "vs": vs, "kind": kind, "steps": steps,
                             "peak_mib": round(peak / 2**20), "extra_mib": round((peak - before) / 2**20),
                             "held_mib": round(before / 2**20), "seconds": round(wall, 1),
                             "s_per_step": round(wall / steps, 2)}
                print(f"  {key}: {rows[key]}", flush=True)
                partial.write_text(json.dumps(rows, indent=1))  # a run cut short keeps each row it measured
    return summarise(family, rows, made["unet_parameters"], steps, cuda, load_s)


def summarise(family: str, rows: dict, unet_parameters: int, steps: int, cuda: bool, load_s: float | None,
              cut_short: bool = False) -> dict:
    """The rows in the table's order, each with its ratio to the plain prompt's peak."""
    labels = {k: (label, vs, kind) for k, label, vs, kind in WORKFLOWS}
    made = {"unet_parameters": unet_parameters}
    plain = rows.get("plain", {}).get("peak_mib")
    unet_mib = made["unet_parameters"] * (2 if cuda else 4) / 2**20  # the host's dtype: fp16 on a GPU, fp32 on a CPU
    ordered = []
    for key in [k for k, *_ in WORKFLOWS]:
        r = rows.get(key)
        if not r or "error" in r:
            ordered.append(r or {"key": key, "label": labels[key][0], "error": "not run"})
            continue
        if r.get("earlier_run"):  # kept from an earlier run: its ratio is against that run's own plain prompt
            ordered.append(r)
            continue
        r["ratio_to_plain"] = round(r["peak_mib"] / plain, 3) if plain else None
        r["extra_over_plain_in_unet_weights"] = round((r["peak_mib"] - plain) / unet_mib, 3) if plain else None
        ordered.append(r)
    size = SIZES[family]
    return {"title": f"{family.upper()} at {size}x{size}, full size, random weights, stock CheckpointLoaderSimple",
            "where": "GPU (nvidia-smi, reserved)" if cuda else "CPU (server VmHWM)",
            "note": f"{steps} step(s) per prompt, cfg 7.5, euler; UNet {made['unet_parameters']:,} parameters"
                    + (f"; first load {load_s:.0f} s" if load_s is not None else "")
                    + ("; the run was stopped before every workflow ran" if cut_short else ""),
            "unet_parameters": made["unet_parameters"], "rows": ordered,
            "load": [round(x, 1) for x in os.getloadavg()]}
