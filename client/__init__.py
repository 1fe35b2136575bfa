"""The ``./editlab`` command: drives ComfyUI over its HTTP API only (it never imports ComfyUI or torch)."""


class ClientError(Exception):
    """A failure the user can act on; the command prints it and exits non-zero."""
