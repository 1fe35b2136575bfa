"""Fixtures shared by the three tiers.

- unit/: plain torch and plain Python; never imports ComfyUI.
- nodes/: imports ComfyUI in-process (the ``comfy_host`` fixture) and calls nodes' ``execute``.
- e2e/: one real ``main.py`` server per session (the ``server`` fixture), driven over HTTP.
- browser/: the front end with the pack's web extension, in headless Chromium (skipped where Chromium is missing).

The repo is imported as the package ``editlab`` (as ComfyUI imports it), without putting the repo root on sys.path.
"""
from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if "editlab" not in sys.modules:
    _pkg = types.ModuleType("editlab")
    _pkg.__path__ = [str(REPO)]  # submodules import; the root __init__ (ComfyUI registration) does not run
    sys.modules["editlab"] = _pkg


def comfyui_dir() -> Path:
    from editlab.client.hostenv import comfyui_path

    return comfyui_path()


@pytest.fixture(scope="session")
def comfy_host():
    """ComfyUI importable in this process, on the CPU, with its argument parser left at defaults."""
    path = str(comfyui_dir())
    if path not in sys.path:
        sys.path.insert(0, path)
    from comfy.cli_args import args

    args.cpu = True
    import comfy.model_management  # noqa: F401 - reads args at import: after args.cpu is set

    return Path(path)


@pytest.fixture(scope="session")
def server():
    """A headless ComfyUI with the pack, started once for the whole session on a free loopback port."""
    from editlab.client.server import HeadlessServer

    srv = HeadlessServer(cpu=True)
    srv.start()
    yield srv
    srv.__exit__(None, None, None)


@pytest.fixture(scope="session")
def workflow_inputs(server):
    """The images the shipped workflows load (workflows/input/), uploaded to the session's server."""
    files = sorted((REPO / "workflows" / "input").glob("*"))
    for path in files:
        server.client.upload(path)
    return files


@pytest.fixture(scope="session")
def object_info(server, workflow_inputs):
    return server.client.object_info(refresh=True)


@pytest.fixture(scope="session")
def editlab_cli():
    """Run ./editlab as a user would: ``editlab_cli("run", path, ...)`` returns the CompletedProcess."""
    import subprocess

    def run(*args, timeout=600, env=None):
        return subprocess.run([str(REPO / "editlab"), *map(str, args)], capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, **(env or {})}, cwd=str(REPO))

    return run
