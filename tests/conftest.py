"""Fixtures shared by the three tiers.

- unit/: plain torch and plain Python; never imports ComfyUI.
- nodes/: imports ComfyUI in-process (the ``comfy_host`` fixture) and calls nodes' ``execute``.
- e2e/: one real ``main.py`` server per session (the ``server`` fixture), driven over HTTP.
- browser/: the front end with the pack's web extension, in headless Chromium (skipped where Chromium is missing).

The repo is imported as the package ``editlab`` (as ComfyUI imports it), without putting the repo root on sys.path.

Network guard (World-To-Image): no test may dial anything but loopback. ``tests/netguard.py`` patches the socket
connect of this process for the whole session and every test fails if a non-loopback address was dialled during it
(``no_outside_network``); the session's ComfyUI server gets the same guard through ``tests/netguard_site`` on its
PYTHONPATH (a sitecustomize) and ``EDITLAB_NETGUARD=loopback``, which the pack's guarded fetcher honours; its
attempts are logged to a file that the ``server`` fixture checks when the session ends.
"""
from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


def _repo_root_entries(path: list[str]) -> list[str]:
    """The entries of ``path`` that name the repo root ('' means the working directory)."""
    return [p for p in path if Path(p or ".").resolve() == REPO]


# The repo root is a package (ComfyUI imports it as one): on sys.path its kernels/, models/, nodes/, client/ would
# shadow top-level packages of the same names (Hugging Face's `kernels`, which transformers imports; ComfyUI's
# nodes.py). scripts/test.sh runs pytest in safe-path mode; `python -m pytest` from the repo root would put it first,
# so it is taken out here before anything else is imported.
for _entry in _repo_root_entries(sys.path):
    sys.path.remove(_entry)
sys.path.insert(0, str(Path(__file__).resolve().parent))
import netguard  # noqa: E402 - tests/netguard.py, the loopback-only connection guard

netguard.install()
os.environ.setdefault("EDITLAB_NETGUARD", "loopback")
if "editlab" not in sys.modules:
    _pkg = types.ModuleType("editlab")
    _pkg.__path__ = [str(REPO)]  # submodules import; the root __init__ (ComfyUI registration) does not run
    sys.modules["editlab"] = _pkg


def comfyui_dir() -> Path:
    from editlab.client.hostenv import comfyui_path

    return comfyui_path()


@pytest.fixture(scope="session")
def comfy_host(tmp_path_factory):
    """ComfyUI importable in this process, on the CPU, with its argument parser left at defaults. On a GPU machine,
    ``EDITLAB_TEST_DEVICE=cuda`` leaves the host on its own device choice (the GPU): the node tier on CUDA."""
    path = str(comfyui_dir())
    if path not in sys.path:
        sys.path.insert(0, path)
    from comfy.cli_args import args

    args.cpu = os.environ.get("EDITLAB_TEST_DEVICE", "cpu") == "cpu"
    if not args.cpu:  # tests that rerun a computation and expect the same bits need deterministic GPU kernels
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.allow_tf32 = False  # tests compare exact routes in float32: no TF32 convolutions
    import comfy.model_management  # noqa: F401 - reads args at import: after args.cpu is set

    _models_into(tmp_path_factory.mktemp("host_models"))
    return Path(path)


def _models_into(root: Path) -> None:
    """Every model folder the host registered under its own models/ now points under ``root``: node tests that save
    (SAE, ToVA, adapters, LoRAs) write into a temporary folder, never into the host's tree (a user's COMFYUI_PATH)."""
    import folder_paths

    old = os.path.abspath(folder_paths.models_dir)
    for name, (paths, exts) in list(folder_paths.folder_names_and_paths.items()):
        moved = [str(root / os.path.relpath(p, old)) if os.path.abspath(p).startswith(old + os.sep) else p
                 for p in paths]
        folder_paths.folder_names_and_paths[name] = (moved, exts)
    folder_paths.models_dir = str(root)
    cache = getattr(folder_paths, "filename_list_cache", None)
    if isinstance(cache, dict):
        cache.clear()


@pytest.fixture(autouse=True)
def no_outside_network():
    """Fails the test when anything in this process tried to dial a non-loopback address (the guard refused it)."""
    netguard.take()
    yield
    seen = netguard.take()
    if seen:
        pytest.fail("the test tried to open a connection to a non-loopback address:\n" + "\n".join(seen))


# A made-up API key in the test server's environment: tests/e2e/test_worldtoimage_live.py names its variable in an
# LLM node and checks the value reaches the stand-in's Authorization header and nothing else.
PLANTED_KEY_ENV = "EDITLAB_TEST_PLANTED_KEY"
PLANTED_KEY = "sk-editlab-planted-e2e-7f3a9c1d5b"


def guarded_server_env(log_path: Path) -> dict:
    """Environment for a test ComfyUI server: the loopback-only guard (sitecustomize) reporting to ``log_path``, and
    the planted key."""
    site = str(Path(__file__).resolve().parent / "netguard_site")
    old = os.environ.get("PYTHONPATH", "")
    return {"PYTHONPATH": site + (os.pathsep + old if old else ""), "EDITLAB_NETGUARD_LOG": str(log_path),
            "EDITLAB_NETGUARD": "loopback", PLANTED_KEY_ENV: PLANTED_KEY}


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """A headless ComfyUI with the pack, started once for the whole session on a free loopback port, under the
    loopback-only network guard."""
    from editlab.client.server import HeadlessServer

    guard_log = tmp_path_factory.mktemp("netguard") / "server_netguard.log"
    env = guarded_server_env(guard_log)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the server process inherits the environment when it starts
    try:
        # its models/ in a temporary base directory: tests that place model files never touch the host's tree
        srv = HeadlessServer(cpu=True, base_directory=tmp_path_factory.mktemp("server_base"))
        srv.start()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    yield srv
    log_text = Path(srv.log_path).read_text(errors="replace") if Path(srv.log_path).exists() else ""
    srv.__exit__(None, None, None)  # (removes its temporary folder, the log with it)
    if guard_log.exists() and guard_log.read_text().strip():
        pytest.fail("the test server tried to open non-loopback connections:\n" + guard_log.read_text())
    # the host's own leak diagnostic (comfy.model_management.cleanup_models_gc): a module that outlived its model
    # wrapper makes every later model load collect garbage (seen as prompts 10-70x slower after an expression one)
    leaks = sorted({line.strip() for line in log_text.splitlines() if "memory leak with model" in line})
    if leaks:
        pytest.fail("the test server's log reports leaked models (the host then collects garbage at every model "
                    "load):\n" + "\n".join(leaks))


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
def editlab_cli(tmp_path_factory):
    """Run ./editlab as a user would: ``editlab_cli("run", path, ...)`` returns the CompletedProcess. The servers it
    starts keep their models/ in a temporary base directory (workflows that train save there, not into the host)."""
    import subprocess

    base = tmp_path_factory.mktemp("cli_base")

    def run(*args, timeout=600, env=None):
        return subprocess.run([str(REPO / "editlab"), *map(str, args)], capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, "EDITLAB_BASE_DIRECTORY": str(base), **(env or {})},
                              cwd=str(REPO))

    return run


# -- the host's tree is never written by the suite ---------------------------------------------------------------

def host_tree_state() -> dict:
    """relative path -> (size, mtime) of every file in the host's tree, byte-code caches aside."""
    root = comfyui_dir()
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            state[os.path.relpath(path, root)] = (st.st_size, st.st_mtime_ns)
    return state


def pytest_configure(config):
    try:
        config._editlab_host_tree = host_tree_state()
    except Exception:  # no host set up (a unit run on a bare checkout): nothing to compare
        config._editlab_host_tree = None


def pytest_collection_modifyitems(session, config, items):
    """The host-tree check runs after everything else."""
    last = [i for i in items if i.name == "test_the_suite_left_the_host_tree_unchanged"]
    items[:] = [i for i in items if i not in last] + last
