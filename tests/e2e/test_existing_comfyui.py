"""A user's own ComfyUI (COMFYUI_PATH): the client starts it headless with the pack and runs the tour."""
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def test_client_runs_tour_on_comfyui_path(editlab_cli, tmp_path):
    from editlab.client.hostenv import comfyui_path

    own = tmp_path / "MyComfyUI"
    shutil.copytree(comfyui_path(), own, ignore=shutil.ignore_patterns("__pycache__", "output", "temp", "user"))
    done = editlab_cli("run", "workflows/editlab_tour.json", "--tiny", "--out", tmp_path / "out", "-q",
                       env={"COMFYUI_PATH": str(own)}, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    images = [Path(p) for p in done.stdout.split() if p.endswith(".png")]
    assert len(images) >= 2 and all(p.stat().st_size > 0 for p in images)
    assert any("saedit_smiling_fox" in p.name for p in images) and any("tryon_result" in p.name for p in images)
    assert not (own / "output").exists() or not any((own / "output").rglob("*.png")), \
        "outputs go to the run's own folder, never into the user's ComfyUI"


def test_comfyui_path_that_is_not_comfyui(editlab_cli, tmp_path):
    done = editlab_cli("run", "workflows/editlab_tour.json", env={"COMFYUI_PATH": str(tmp_path)})
    assert done.returncode == 2 and "is not a ComfyUI folder" in done.stderr
