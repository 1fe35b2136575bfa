"""scripts/train_layered.py on the tiny Flux: one process (both stages lower their loss, the files are LoRAs in
LoraLoader's format, an existing file is refused), and two under torchrun (gloo on the CPU) ending in sync."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "train_layered.py"


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pairs")
    gen = np.random.default_rng(0)
    for i in range(2):
        src = gen.integers(0, 255, (64, 64, 3), dtype=np.uint8)
        mask = np.zeros((64, 64), np.uint8)
        mask[16:48, 16:48] = 255
        tgt = src.copy()
        tgt[mask == 0] = (40 * i, 120, 200)
        Image.fromarray(src).save(folder / f"p{i}_source.png")
        Image.fromarray(tgt).save(folder / f"p{i}_target.png")
        Image.fromarray(mask).save(folder / f"p{i}_mask.png")
        (folder / f"p{i}.txt").write_text("replace the background")
    return folder


def run(cmd, out_dir, pairs, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*cmd, str(SCRIPT), "--pairs", str(pairs), "--tiny", "--out-dir", str(out_dir), "--name",
                           "t", "--resolution", "64", "--rank", "4", "--steps1", "30", "--steps2", "20", "--lr",
                           "1e-2", "--cpu", *extra], capture_output=True, text=True, timeout=600, env=env)


def test_single_process(tmp_path, pairs):
    from safetensors import safe_open

    done = run([sys.executable], tmp_path, pairs)
    assert done.returncode == 0, done.stderr[-3000:]
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    assert stats["stage1"]["loss_after"] < stats["stage1"]["loss_before"]
    assert stats["stage2"]["loss_after"] < stats["stage2"]["loss_before"]
    for stage in ("pattern_shift", "consistency"):
        with safe_open(str(tmp_path / f"t_{stage}.safetensors"), "pt") as f:
            assert f.metadata()["editlab_stage"] == stage
            assert any(k.startswith("diffusion_model.") and k.endswith(".lora_up.weight") for k in f.keys())
    again = run([sys.executable], tmp_path, pairs)
    assert again.returncode != 0 and "exists" in again.stderr + again.stdout


def test_torchrun_two_processes_stay_in_sync(tmp_path, pairs):
    torchrun = Path(sys.executable).with_name("torchrun")
    done = run([str(torchrun), "--nproc_per_node", "2"], tmp_path, pairs)
    assert done.returncode == 0, done.stderr[-3000:]
    sums = dict(re.findall(r"rank (\d) LoRA checksum (\S+)", done.stderr + done.stdout))
    assert set(sums) == {"0", "1"} and sums["0"] == sums["1"], sums
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    assert stats["processes"] == 2 and (tmp_path / "t_consistency.safetensors").exists()
