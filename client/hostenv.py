"""Where the host (ComfyUI) and its Python live, as set up by ``make setup``."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from . import ClientError

REPO = Path(__file__).resolve().parent.parent
HOST_DIR = REPO / ".host"


def comfyui_path() -> Path:
    """COMFYUI_PATH if set, else the copy ``make setup`` extracted (recorded in .host/comfyui_path)."""
    env = os.environ.get("COMFYUI_PATH")
    if env:
        path = Path(env).expanduser().resolve()
    elif (HOST_DIR / "comfyui_path").is_file():
        path = Path((HOST_DIR / "comfyui_path").read_text().strip())
    else:
        raise ClientError("no ComfyUI found: run `make setup`, or set COMFYUI_PATH to an existing ComfyUI folder")
    if not (path / "main.py").is_file():
        raise ClientError(f"COMFYUI_PATH={path} is not a ComfyUI folder (no main.py)")
    return path


def host_python() -> str:
    """The interpreter that runs ComfyUI: EDITLAB_PYTHON, else the set-up venv, else this one."""
    env = os.environ.get("EDITLAB_PYTHON")
    if env:
        return env
    venv = Path(os.environ.get("EDITLAB_VENV", REPO / ".venv")) / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def extra_model_paths_yaml() -> Path:
    """The YAML whose custom_nodes entry makes the host load this pack (written by ``make setup``)."""
    path = HOST_DIR / "extra_model_paths.yaml"
    if not path.is_file():
        raise ClientError("the pack is not wired into a host yet: run `make setup`")
    return path
