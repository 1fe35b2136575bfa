"""EditLab: ComfyUI nodes for seven 2025 image-editing methods.

Registration goes through ``comfy_entrypoint`` only (no NODE_CLASS_MAPPINGS, which would shadow it). Each method's
node module is imported on its own: any exception while importing it (a missing dependency, a protobuf or ABI
mismatch) removes only that method's nodes and logs one line.
"""
import importlib
import logging

log = logging.getLogger("editlab")

WEB_DIRECTORY = "./web"

# nodes/<module>.py, each exporting NODES: the node classes it defines.
NODE_MODULES = ("tiny", "saedit", "tryon", "expression", "conceptsplit", "chronoedit", "llm", "worldtoimage",
                "layered", "panels")


def load_node_classes():
    classes = []
    for name in NODE_MODULES:
        try:
            module = importlib.import_module(f".nodes.{name}", __name__)
        except Exception as exc:  # noqa: BLE001 - a broken dependency raises more than ImportError
            # (a protobuf or ABI mismatch, a native library that fails to load): only this method's nodes go.
            log.warning("EditLab: the %s nodes are not available (%s: %s)", name, type(exc).__name__, exc)
            continue
        classes.extend(module.NODES)
    return classes


async def comfy_entrypoint():
    from comfy_api.latest import ComfyExtension

    class EditLabExtension(ComfyExtension):
        async def get_node_list(self):
            return load_node_classes()

    return EditLabExtension()
