"""The error every EditLab node raises for bad input (imported by ``common`` and ``host`` alike: neither imports
the other for it)."""
from __future__ import annotations

EXCERPT_CHARS = 200  # an error quotes at most this much of a bad value
MAX_EXPECTED_CHARS = 1000  # ... and at most this much of what was expected (messages may carry user text)


def excerpt(value, limit: int = EXCERPT_CHARS) -> str:
    """``repr(value)``, cut to about ``limit`` characters with the full length said."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class EditLabInputError(ValueError):
    """Bad input to an EditLab node. The message names the input and says what was expected.

    Raised from ``execute`` it becomes ComfyUI's execution error for that prompt; the server goes on serving.
    ``got`` is quoted as a short excerpt only.
    """

    def __init__(self, input_name: str, expected: str, got=None):
        expected = str(expected)
        if len(expected) > MAX_EXPECTED_CHARS:
            expected = expected[:MAX_EXPECTED_CHARS] + "..."
        detail = f"; got {excerpt(got)}" if got is not None else ""
        super().__init__(f"input '{input_name}': expected {expected}{detail}")
        self.input_name = input_name
