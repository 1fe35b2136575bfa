"""Installing the pack into a current ComfyUI environment downgrades nothing (numpy 2 included).

pip itself resolves, twice, in dry-run mode against the package registry: the host's requirements with numpy 2 (a
user's environment today), then the same plus the pack's requirements. Every package of the first must keep at least
its version in the second. This reaches the registry (as `make setup` does) and nothing else.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]


def downgrades(before: dict, after: dict) -> list[str]:
    """Packages whose resolved version is lower after adding the pack; a package that disappeared counts too."""
    bad = []
    for name, version in sorted(before.items()):
        if name not in after:
            bad.append(f"{name} {version} -> removed")
        elif Version(after[name]) < Version(version):
            bad.append(f"{name} {version} -> {after[name]}")
    return bad


def test_downgrade_check_can_fail():
    assert downgrades({"numpy": "2.4.6"}, {"numpy": "1.26.4"}) == ["numpy 2.4.6 -> 1.26.4"]
    assert downgrades({"numpy": "2.4.6", "av": "18.1.0"}, {"numpy": "2.4.6"}) == ["av 18.1.0 -> removed"]
    assert downgrades({"numpy": "2.4.6"}, {"numpy": "2.5.0", "mediapipe": "1.2.3"}) == []


def _resolve(tmp_path, name, *requirement_args) -> dict:
    import torch

    report = tmp_path / f"{name}.json"
    torch_pin = f"torch=={torch.__version__.split('+')[0]}"  # the host's torch, as a user has it installed
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
           "--disable-pip-version-check", "--report", str(report), torch_pin, "numpy>=2", *requirement_args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"pip could not resolve {name}:\n{proc.stderr[-3000:]}"
    installs = json.loads(report.read_text())["install"]
    return {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"] for i in installs}


@pytest.mark.registry
def test_pack_requirements_downgrade_nothing_in_a_numpy2_comfyui(tmp_path):
    from editlab.client.hostenv import comfyui_path

    host_reqs = tmp_path / "host-requirements.txt"
    lines = (comfyui_path() / "requirements.txt").read_text().splitlines()
    skip = ("torch", "torchaudio")  # torch is pinned to the installed one; torchaudio is optional for the host
    host_reqs.write_text("\n".join(l for l in lines if l.split("#")[0].strip().lower() not in skip))
    user = _resolve(tmp_path, "host", "-r", str(host_reqs))
    with_pack = _resolve(tmp_path, "host+pack", "-r", str(host_reqs), "-r", str(REPO / "requirements.txt"))
    assert Version(user["numpy"]).major >= 2
    assert not downgrades(user, with_pack), downgrades(user, with_pack)
    assert Version(with_pack["numpy"]).major >= 2 and "mediapipe" in with_pack
