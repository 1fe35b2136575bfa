"""Shared pieces of the node modules: socket types, the error users see, and the category root."""
from __future__ import annotations

CATEGORY = "EditLab"


class EditLabInputError(ValueError):
    """Bad input to an EditLab node. The message names the input and says what was expected.

    Raised from ``execute`` it becomes ComfyUI's execution error for that prompt; the server goes on serving.
    """

    def __init__(self, input_name: str, expected: str, got=None):
        detail = f"; got {got!r}" if got is not None else ""
        super().__init__(f"input '{input_name}': expected {expected}{detail}")
        self.input_name = input_name
