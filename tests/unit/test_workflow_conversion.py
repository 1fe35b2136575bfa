"""UI-format -> API-format conversion, --set overrides and prompt checks, against a small hand-made /object_info."""
import json

import pytest

from editlab.client.workflow import (WorkflowError, apply_overrides, is_ui_format, load_workflow, to_api,
                                     ui_to_api, validate)

OBJECT_INFO = {
    "Loader": {"input": {"required": {"name": [["a.safetensors", "b.safetensors"], {}]}},
               "input_order": {"required": ["name"]}, "output": ["MODEL", "VAE"]},
    "Sampler": {"input": {"required": {"model": ["MODEL", {}],
                                       "seed": ["INT", {"default": 0, "control_after_generate": True}],
                                       "steps": ["INT", {"default": 20}],
                                       "sampler": ["COMBO", {"options": ["euler", "heun"]}]},
                          "optional": {"strength": ["FLOAT", {"default": 1.0}]}},
                "input_order": {"required": ["model", "seed", "steps", "sampler"], "optional": ["strength"]},
                "output": ["LATENT"]},
    "Decode": {"input": {"required": {"samples": ["LATENT", {}], "vae": ["VAE", {}]}}, "output": ["IMAGE"]},
    "Save": {"input": {"required": {"images": ["IMAGE", {}], "prefix": ["STRING", {}]}}, "output": []},
    "LoadImg": {"input": {"required": {"image": [["x.png"], {"image_upload": True}]}}, "output": ["IMAGE"]},
}


def node(nid, type_, widgets=(), inputs=(), outputs=(), mode=0):
    return {"id": nid, "type": type_, "mode": mode, "widgets_values": list(widgets),
            "inputs": [{"name": n, "type": t, "link": l, **({"widget": {"name": n}} if w else {})}
                       for n, t, l, *w in inputs],
            "outputs": [{"name": t, "type": t, "links": []} for t in outputs]}


def graph(extra_nodes=(), sampler_mode=0):
    nodes = [
        node(1, "Loader", ["a.safetensors"], outputs=["MODEL", "VAE"]),
        node(2, "Sampler", [7, "randomize", 4, "heun", 0.5], [("model", "MODEL", 1)], ["LATENT"], mode=sampler_mode),
        node(3, "Decode", [], [("samples", "LATENT", 2), ("vae", "VAE", 4)], ["IMAGE"]),
        node(4, "Save", ["out/x"], [("images", "IMAGE", 3)]),
        node(5, "Reroute", [], [("", "*", 5)], ["VAE"]),
        node(6, "Note", ["just text"]),
        *extra_nodes,
    ]
    links = [[1, 1, 0, 2, 0, "MODEL"], [2, 2, 0, 3, 0, "LATENT"], [3, 3, 0, 4, 0, "IMAGE"],
             [4, 5, 0, 3, 1, "VAE"], [5, 1, 1, 5, 0, "VAE"]]
    return {"nodes": nodes, "links": links, "version": 0.4}


def test_widgets_links_reroutes_and_seed_control():
    api = ui_to_api(graph(), OBJECT_INFO)
    assert set(api) == {"1", "2", "3", "4"}  # Reroute and Note never reach /prompt
    assert api["2"]["inputs"] == {"model": ["1", 0], "seed": 7, "steps": 4, "sampler": "heun", "strength": 0.5}
    assert api["3"]["inputs"] == {"samples": ["2", 0], "vae": ["1", 1]}  # through the reroute
    assert api["4"]["inputs"] == {"images": ["3", 0], "prefix": "out/x"}
    assert validate(api, OBJECT_INFO) == []


def test_bypassed_node_passes_its_matching_input_through():
    wf = graph(sampler_mode=4)
    wf["nodes"][1]["outputs"][0]["type"] = "MODEL"  # a bypassed MODEL->MODEL patch node, say
    api = ui_to_api(wf, OBJECT_INFO)
    assert "2" not in api
    assert api["3"]["inputs"]["samples"] == ["1", 0]


def test_muted_node_leaves_required_input_missing():
    api = ui_to_api(graph(sampler_mode=2), OBJECT_INFO)
    assert "2" not in api and "samples" not in api["3"]["inputs"]
    assert any("required input 'samples' is not set" in p for p in validate(api, OBJECT_INFO))


def test_primitive_node_feeds_a_converted_widget():
    wf = graph([node(7, "PrimitiveNode", [123, "fixed"], outputs=["INT"])])
    wf["nodes"][1]["inputs"].append({"name": "seed", "type": "INT", "link": 6, "widget": {"name": "seed"}})
    wf["links"].append([6, 7, 0, 2, 1, "INT"])
    assert ui_to_api(wf, OBJECT_INFO)["2"]["inputs"]["seed"] == 123


def test_image_upload_widget_value_is_skipped():
    wf = {"nodes": [node(1, "LoadImg", ["x.png", "image"], outputs=["IMAGE"])], "links": []}
    assert ui_to_api(wf, OBJECT_INFO)["1"]["inputs"] == {"image": "x.png"}


def test_unknown_node_type_is_named():
    wf = graph([node(9, "NotInstalled", [])])
    with pytest.raises(WorkflowError, match="node 9: unknown node type 'NotInstalled'"):
        ui_to_api(wf, OBJECT_INFO)


def test_subgraphs_are_refused_clearly():
    wf = graph()
    wf["definitions"] = {"subgraphs": [{"id": "x"}]}
    with pytest.raises(WorkflowError, match="subgraphs"):
        ui_to_api(wf, OBJECT_INFO)


def test_format_detection_and_api_passthrough():
    api = ui_to_api(graph(), OBJECT_INFO)
    assert is_ui_format(graph()) and not is_ui_format(api)
    assert to_api(api, OBJECT_INFO) is api
    with pytest.raises(WorkflowError, match="not an API-format node"):
        to_api({"1": {"inputs": {}}}, OBJECT_INFO)


def test_validate_reports_link_type_mismatch_and_bad_values():
    api = ui_to_api(graph(), OBJECT_INFO)
    api["3"]["inputs"]["vae"] = ["1", 0]  # MODEL into a VAE input
    api["2"]["inputs"]["sampler"] = "dpm"
    api["2"]["inputs"]["steps"] = "four"
    problems = validate(api, OBJECT_INFO)
    assert any("input 'vae' expects VAE but is linked to node 1 (Loader) output 0 of type MODEL" in p
               for p in problems)
    assert any("'dpm', not one of euler, heun" in p for p in problems)
    assert any("'steps' expects a number" in p for p in problems)


@pytest.mark.parametrize("assignment, message", [
    ("99.steps=3", "the workflow has no node '99'"),
    ("2.nope=3", "node 2 \\(Sampler\\) has no input 'nope'"),
    ("2.steps=three", "expected an integer"),
    ("2.sampler=dpm", "expected one of euler, heun"),
    ("2.model=x", "comes from a link"),
    ("steps3", "expected NODE.INPUT=VALUE"),
])
def test_overrides_reject_bad_assignments(assignment, message):
    api = ui_to_api(graph(), OBJECT_INFO)
    with pytest.raises(WorkflowError, match=message):
        apply_overrides(api, [assignment], OBJECT_INFO)


def test_overrides_coerce_and_do_not_mutate_input():
    api = ui_to_api(graph(), OBJECT_INFO)
    out = apply_overrides(api, ["2.steps=12", "2.strength=0.25", "4.prefix=a=b"], OBJECT_INFO)
    assert out["2"]["inputs"]["steps"] == 12 and out["2"]["inputs"]["strength"] == 0.25
    assert out["4"]["inputs"]["prefix"] == "a=b"
    assert api["2"]["inputs"]["steps"] == 4


def test_malformed_json_names_line_and_column(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"1": {"class_type": "Save",,}}')
    with pytest.raises(WorkflowError, match=r"bad.json is not valid JSON: .* line 1, column 29"):
        load_workflow(bad)
    (tmp_path / "list.json").write_text(json.dumps([1, 2]))
    with pytest.raises(WorkflowError, match="expected a JSON object"):
        load_workflow(tmp_path / "list.json")
