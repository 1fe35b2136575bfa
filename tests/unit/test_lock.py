"""`make setup` installs what the suite last passed with: every package the lock names is installed at the locked
version (a venv set up without a lock, as `make test-latest` makes, is what this test skips)."""
import os
import sys
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def test_the_venv_holds_the_locked_versions():
    marker = Path(os.environ.get("EDITLAB_VENV", REPO / ".venv")) / ".editlab-lock"
    if Path(sys.prefix).resolve() != marker.parent.resolve():
        pytest.skip(f"the tests run outside the set-up venv ({sys.prefix})")
    assert marker.is_file(), "scripts/setup.sh records which lock it installed with"
    lock = marker.read_text().strip()
    if lock == "none":
        pytest.skip("this venv was set up with the newest versions (make test-latest)")
    pins = {}
    for line in Path(lock).read_text().splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, version = line.split("==", 1)
            pins[_norm(name)] = version.strip()
    assert len(pins) > 50, lock
    installed = {_norm(d.metadata["Name"]): d.version for d in metadata.distributions()}
    off = {n: (v, installed.get(n)) for n, v in pins.items() if installed.get(n) != v}
    assert not off, f"installed versions differ from {lock} (locked, installed): {off}"


def test_the_pack_requirements_stay_lower_bounds():
    """The lock pins our own environment only: requirements.txt and pyproject never pin a user's ComfyUI."""
    import tomllib

    reqs = [l.split("#")[0].strip() for l in (REPO / "requirements.txt").read_text().splitlines()]
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for req in [r for r in reqs if r] + deps:
        assert "==" not in req and "<" not in req, f"a pin in the pack's requirements: {req}"
