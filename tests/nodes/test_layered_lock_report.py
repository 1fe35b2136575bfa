"""Product Lock and Edit Consistency Report as nodes: the lock's exactness through execute, RGBA/gray inputs, the
report's JSON and heat-map outputs, the saved report file, and bad input named by input."""
import json
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def layered(comfy_host, tmp_path_factory):
    import folder_paths

    from editlab.nodes import layered

    folder_paths.set_output_directory(str(tmp_path_factory.mktemp("output")))
    return layered


def images(b=1, h=32, w=40, seed=0, c=3):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(b, h, w, c, generator=gen), torch.rand(b, h, w, c, generator=gen)


def mask(h=32, w=40):
    m = torch.zeros(1, h, w)
    m[:, 8:20, 10:30] = 1
    return m


def test_lock_node_is_exact(layered):
    original, edited = images(c=4)  # RGBA: alpha dropped
    out = layered.EditLabProductLock.execute(original=original, edited=edited, mask=mask(), feather=0,
                                             colour_match=0.0).result[0]
    region = mask()[0] >= 0.5
    assert out.shape == (1, 32, 40, 3)
    assert torch.equal(out[0][region], original[0, ..., :3][region])
    assert torch.equal(out[0][~region], edited[0, ..., :3][~region])


@pytest.mark.parametrize("kwargs, name", [
    ({"mask": torch.zeros(1, 32, 40)}, "mask"),
    ({"mask": torch.ones(1, 32, 40)}, "mask"),
    ({"mask": torch.ones(1, 16, 40)}, "mask"),
    ({"mask": torch.ones(32)}, "mask"),
    ({"edited": torch.rand(1, 16, 40, 3)}, "edited"),
    ({"original": torch.rand(2, 32, 40, 3), "edited": torch.rand(3, 32, 40, 3)}, "original"),
    ({"edited": torch.full((1, 32, 40, 3), float("nan"))}, "edited"),
    ({"colour_match": float("inf")}, "colour_match"),
])
def test_lock_node_names_bad_input(layered, kwargs, name):
    from editlab.nodes.common import EditLabInputError

    original, edited = images()
    args = dict(original=original, edited=edited, mask=mask(), feather=4, colour_match=0.0)
    args.update(kwargs)
    with pytest.raises(EditLabInputError) as info:
        layered.EditLabProductLock.execute(**args)
    assert info.value.input_name == name


def test_report_node_outputs_and_saved_file(layered):
    import folder_paths

    original, _ = images()
    edited = original.clone()
    edited[0, 24:30, 2:8] = 0.0
    text, heat = layered.EditLabEditConsistency.execute(original=original, edited=edited, mask=mask(),
                                                        filename_prefix="reports/layered").result
    report = json.loads(text)
    assert report["images"][0]["inside_mask"]["l1"] == 0
    assert report["images"][0]["outside_mask"]["l1"] > 0
    assert heat.shape == (1, 32, 40, 3) and float(heat.min()) >= 0 and float(heat.max()) <= 1
    out = folder_paths.get_output_directory()
    files = sorted((Path(out) / "reports").glob("layered_*.json"))
    assert [f.name for f in files] == ["layered_00001_.json"]
    assert json.loads(files[0].read_text()) == report
    text2, _ = layered.EditLabEditConsistency.execute(original=original, edited=edited, mask=mask(),
                                                      filename_prefix="reports/layered").result
    assert text2 == text  # the same report; the file is numbered, never overwritten
    assert len(list((Path(out) / "reports").glob("layered_*.json"))) == 2


def test_report_node_names_bad_input(layered):
    from editlab.nodes.common import EditLabInputError

    original, edited = images()
    with pytest.raises(EditLabInputError) as info:
        layered.EditLabEditConsistency.execute(original=original, edited=edited, mask=torch.ones(1, 8, 8))
    assert info.value.input_name == "mask"
    with pytest.raises(EditLabInputError) as info:
        layered.EditLabEditConsistency.execute(original=original, edited=edited, filename_prefix="../../escape")
    assert info.value.input_name == "filename_prefix"


def _as_host_runs_it(node):
    from comfy_api.internal import lock_class, shallow_clone_class

    return lock_class(shallow_clone_class(node))


def test_every_float_and_combo_input_of_the_layered_nodes_is_checked(layered):
    from comfy_api.latest import io

    from editlab.nodes.common import EditLabInputError, EditLabNode

    floats, combos = [], []
    for node in layered.NODES:
        assert issubclass(node, EditLabNode) and node.define_schema().category == "EditLab/LayeredEdit"
        for inp in node.define_schema().inputs:
            if isinstance(inp, io.Float.Input):
                for bad in (float("nan"), float("inf"), float("-inf")):
                    with pytest.raises(EditLabInputError, match=f"input '{inp.id}': expected a finite"):
                        _as_host_runs_it(node).execute(**{inp.id: bad})
                floats.append(f"{node.__name__}.{inp.id}")
            elif isinstance(inp, io.Combo.Input):
                with pytest.raises(EditLabInputError, match=f"input '{inp.id}': expected one of"):
                    _as_host_runs_it(node).execute(**{inp.id: "no such option"})
                combos.append(f"{node.__name__}.{inp.id}")
    assert {"EditLabLayeredAdapters.pattern_shift_start", "EditLabLayeredAdapters.consistency_strength",
            "EditLabLayeredTrain.lr", "EditLabLayeredTrain.product_weight",
            "EditLabProductLock.colour_match"} <= set(floats)
    assert {"EditLabLayeredAdapters.pattern_shift_lora", "EditLabLayeredTrain.stages"} <= set(combos)


def test_every_input_of_the_layered_nodes_has_a_tooltip(layered):
    missing = [f"{n.__name__}.{i.id}" for n in layered.NODES for i in n.define_schema().inputs
               if not (getattr(i, "tooltip", None) or "").strip()]
    assert not missing
