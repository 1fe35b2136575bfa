"""Workflow files: loading, UI-format to API-format conversion, --set overrides, and checks against /object_info.

The UI format is what the ComfyUI front end saves and the templates browser shows (nodes with widget values and a
link table); /prompt takes the API format (node id -> class_type and inputs). Conversion needs the node
definitions (input order, which inputs are widgets) and so takes the live server's /object_info.
"""
from __future__ import annotations

import json
from pathlib import Path

from . import ClientError

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEED_CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
# Front-end-only nodes: they never reach /prompt.
PASS_THROUGH = {"Reroute"}
VALUE_NODES = {"PrimitiveNode"}
ANNOTATION_NODES = {"Note", "MarkdownNote"}
MODE_MUTED, MODE_BYPASSED = 2, 4


class WorkflowError(ClientError):
    pass


def load_workflow(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise WorkflowError(f"cannot read workflow {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WorkflowError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    if not isinstance(data, dict):
        raise WorkflowError(f"{path} is not a ComfyUI workflow: expected a JSON object, got {type(data).__name__}")
    return data


def is_ui_format(data: dict) -> bool:
    return isinstance(data.get("nodes"), list) and "links" in data


def check_api_shape(prompt: dict) -> None:
    if not prompt:
        raise WorkflowError("the workflow has no nodes")
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or "class_type" not in node or not isinstance(node.get("inputs", {}), dict):
            raise WorkflowError(f"node {node_id}: not an API-format node (expected an object with class_type and "
                                f"inputs); is this a UI-format file missing its 'links'?")


def _input_spec(info: dict, name: str):
    for group in ("required", "optional"):
        spec = info.get("input", {}).get(group, {}).get(name)
        if spec is not None:
            return group, spec
    return None, None


def _spec_type(spec) -> str:
    kind = spec[0]
    return "COMBO" if isinstance(kind, list) else kind


def _spec_options(spec) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def _combo_choices(spec):
    if isinstance(spec[0], list):
        return spec[0]
    return _spec_options(spec).get("options")


def _ordered_inputs(info: dict) -> list[str]:
    order = info.get("input_order")
    if order:
        return list(order.get("required", [])) + list(order.get("optional", []))
    return list(info.get("input", {}).get("required", {})) + list(info.get("input", {}).get("optional", {}))


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """Convert a UI-format workflow to the API format, as the front end's "queue prompt" does."""
    if workflow.get("definitions", {}).get("subgraphs"):
        raise WorkflowError("this workflow uses subgraphs, which the converter does not expand yet; "
                            "export it from ComfyUI with 'Export (API)' instead")
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links = {}
    for link in workflow.get("links", []):
        if isinstance(link, dict):
            link = [link["id"], link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"],
                    link.get("type")]
        links[link[0]] = link

    def input_link(node, slot=None, name=None, type_=None):
        for i, inp in enumerate(node.get("inputs") or []):
            if (slot is not None and i == slot) or (name is not None and inp.get("name") == name) or \
               (type_ is not None and inp.get("type") == type_ and inp.get("link") is not None):
                return inp.get("link")
        return None

    def resolve(link_id, seen=()):
        """Follow a link back to a real node's output: ('link', [id, slot]) or ('value', v) or (None, None)."""
        if link_id is None or link_id not in links:
            return None, None
        _, src_id, src_slot, _, _, link_type = links[link_id]
        src = nodes.get(src_id)
        if src is None or src_id in seen:
            return None, None
        seen = seen + (src_id,)
        mode = src.get("mode", 0)
        if src["type"] in PASS_THROUGH:
            return resolve(input_link(src, slot=0), seen)
        if src["type"] in VALUE_NODES:
            values = src.get("widgets_values") or []
            return ("value", values[0]) if values else (None, None)
        if mode == MODE_MUTED:
            return None, None
        if mode == MODE_BYPASSED:
            out_type = (src.get("outputs") or [{}])[src_slot].get("type", link_type) \
                if src_slot < len(src.get("outputs") or []) else link_type
            return resolve(input_link(src, type_=out_type), seen)
        return "link", [str(src_id), src_slot]

    prompt = {}
    for node_id, node in nodes.items():
        class_type = node.get("type")
        if class_type in PASS_THROUGH or class_type in VALUE_NODES or class_type in ANNOTATION_NODES:
            continue
        if node.get("mode", 0) in (MODE_MUTED, MODE_BYPASSED):
            continue
        info = object_info.get(class_type)
        if info is None:
            raise WorkflowError(f"node {node_id}: unknown node type '{class_type}' (not installed on this server, "
                                f"or a group node / custom node pack that is missing)")
        inputs = {}
        values = node.get("widgets_values")
        if isinstance(values, dict):
            for name in _ordered_inputs(info):
                if name in values:
                    inputs[name] = values[name]
        elif isinstance(values, list):
            queue = list(values)
            for name in _ordered_inputs(info):
                _, spec = _input_spec(info, name)
                if _spec_type(spec) not in WIDGET_TYPES or not queue:
                    continue
                inputs[name] = queue.pop(0)
                opts = _spec_options(spec)
                if _spec_type(spec) == "INT" and (opts.get("control_after_generate") or
                                                  name in ("seed", "noise_seed")):
                    if queue and queue[0] in SEED_CONTROL_VALUES:
                        queue.pop(0)
                if opts.get("image_upload") and queue and queue[0] in ("image", None):
                    queue.pop(0)
        for inp in node.get("inputs") or []:
            kind, value = resolve(inp.get("link"))
            if kind is not None:  # a link, or a primitive node's value; a muted source leaves the input unset
                inputs[inp["name"]] = value
        entry = {"class_type": class_type, "inputs": inputs}
        if node.get("title"):
            entry["_meta"] = {"title": node["title"]}
        prompt[str(node_id)] = entry
    return prompt


def to_api(data: dict, object_info: dict) -> dict:
    prompt = ui_to_api(data, object_info) if is_ui_format(data) else data
    check_api_shape(prompt)
    return prompt


def _coerce(value: str, spec, where: str):
    kind = _spec_type(spec)
    try:
        if kind == "INT":
            return int(value)
        if kind == "FLOAT":
            return float(value)
    except ValueError:
        raise WorkflowError(f"{where}: expected {'an integer' if kind == 'INT' else 'a number'}, got {value!r}") \
            from None
    if kind == "BOOLEAN":
        if value.lower() in ("true", "1", "yes", "on"):
            return True
        if value.lower() in ("false", "0", "no", "off"):
            return False
        raise WorkflowError(f"{where}: expected true or false, got {value!r}")
    if kind == "COMBO":
        choices = _combo_choices(spec) or []
        if choices and value not in choices:
            raise WorkflowError(f"{where}: expected one of {', '.join(map(str, choices[:20]))}, got {value!r}")
        return value
    if kind == "STRING":
        return value
    raise WorkflowError(f"{where}: input of type {kind} comes from a link and cannot be set from the command line")


def apply_overrides(prompt: dict, assignments: list[str], object_info: dict) -> dict:
    """Apply ``NODE.INPUT=VALUE`` assignments (NODE is a node id or a unique title) to a copy of ``prompt``."""
    prompt = json.loads(json.dumps(prompt))
    for item in assignments:
        target, sep, value = item.partition("=")
        node_ref, dot, name = target.rpartition(".")
        if not sep or not dot or not node_ref or not name:
            raise WorkflowError(f"--set {item!r}: expected NODE.INPUT=VALUE, e.g. 12.strength=0.8")
        node_id = node_ref if node_ref in prompt else None
        if node_id is None:
            titled = [k for k, v in prompt.items() if v.get("_meta", {}).get("title") == node_ref]
            if len(titled) > 1:
                raise WorkflowError(f"--set {item!r}: several nodes are titled {node_ref!r}; use a node id")
            node_id = titled[0] if titled else None
        if node_id is None:
            raise WorkflowError(f"--set {item!r}: the workflow has no node {node_ref!r} "
                                f"(node ids: {', '.join(sorted(prompt, key=_id_key))})")
        node = prompt[node_id]
        info = object_info.get(node["class_type"], {})
        _, spec = _input_spec(info, name)
        if spec is None:
            raise WorkflowError(f"--set {item!r}: node {node_id} ({node['class_type']}) has no input {name!r} "
                                f"(inputs: {', '.join(_ordered_inputs(info))})")
        node["inputs"][name] = _coerce(value, spec, f"--set {item!r}")
    return prompt


def _id_key(node_id: str):
    return (0, int(node_id), "") if node_id.isdigit() else (1, 0, node_id)


def _types_match(expected: str, actual: str) -> bool:
    if "*" in (expected, actual):
        return True
    want = {t.strip() for t in expected.split(",")}
    have = {t.strip() for t in actual.split(",")}
    return bool(want & have)


def validate(prompt: dict, object_info: dict) -> list[str]:
    """Problems the server would reject, said plainly: unknown node types, missing inputs, mistyped links."""
    problems = []
    for node_id in sorted(prompt, key=_id_key):
        node = prompt[node_id]
        class_type = node.get("class_type")
        info = object_info.get(class_type)
        if info is None:
            problems.append(f"node {node_id}: unknown node type '{class_type}'")
            continue
        inputs = node.get("inputs", {})
        for name in info.get("input", {}).get("required", {}):
            if name not in inputs:
                problems.append(f"node {node_id} ({class_type}): required input '{name}' is not set")
        for name, value in inputs.items():
            group, spec = _input_spec(info, name)
            if spec is None:
                continue  # the server ignores unknown inputs
            expected = _spec_type(spec)
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                src = prompt.get(value[0])
                if src is None:
                    problems.append(f"node {node_id} ({class_type}): input '{name}' links to node {value[0]}, "
                                    f"which is not in the workflow")
                    continue
                src_info = object_info.get(src.get("class_type"), {})
                outputs = src_info.get("output", [])
                if not isinstance(value[1], int) or not 0 <= value[1] < len(outputs):
                    if src_info:
                        problems.append(f"node {node_id} ({class_type}): input '{name}' links to output "
                                        f"{value[1]} of node {value[0]}, which has {len(outputs)} outputs")
                    continue
                actual = outputs[value[1]]
                actual = "COMBO" if isinstance(actual, list) else actual
                if not _types_match(expected, actual):
                    problems.append(f"node {node_id} ({class_type}): input '{name}' expects {expected} but is "
                                    f"linked to node {value[0]} ({src['class_type']}) output {value[1]} of type "
                                    f"{actual}")
            elif expected == "COMBO":
                choices = _combo_choices(spec)
                if choices and value not in choices:
                    problems.append(f"node {node_id} ({class_type}): input '{name}' is {value!r}, not one of "
                                    f"{', '.join(map(str, choices[:20]))}")
            elif expected in ("INT", "FLOAT") and (isinstance(value, bool) or not isinstance(value, (int, float))):
                problems.append(f"node {node_id} ({class_type}): input '{name}' expects a number, got {value!r}")
    return problems
