"""A headless ComfyUI server on a free loopback port with the pack loaded, for one run or a test session."""
from __future__ import annotations

import logging
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import ClientError
from .api import ComfyClient
from .hostenv import REPO, comfyui_path, extra_model_paths_yaml, host_python

log = logging.getLogger("editlab.server")
EXAMPLE_INPUTS = REPO / "workflows" / "input"  # the images the shipped workflows load


def copy_example_inputs(input_dir: Path) -> list[Path]:
    """Copy the shipped workflows' example images into a ComfyUI input folder; a file already there is kept."""
    input_dir.mkdir(parents=True, exist_ok=True)
    copied = []
    for src in sorted(EXAMPLE_INPUTS.glob("*")):
        dst = input_dir / src.name
        if src.is_file() and not dst.exists():
            shutil.copy2(src, dst)
            copied.append(dst)
    return copied


def _die_with_parent() -> None:
    """In the child, before ComfyUI starts (Linux): the kernel sends it SIGTERM when the process that started it
    dies, whatever killed that one (SIGKILL included). Elsewhere the client's signal handlers stop it."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(port: int, workdir: Path, cpu: bool | None = None, base_directory: Path | None = None) -> list[str]:
    if cpu is None:
        cpu = os.environ.get("EDITLAB_CPU", "") == "1" or shutil.which("nvidia-smi") is None
    cmd = [host_python(), "main.py", "--listen", "127.0.0.1", "--port", str(port),
           "--extra-model-paths-config", str(extra_model_paths_yaml()),
           "--output-directory", str(workdir / "output"), "--temp-directory", str(workdir),  # ComfyUI clears workdir/temp
           "--input-directory", str(workdir / "input"), "--user-directory", str(workdir / "user"),
           # An in-memory database: a run never writes into the user's ComfyUI folder.
           "--database-url", "sqlite:///:memory:", "--disable-auto-launch", "--preview-method", "none"]
    if base_directory is not None:
        # models/ (and what the host would write next to its own tree) under another folder: the test suite's
        # servers never write into the host's tree.
        cmd += ["--base-directory", str(base_directory)]
    if cpu:
        cmd.append("--cpu")
    if host_knows_flag("--cache-classic"):
        # Newer hosts default to a RAM-pressure cache; the classic one keeps cache behaviour the same everywhere.
        cmd.append("--cache-classic")
    return cmd


def host_knows_flag(flag: str) -> bool:
    """Whether the host's argument parser (comfy/cli_args.py) defines ``flag``, read as text: the client never
    imports ComfyUI."""
    try:
        text = (comfyui_path() / "comfy" / "cli_args.py").read_text(errors="replace")
    except OSError:
        return False
    return f'"{flag}"' in text or f"'{flag}'" in text


class HeadlessServer:
    """``with HeadlessServer() as srv: srv.client...`` starts main.py and stops it on exit.

    Its input/, output/, user/ folders and log live in ``workdir``: a given one is kept as it is (nothing in it is
    ever deleted); without one a temporary folder is used and removed on exit. The input folder starts with the
    shipped workflows' example images, so they run as shipped.

    ``base_directory`` (default: the environment's ``EDITLAB_BASE_DIRECTORY``, else none) is passed to the host as
    ``--base-directory``: its models/ folder is then the one the server reads and writes instead of the host's."""

    def __init__(self, port: int | None = None, start_timeout: float = 300.0, cpu: bool | None = None,
                 log_path: Path | None = None, workdir: Path | None = None, base_directory: Path | None = None):
        self.port = port or free_port()
        self.start_timeout = start_timeout
        self.cpu = cpu
        self.proc: subprocess.Popen | None = None
        self.keep = workdir is not None
        self.workdir = Path(workdir).expanduser().resolve() if workdir else \
            Path(tempfile.mkdtemp(prefix="editlab-server-"))
        self.log_path = log_path or (self.workdir / "server.log")
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = ComfyClient(self.url)
        base = base_directory or os.environ.get("EDITLAB_BASE_DIRECTORY") or None
        self.base_directory = Path(base).expanduser().resolve() if base else None

    @property
    def models_dir(self) -> Path:
        """The models/ folder this server reads and writes."""
        return (self.base_directory or comfyui_path()) / "models"

    def start(self) -> "HeadlessServer":
        for sub in ("output", "input", "user"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        copy_example_inputs(self.workdir / "input")
        if self.base_directory is not None:
            for sub in ("models", "custom_nodes"):  # the host scans base/custom_nodes at start and dies without it
                (self.base_directory / sub).mkdir(parents=True, exist_ok=True)
        cmd = server_command(self.port, self.workdir, self.cpu, self.base_directory)
        log.info("starting ComfyUI: %s", " ".join(cmd))
        self._log = open(self.log_path, "ab")
        # main.py imports its own modules from its folder: safe-path mode (the tests run in it) must not reach it
        env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
        self.proc = subprocess.Popen(cmd, cwd=str(comfyui_path()), stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, preexec_fn=_die_with_parent)
        try:
            deadline = time.monotonic() + self.start_timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise ClientError(f"ComfyUI exited with code {self.proc.returncode} while starting; "
                                      f"its log: {self.log_path}\n{self.log_tail()}")
                if self.client.ping(timeout=2.0):
                    # /object_info is what a run needs; it answers only once every node has loaded.
                    self.client.object_info()
                    return self
                time.sleep(0.5)
            raise ClientError(f"ComfyUI did not answer within {self.start_timeout:.0f} s; its log: {self.log_path}")
        except BaseException:  # a time-out, or a signal while it starts: the child never outlives the attempt
            self.stop()
            raise

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
