"""Shared pieces of the node modules: socket types, the error users see, and the category root."""
from __future__ import annotations

import re

CATEGORY = "EditLab"


class EditLabInputError(ValueError):
    """Bad input to an EditLab node. The message names the input and says what was expected.

    Raised from ``execute`` it becomes ComfyUI's execution error for that prompt; the server goes on serving.
    """

    def __init__(self, input_name: str, expected: str, got=None):
        detail = f"; got {got!r}" if got is not None else ""
        super().__init__(f"input '{input_name}': expected {expected}{detail}")
        self.input_name = input_name


_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")


def checked_file_name(name: str, input_name: str, extension: str = ".safetensors") -> str:
    """A plain file name (no folders, nothing that escapes the model folder), with its extension."""
    if not _FILE_NAME.match(name):
        raise EditLabInputError(input_name, "a file name of letters, digits, '_', '-' or '.' (no folders)", name)
    return name if name.endswith(extension) else name + extension
