"""The in-process real-size harness (bench/real_size/device_run.py) runs its whole path at smoke size on the CPU, so
it cannot rot between the sessions that are lent a GPU: every row of every family runs through the host's own nodes
and samplers, and on the CPU each row has a memory reading split into phases."""
import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import guarded_server_env

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "real_size" / "device_run.py"
ROWS = {"flux": {"plain", "attention_maps", "tova_train", "tova_apply", "layered_train", "host_train_lora"},
        "sdxl": {"plain", "attention_maps", "loda", "tova_train", "tova_apply", "expression_train", "host_train_lora"},
        "sd15": {"plain", "attention_maps", "loda", "tova_train", "tova_apply", "expression_train", "host_train_lora"}}


def test_every_row_runs_at_smoke_size(tmp_path):
    # on the CPU also on a GPU machine: the phases and resident-memory readings are the CPU path's
    env = {**os.environ, **guarded_server_env(tmp_path / "netguard.log"), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-P", str(SCRIPT), "--smoke", "--only", "flux,sdxl,sd15", "--out",
                           str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    data = json.loads((tmp_path / "device_run_smoke.json").read_text())
    assert {f["family"]: {r["key"] for r in f["rows"]} for f in data["families"]} == ROWS
    for fam in data["families"]:
        for row in fam["rows"]:
            assert row["status"] == "ok", row
            assert row["peak_mib"] >= row["base_mib"] > 0 and row["s_per_step"] > 0, row
            assert any(p.startswith("network forward") for p in row["phases_extra_mib"]), row
        trained = {r["key"]: r for r in fam["rows"]}["tova_train"]
        assert {"backward", "network forward (autograd)"} <= set(trained["phases_extra_mib"]), trained
        if fam["family"] != "flux":  # the expression trainer's face analysis is a phase of its own
            faces = {r["key"]: r for r in fam["rows"]}["expression_train"]["phases_extra_mib"]
            assert {"face analysis (MediaPipe)", "backward"} <= set(faces), faces
    assert "| host KSampler (plain sampling) |" in (tmp_path / "device_run_smoke.md").read_text()
