"""./editlab serve keeps its folders: outputs survive a stop, the example inputs are there, a dead ComfyUI is said."""
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from editlab.client.api import ComfyClient
from editlab.client.server import free_port

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def _serve(workdir, port):
    proc = subprocess.Popen([str(REPO / "editlab"), "serve", "--cpu", "--port", str(port), "--workdir", str(workdir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(REPO))
    banner = proc.stdout.readline()  # printed once ComfyUI answers /object_info
    assert f"127.0.0.1:{port}" in banner, (banner, proc.stderr.read() if proc.poll() is not None else "")
    return proc, banner + proc.stdout.readline()


def test_serve_keeps_outputs_and_inputs_after_it_stops(editlab_cli, tmp_path):
    workdir, port = tmp_path / "serve", free_port()
    proc, banner = _serve(workdir, port)
    try:
        assert str(workdir) in banner
        assert {p.name for p in (REPO / "workflows" / "input").iterdir()} <= \
            {p.name for p in (workdir / "input").iterdir()}, "the example inputs are in place"
        done = editlab_cli("run", REPO / "tests" / "e2e" / "data" / "tiny_flux_t2i.json", "--server",
                           f"http://127.0.0.1:{port}", "--out", tmp_path / "dl", "-q")
        assert done.returncode == 0, done.stderr
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    saved = list((workdir / "output").rglob("*.png"))
    assert saved, "the output is still there after the server stopped"
    assert (workdir / "server.log").stat().st_size > 0

    # Started again on the same folder: nothing was deleted; if ComfyUI dies, serve exits non-zero and says where
    # the log is.
    port = free_port()
    proc, banner = _serve(workdir, port)
    try:
        assert set(saved) <= set((workdir / "output").rglob("*.png"))
        pid = int(re.search(r"pid (\d+)", banner).group(1))
        os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1
    assert f"its log is kept at {workdir / 'server.log'}" in err
    assert set(saved) <= set((workdir / "output").rglob("*.png"))
    assert not ComfyClient(f"http://127.0.0.1:{port}").ping(timeout=2)


def test_install_inputs_copies_the_examples_and_keeps_existing_files(editlab_cli, tmp_path):
    comfy = tmp_path / "ComfyUI"
    (comfy / "input").mkdir(parents=True)
    (comfy / "main.py").write_text("")
    (comfy / "input" / "editlab_photo.png").write_bytes(b"mine")
    done = editlab_cli("install-inputs", "--comfyui", comfy)
    assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in (REPO / "workflows" / "input").iterdir())
    assert sorted(p.name for p in (comfy / "input").iterdir()) == names
    assert (comfy / "input" / "editlab_photo.png").read_bytes() == b"mine", "a user's file is never overwritten"
    assert "editlab_photo.png" in done.stderr
