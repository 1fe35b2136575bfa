"""Contracts on the project's files: layering, packaging, the README's commands, CI, node ids."""
import ast
import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            for a in n.names:
                yield 0, a.name
        elif isinstance(n, ast.ImportFrom):
            yield n.level, n.module or ""


def test_models_never_import_nodes_and_only_tiny_imports_comfy():
    for path in (REPO / "models").rglob("*.py"):
        tiny = "tiny" in path.relative_to(REPO / "models").parts
        for level, name in _imports(path):
            assert not (level >= 2 and name.startswith("nodes")), f"{path}: models/ must not import nodes/"
            if not tiny:
                assert not name.split(".")[0] in ("comfy", "comfy_api", "comfy_extras", "folder_paths", "nodes"), \
                    f"{path}: models/ is plain torch, testable without ComfyUI; it imports {name}"


def test_client_talks_http_only():
    for path in (REPO / "client").rglob("*.py"):
        if path.name == "doctor_probe.py":  # runs inside the host's interpreter, on purpose
            continue
        for _, name in _imports(path):
            assert name.split(".")[0] not in ("comfy", "comfy_api", "torch", "nodes", "folder_paths"), \
                f"{path} imports {name}"


def test_pyproject_and_requirements():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert meta["project"]["name"] == "editlab"
    assert re.fullmatch(r"\d+\.\d+\.\d+", meta["project"]["version"])
    assert meta["project"]["license"]
    comfy = meta["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"]
    assert comfy["requires-comfyui"].startswith(">=0.3.75")
    reqs = [l.split("#")[0].strip() for l in (REPO / "requirements.txt").read_text().splitlines()]
    assert not any(re.match(r"torch\b|torchvision\b", r) for r in reqs), "the host owns torch"
    ignored = (REPO / ".comfyignore").read_text().split()
    assert "tests/" in ignored


def test_registration_is_entrypoint_only():
    init = (REPO / "__init__.py").read_text()
    assert "def comfy_entrypoint" in init
    assert "NODE_CLASS_MAPPINGS" not in re.sub(r'""".*?"""', "", init, flags=re.S)


def test_readme_first_two_commands_and_ci():
    readme = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    commands = [l.split("#")[0].strip() for l in block.splitlines() if l.strip()]
    assert commands[:2] == ["make demo", "make test"]
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M)


def test_node_ids_are_editlab_prefixed_and_unique():
    ids = []
    for path in (REPO / "nodes").glob("*.py"):
        ids += re.findall(r'node_id\s*=\s*"([^"]+)"', path.read_text())
    assert ids and all(i.startswith("EditLab") for i in ids)
    assert len(ids) == len(set(ids))


HOST_MODULES = ("comfy", "folder_paths", "node_helpers", "comfy_extras", "nodes", "server", "execution",
                "latent_preview")


def test_host_apis_live_in_one_module_and_the_readme_lists_them():
    """Besides the node schema (comfy_api), only nodes/host.py (and the tiny-model builders, which build the host's
    own classes) import the host; the README's "host APIs" line names every host module host.py imports."""
    used = set()
    for path in list((REPO / "nodes").glob("*.py")) + [REPO / "__init__.py"] + list((REPO / "models").rglob("*.py")):
        for level, name in _imports(path):
            top = name.split(".")[0]
            if level != 0 or top not in HOST_MODULES:
                continue
            if path.name == "host.py":
                used.add(name)
            elif "tiny" not in path.relative_to(REPO).parts:
                raise AssertionError(f"{path.relative_to(REPO)} imports the host's {name}: go through nodes/host.py")
    paragraphs = (REPO / "README.md").read_text().split("\n\n")
    line = next((p for p in paragraphs if p.lower().startswith("host apis")), "")
    assert line, "the README needs a 'Host APIs ...' paragraph"
    for name in sorted(used):
        assert f"`{name}" in line, f"the README's host APIs line does not name {name}"
