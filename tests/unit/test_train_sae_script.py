"""scripts/train_sae.py: one process, and two under torchrun (gloo on the CPU) ending with identical SAEs."""
import re
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from editlab.models.saedit.files import load_sae

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "train_sae.py"


def _tokens(path):
    g = torch.Generator().manual_seed(0)
    atoms = torch.randn(16, 8, generator=g)
    codes = torch.rand(4000, 16, generator=g) * (torch.rand(4000, 16, generator=g) < 0.2)
    save_file({"tokens": codes @ atoms}, str(path))


ARGS = ["--dict-size", "64", "--top-k", "4", "--batch-size", "200", "--epochs", "15", "--lr", "3e-3"]


def test_single_process(tmp_path):
    _tokens(tmp_path / "t.safetensors")
    done = subprocess.run([sys.executable, str(SCRIPT), "--tokens", str(tmp_path / "t.safetensors"), "--out",
                           str(tmp_path / "one.safetensors"), *ARGS], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    sae, info = load_sae(tmp_path / "one.safetensors")
    assert info["stats"]["processes"] == 1 and info["stats"]["fvu"] < 0.5 and sae.config.dict_size == 64


def test_torchrun_two_processes_stay_in_sync(tmp_path):
    _tokens(tmp_path / "t.safetensors")
    torchrun = Path(sys.executable).with_name("torchrun")
    done = subprocess.run([str(torchrun), "--nproc_per_node", "2", str(SCRIPT), "--tokens",
                           str(tmp_path / "t.safetensors"), "--out", str(tmp_path / "ddp.safetensors"), *ARGS],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    sums = dict(re.findall(r"rank (\d) parameter checksum (\S+)", done.stderr + done.stdout))
    assert set(sums) == {"0", "1"} and sums["0"] == sums["1"], sums
    sae, info = load_sae(tmp_path / "ddp.safetensors")
    assert info["stats"]["processes"] == 2 and info["stats"]["fvu"] < 0.5


def test_bad_tokens_file(tmp_path):
    save_file({"other": torch.zeros(3)}, str(tmp_path / "bad.safetensors"))
    done = subprocess.run([sys.executable, str(SCRIPT), "--tokens", str(tmp_path / "bad.safetensors"), "--out",
                           str(tmp_path / "x.safetensors")], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "expected a 2-D 'tokens' tensor" in done.stderr
    assert not (tmp_path / "x.safetensors").exists()
