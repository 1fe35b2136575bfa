"""The host (ComfyUI) APIs the node modules use that are not the node schema itself, in one place: when upstream
changes one, this module changes. The node schema (``comfy_api.latest.io``) is imported by each node module.

Used here: ``folder_paths`` (model folders, input directory), ``comfy.model_management`` (compute device, model
loading, interruption), ``comfy.utils.ProgressBar``, ``comfy.model_patcher.ModelPatcher``.
"""
from __future__ import annotations

import os

import folder_paths

MEDIAPIPE_FOLDER = "mediapipe"


def model_folder(name: str, extensions: set[str]) -> str:
    """Register ``models/<name>/`` with the host unless the user's config already names it; return the name."""
    if name not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[name] = ([os.path.join(folder_paths.models_dir, name)], set(extensions))
    return name


def model_dirs(name: str) -> list[str]:
    return folder_paths.get_folder_paths(name)


def mediapipe_dirs() -> list[str]:
    """Where MediaPipe's .task files are looked for first: ComfyUI's models/mediapipe/ (and extra paths)."""
    return model_dirs(model_folder(MEDIAPIPE_FOLDER, {".task"}))
