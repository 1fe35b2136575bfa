"""`./editlab serve` / `run` never leave a ComfyUI behind: SIGINT, SIGTERM and SIGHUP to the client stop its server,
also when SIGINT was ignored at start (a shell's background job), and a client killed outright takes its server with
it (Linux: the child is started with a parent-death signal)."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def _start_serve(tmp_path, port: int, ignore_sigint: bool = False) -> subprocess.Popen:
    from editlab.client.server import free_port  # noqa: F401 - the same helper the client uses

    def pre():
        if ignore_sigint:  # as a non-interactive shell starts a background job (`editlab serve &`)
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    env = {**os.environ, "EDITLAB_BASE_DIRECTORY": str(tmp_path / "base")}
    return subprocess.Popen([str(REPO / "editlab"), "serve", "--cpu", "--port", str(port), "--workdir",
                             str(tmp_path / "serve")], cwd=str(REPO), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, preexec_fn=pre)


def _server_child(client: subprocess.Popen) -> int:
    """The ComfyUI process the client started (the launcher execs Python, which starts main.py)."""
    def find():
        for kid in _children(client.pid):
            try:
                if "main.py" in Path(f"/proc/{kid}/cmdline").read_text():
                    return kid
            except OSError:
                pass
        return None

    return _wait(find, 60, "the client to start ComfyUI")


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads the process tree from /proc (Linux)")
@pytest.mark.parametrize("sig,ignore_sigint", [(signal.SIGINT, False), (signal.SIGINT, True), (signal.SIGTERM, False),
                                               (signal.SIGHUP, False), (signal.SIGKILL, False)],
                         ids=["SIGINT", "SIGINT-ignored-at-start", "SIGTERM", "SIGHUP", "SIGKILL"])
def test_a_signal_while_the_server_starts_leaves_no_process(tmp_path, sig, ignore_sigint):
    from editlab.client.server import free_port

    client = _start_serve(tmp_path, free_port(), ignore_sigint)
    try:
        child = _server_child(client)
        os.kill(client.pid, sig)
        client.wait(timeout=60)
        _wait(lambda: not _alive(child), 30, f"ComfyUI (pid {child}) to stop after the client got {sig.name}")
        if sig != signal.SIGKILL:
            assert client.returncode == 128 + sig, client.stdout.read()
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads the process tree from /proc (Linux)")
def test_sigterm_to_a_serving_client_stops_the_server_and_frees_its_port(tmp_path):
    from editlab.client.api import ComfyClient
    from editlab.client.server import free_port

    port = free_port()
    client = _start_serve(tmp_path, port)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(client.stdout), daemon=True)
    reader.start()
    try:
        child = _server_child(client)
        _wait(lambda: any("ComfyUI with EditLab at" in line for line in lines) or client.poll() is not None, 300,
              "the client to say it serves")
        assert client.poll() is None, "".join(lines)
        api = ComfyClient(f"http://127.0.0.1:{port}")
        assert api.ping(timeout=5.0)
        os.kill(client.pid, signal.SIGTERM)
        client.wait(timeout=60)
        reader.join(timeout=10)
        out = "".join(lines)
        assert "stopped; outputs are in" in out, out
        assert not _alive(child)
        assert not api.ping(timeout=2.0)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
