"""Facts about the pack the tests share (tests/ is on sys.path: ``from packinfo import ...``)."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def pack_node_modules() -> tuple:
    """The pack's node modules, as the root ``__init__.py`` lists them for ComfyUI (read, not imported): the one list
    every per-node test walks, so a new method's nodes join them by being registered."""
    tree = ast.parse((REPO / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "NODE_MODULES" for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    raise AssertionError("__init__.py lists no NODE_MODULES")
