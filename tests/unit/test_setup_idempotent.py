"""`make setup` a second time does no work: it finds its stamp and says so."""
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_second_setup_does_nothing():
    venv = Path(os.environ.get("EDITLAB_VENV", REPO / ".venv"))
    stamp = venv / ".editlab-stamp"
    assert stamp.is_file(), "the tests run after `make setup`, which writes this stamp"
    before = (stamp.stat().st_mtime_ns, stamp.read_text())
    done = subprocess.run(["bash", str(REPO / "scripts" / "setup.sh")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "up to date" in done.stderr and "installing" not in done.stderr
    assert (stamp.stat().st_mtime_ns, stamp.read_text()) == before


def test_setup_refuses_a_comfyui_path_that_is_not_comfyui(tmp_path):
    done = subprocess.run(["bash", str(REPO / "scripts" / "setup.sh")], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "COMFYUI_PATH": str(tmp_path)})
    assert done.returncode == 2 and "is not a ComfyUI folder" in done.stderr
