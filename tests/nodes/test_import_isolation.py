"""One broken dependency removes only its method's nodes: the pack's real __init__ imports the real node modules
while importing mediapipe raises what a protobuf mismatch raises (a TypeError, not an ImportError)."""
import importlib.abc
import importlib.util
import logging
import sys

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class _BrokenMediapipe(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "mediapipe" or name.startswith("mediapipe."):
            raise TypeError("Descriptors cannot be created directly.")  # protobuf's message on a version mismatch
        return None


def _fresh_pack(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_a_dependency_raising_typeerror_removes_only_its_methods_nodes(comfy_host, caplog, monkeypatch):
    name = "editlab_isolation_probe"
    saved = {k: v for k, v in sys.modules.items() if k == "mediapipe" or k.startswith("mediapipe.")}
    for k in saved:
        monkeypatch.delitem(sys.modules, k)
    finder = _BrokenMediapipe()
    sys.meta_path.insert(0, finder)
    try:
        pack = _fresh_pack(name)
        with caplog.at_level(logging.WARNING, logger="editlab"):
            classes = pack.load_node_classes()
    finally:
        sys.meta_path.remove(finder)
        for k in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[k]
    ids = {c.define_schema().node_id for c in classes}
    assert "EditLabTinyModels" in ids and "EditLabSAESlider" in ids  # the methods that need no mediapipe stay
    assert not any(i.startswith(("EditLabPose", "EditLabTryOn", "EditLabFace")) for i in ids)
    lines = [r.getMessage() for r in caplog.records if r.name == "editlab"]
    assert len([l for l in lines if "tryon" in l]) == 1 and len([l for l in lines if "expression" in l]) == 1
    assert all("TypeError" in l for l in lines), lines
