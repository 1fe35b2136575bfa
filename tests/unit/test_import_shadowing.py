"""The repo root is never on sys.path while the tests run: its top-level folders (kernels/, models/, nodes/, client/,
web/, ...) would shadow installed packages of the same names. Seen for real: transformers 5 imports Hugging Face's
`kernels` package, and `python -m pytest` from the repo root imported ours instead (ImportError: CUDAProperties)."""
import importlib
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OURS = sorted(p.name for p in REPO.iterdir() if p.is_dir() and (p / "__init__.py").is_file())


def test_the_repo_root_is_not_on_sys_path():
    assert OURS, "the repo's top-level packages"
    assert not [p for p in sys.path if Path(p or ".").resolve() == REPO], sys.path


@pytest.mark.parametrize("name", sorted(set(OURS) | {"kernels", "models", "nodes", "client", "web"}))
def test_an_installed_package_of_the_same_name_is_the_one_imported(name, tmp_path, monkeypatch):
    """A top-level package named like one of our folders, installed in a site directory, is what `import NAME`
    finds from the test process; ours stays reachable only as editlab.NAME."""
    pkg = tmp_path / "site-packages" / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("WHERE = 'installed'\n")
    saved = {k: m for k, m in sys.modules.items() if k == name or k.startswith(name + ".")}
    for k in saved:
        del sys.modules[k]
    monkeypatch.setattr(sys, "path", list(sys.path))
    try:
        # where installed packages are: just before the venv's own site-packages (a repo root ahead of it wins)
        at = next((i for i, p in enumerate(sys.path) if "site-packages" in p), len(sys.path))
        sys.path.insert(at, str(tmp_path / "site-packages"))
        mod = importlib.import_module(name)
        where = Path(mod.__file__).resolve()
        assert not where.is_relative_to(REPO / name), f"`import {name}` found the repo's own folder: {where}"
        # the stand-in, unless the host put its own module of that name first (ComfyUI's nodes.py, once loaded)
        assert getattr(mod, "WHERE", None) == "installed" or (name == "nodes" and where.name == "nodes.py"), where
    finally:
        for k in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[k]
        sys.modules.update(saved)


def test_huggingface_kernels_is_found_as_itself_when_installed():
    """Where transformers brought Hugging Face's `kernels` into the venv, this process finds that one."""
    import importlib.util

    spec = importlib.util.find_spec("kernels")
    if spec is None:
        pytest.skip("Hugging Face's kernels package is not installed here")
    assert not Path(spec.origin).resolve().is_relative_to(REPO / "kernels"), spec.origin
