"""``editlab doctor``: what host, torch, optional dependencies and real model files this machine has."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from . import ClientError
from .hostenv import comfyui_path, extra_model_paths_yaml, host_python

REQUIRED = ("torch", "safetensors", "einops", "transformers")


def report() -> tuple[str, bool]:
    lines, ok = [], True
    try:
        comfy = comfyui_path()
    except ClientError as exc:
        return f"host: {exc}", False
    version = "unknown"
    vfile = comfy / "comfyui_version.py"
    if vfile.is_file():
        for line in vfile.read_text().splitlines():
            if line.startswith("__version__"):
                version = line.split("=", 1)[1].strip().strip("\"'")
    lines.append(f"host: ComfyUI {version} at {comfy}")
    try:
        lines.append(f"pack wiring: {extra_model_paths_yaml()}")
    except ClientError as exc:
        lines.append(f"pack wiring: {exc}")
        ok = False
    py = host_python()
    probe = Path(__file__).with_name("doctor_probe.py")
    try:
        done = subprocess.run([py, str(probe), str(comfy)], capture_output=True, text=True, timeout=300)
        data = json.loads(done.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError) as exc:
        return "\n".join(lines + [f"host python {py}: could not be probed ({exc})"]), False
    lines.append(f"host python: {py} (Python {data['python']})")
    lines.append(f"device: {data.get('device', 'cpu')} (CUDA {'yes' if data.get('cuda') else 'no'})")
    lines.append("packages:")
    for name, version in data["packages"].items():
        lines.append(f"  {name:<18} {version}")
        if name in REQUIRED and str(version).startswith("MISSING"):
            ok = False
    lines.append("real model files shipped in packages:")
    for label, path in data["model_files"].items():
        lines.append(f"  {label}: {path or 'not found'}")
    lines.append("real weights in ComfyUI's model folders:")
    if data["comfy_models"]:
        for folder, files in data["comfy_models"].items():
            lines.append(f"  {folder}: {', '.join(files)}")
    else:
        lines.append("  none found: workflows run on EditLabTinyModels (random weights, meaningless images)")
    return "\n".join(lines), ok
