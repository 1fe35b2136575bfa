"""Files a node reads or writes, in the host's folders: one place for what a hostile path must never get past.

- ``input_file`` / ``input_folder``: real paths, inside ComfyUI's input folder, never followed out by a symlink.
- ``output_file``: a plain file name in a model folder, refused when it exists unless ``overwrite`` says so.
"""
from __future__ import annotations

import os
import re

from . import host
from .errors import EditLabInputError

MAX_TEXT_FILE_BYTES = 64 * 2**20  # prompts_file / pairs_file


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _resolve_input(name: str, input_name: str, what: str, allow_root: bool = False) -> str:
    root = os.path.realpath(host.input_directory())
    name = name.strip()
    path = os.path.realpath(os.path.join(root, name))  # symlinks resolved: a link out of the folder stays out
    if "\x00" in name or not _inside(path, root) or (path == root and not allow_root):
        raise EditLabInputError(input_name, f"{what} inside ComfyUI's input folder (no links or '..' out of it)",
                                name)
    return path


def input_file(name: str, input_name: str) -> str:
    """The real path of a text file in ComfyUI's input folder; nothing outside it, even through a symlink."""
    path = _resolve_input(name, input_name, "a file")
    if not os.path.isfile(path):
        raise EditLabInputError(input_name, "an existing file in ComfyUI's input folder", name)
    if os.path.getsize(path) > MAX_TEXT_FILE_BYTES:
        raise EditLabInputError(input_name, f"a text file of at most {MAX_TEXT_FILE_BYTES >> 20} MB", name)
    return path


def read_text_lines(name: str, input_name: str) -> list[str]:
    """The stripped, non-empty, non-comment lines of a UTF-8 text file in the input folder. Errors never quote the
    file's content."""
    path = input_file(name, input_name)
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except UnicodeDecodeError as exc:
        raise EditLabInputError(input_name, f"a UTF-8 text file (byte {exc.start} is not UTF-8)", name) from None
    except OSError as exc:
        raise EditLabInputError(input_name, f"a readable file ({exc.strerror})", name) from None
    return [l.strip() for l in text.splitlines() if l.strip() and not l.strip().startswith("#")]


def input_folder(name: str, input_name: str) -> str:
    """The real path of a folder inside ComfyUI's input folder (the folder itself with '.' or '')."""
    path = _resolve_input(name or ".", input_name, "a folder", allow_root=True)
    if not os.path.isdir(path):
        raise EditLabInputError(input_name, "a folder inside ComfyUI's input folder", name)
    return path


def inside_input_folder(path: str) -> bool:
    """Whether ``path`` (a file found in an input folder) really lies inside ComfyUI's input folder."""
    return _inside(os.path.realpath(path), os.path.realpath(host.input_directory()))


_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")


def checked_file_name(name: str, input_name: str, extension: str = ".safetensors") -> str:
    """A plain file name (no folders, nothing that escapes the model folder), with its extension."""
    if not isinstance(name, str) or not _FILE_NAME.match(name):
        raise EditLabInputError(input_name, "a file name of letters, digits, '_', '-' or '.' (no folders)", name)
    return name if name.endswith(extension) else name + extension


def output_file(folder: str, name: str, input_name: str, overwrite: bool = False,
                extension: str = ".safetensors") -> str:
    """Where a saving node writes NAME in the model folder ``folder`` (a folder_paths key). An existing file is
    refused unless ``overwrite`` is on: checked here, before the work, and again by the atomic write."""
    path = os.path.join(host.model_dirs(folder)[0], checked_file_name(name, input_name, extension))
    if not overwrite and os.path.lexists(path):
        raise EditLabInputError(input_name, f"a name not used yet in models/{folder}/ (or turn on overwrite)", name)
    return path


def saved(write, path: str, input_name: str, overwrite: bool):
    """Run ``write(path, overwrite)`` (an atomic writer), turning a name taken meanwhile into the input's error."""
    try:
        return write(path, overwrite)
    except FileExistsError:
        raise EditLabInputError(input_name, "a name not used yet (or turn on overwrite)",
                                os.path.basename(path)) from None
