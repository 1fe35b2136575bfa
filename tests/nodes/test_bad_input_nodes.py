"""Bad input at the node level: every FLOAT and COMBO input of every node is checked, loaders turn any malformed file
into an error naming the input, saved files are not replaced silently and get normal permissions, and errors quote
only an excerpt of a bad value. (The same cases through a live server: tests/e2e/test_bad_input.py.)"""
import json
import logging
import os
import stat

import pytest
import torch


@pytest.fixture(scope="module")
def pack(comfy_host, tmp_path_factory):
    import folder_paths

    from editlab.nodes import common, conceptsplit, expression, files, saedit, tiny, tryon

    root = tmp_path_factory.mktemp("models")
    for folder in (saedit.SAE_FOLDER, saedit.DIRECTION_FOLDER, expression.ADAPTER_FOLDER, conceptsplit.TOVA_FOLDER):
        (root / folder).mkdir()
        exts = folder_paths.folder_names_and_paths[folder][1]
        folder_paths.folder_names_and_paths[folder] = ([str(root / folder)], exts)
    inputs = tmp_path_factory.mktemp("input")
    before = folder_paths.get_input_directory()
    folder_paths.set_input_directory(str(inputs))
    import importlib

    from packinfo import pack_node_modules

    nodes = [n for m in pack_node_modules() for n in importlib.import_module(f"editlab.nodes.{m}").NODES]
    yield {"root": root, "input": inputs, "nodes": nodes, "common": common, "files": files, "saedit": saedit,
           "expression": expression}
    folder_paths.set_input_directory(before)


def _as_host_runs_it(node):
    """The class the host calls: a shallow, locked clone (comfy_api.internal), as in execution.py."""
    from comfy_api.internal import lock_class, shallow_clone_class

    return lock_class(shallow_clone_class(node))


def _inputs(node, kind):
    from comfy_api.latest import io

    return [i for i in node.define_schema().inputs if isinstance(i, kind)]


def test_every_node_is_checked(pack):
    for node in pack["nodes"]:
        assert issubclass(node, pack["common"].EditLabNode), node.__name__
        assert getattr(node.execute.__func__, "_editlab_checked", False), node.__name__


def test_every_float_input_of_every_node_rejects_non_finite(pack):
    from comfy_api.latest import io

    seen = []
    for node in pack["nodes"]:
        for inp in _inputs(node, io.Float.Input):
            for bad in (float("nan"), float("inf"), float("-inf")):
                with pytest.raises(pack["common"].EditLabInputError, match=f"input '{inp.id}': expected a finite"):
                    _as_host_runs_it(node).execute(**{inp.id: bad})
            seen.append(f"{node.__name__}.{inp.id}")
    print(f"{len(seen)} FLOAT inputs reject NaN and inf: {', '.join(seen)}")
    # the list, so that a schema change cannot silently shrink what is checked
    for name in ("EditLabBlendshapeEdit.intensity", "EditLabFLAMEExpression.jaw_open", "EditLabSAEDirection.percentile",
                 "EditLabApplyExpression.start_percent", "EditLabApplyExpression.end_percent", "EditLabSAETrain.lr",
                 "EditLabTrainExpressionAdapter.lr", "EditLabSAESlider.strength", "EditLabReferenceAdapter.strength"):
        assert name in seen


def test_every_combo_input_of_every_node_rejects_unknown_values(pack):
    from comfy_api.latest import io

    seen = 0
    for node in pack["nodes"]:
        for inp in _inputs(node, io.Combo.Input):
            expected = f"input '{inp.id}': expected (one of|a file in)"  # empty file lists: the loader's message
            with pytest.raises(pack["common"].EditLabInputError, match=expected):
                _as_host_runs_it(node).execute(**{inp.id: "no such option"})
            seen += 1
    assert seen >= 12


def test_errors_quote_only_an_excerpt(pack):
    err = pack["common"].EditLabInputError("values", "x" * 5000, "y" * 1_000_000)
    assert len(str(err)) < 1500 and "1000000 characters" in str(err)
    edit = pack["expression"].EditLabBlendshapeEdit
    for values in ("[" * 100_000 + "]" * 100_000, "{" + "\"a\": 1, " * 200_000 + "}", "{\"" + "k" * 50_000 + "\": 1}"):
        with pytest.raises(pack["common"].EditLabInputError, match="input 'values'") as caught:
            edit.execute(preset="neutral", values=values, symmetric=True, intensity=1.0)
        assert len(str(caught.value)) < 1500


def _save_sae(path, tensors, metadata=None):
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)


def _sae_tensors(d=8, m=16):
    return {"W_enc": torch.randn(d, m), "W_dec": torch.randn(m, d), "b_dec": torch.zeros(d), "b_enc": torch.zeros(m),
            "threshold": torch.tensor(0.1)}


def _config(d=8, m=16, **extra):
    return json.dumps({"act_size": d, "dict_size": m, "top_k": 4, **extra})


@pytest.mark.parametrize("case", ["1-D tensors", "config does not match the shapes", "extra config keys",
                                  "zero width", "config not JSON", "config of wrong types", "threshold a vector"])
def test_malformed_sae_files_are_named(pack, case):
    t = _sae_tensors()
    meta = {"format": "editlab.sae.v1", "config": _config()}
    if case == "1-D tensors":
        t = {k: v.flatten() for k, v in t.items()}
    elif case == "config does not match the shapes":
        meta["config"] = _config(d=12, m=16)
    elif case == "extra config keys":
        meta["config"] = _config(shiny=True)
    elif case == "zero width":
        t = _sae_tensors(d=0)
        meta["config"] = _config(d=0)
    elif case == "config not JSON":
        meta["config"] = "{not json"
    elif case == "config of wrong types":
        meta["config"] = json.dumps({"act_size": 8, "dict_size": 16, "top_k": "many"})
    elif case == "threshold a vector":
        t["threshold"] = torch.zeros(3)
    name = f"bad_{case.replace(' ', '_')}.safetensors"
    _save_sae(pack["root"] / "sae" / name, t, meta)
    with pytest.raises(pack["common"].EditLabInputError, match=f"input 'sae_name'.*{name}"):
        pack["saedit"].EditLabSAELoader.execute(sae_name=name)


def _adapter_parts():
    from editlab.models.expression.adapter import random_adapter

    return random_adapter(52, 32, [16, 16], num_tokens=2, form="linear").parts()


@pytest.mark.parametrize("case", ["zero-width norm", "image_proj as a list", "extra keys", "1-D projection",
                                  "rows not a multiple of the width", "ip_adapter of strings"])
def test_malformed_adapter_files_are_named(pack, case):
    image_proj, ip = _adapter_parts()
    if case == "zero-width norm":
        image_proj["norm.weight"] = torch.zeros(0)
        image_proj["norm.bias"] = torch.zeros(0)
    elif case == "image_proj as a list":
        image_proj = list(image_proj.values())
    elif case == "extra keys":
        image_proj["surprise.weight"] = torch.zeros(3)
    elif case == "1-D projection":
        image_proj["proj.weight"] = image_proj["proj.weight"].flatten()
    elif case == "rows not a multiple of the width":
        image_proj["proj.weight"] = image_proj["proj.weight"][:-1]
        image_proj["proj.bias"] = image_proj["proj.bias"][:-1]
    elif case == "ip_adapter of strings":
        ip = {k: "weights" for k in ip}
    name = f"bad_{case.replace(' ', '_')}.bin"
    torch.save({"image_proj": image_proj, "ip_adapter": ip}, pack["root"] / "expression_adapters" / name)
    with pytest.raises(pack["common"].EditLabInputError, match="input 'adapter_name': expected an expression adapter"):
        pack["expression"].EditLabExpressionAdapterLoader.execute(adapter_name=name)


def test_a_bad_direction_file_is_skipped_with_one_log_line(pack, caplog):
    folder = pack["root"] / "sae_directions"
    _save_sae(folder / "no_feature_ids.safetensors", {"direction": torch.zeros(16)},
              {"format": "editlab.sae_direction.v1", "pairs": "[]", "sae": "x"})
    _save_sae(folder / "bad_pairs_json.safetensors",
              {"direction": torch.zeros(16), "feature_ids": torch.zeros(1, dtype=torch.int64),
               "weights": torch.zeros(1)}, {"format": "editlab.sae_direction.v1", "pairs": "[[", "sae": "x"})
    (folder / "truncated.safetensors").write_bytes(b"\x10\x00\x00")
    labels = pack["saedit"]._direction_labels
    with caplog.at_level(logging.WARNING):
        assert labels("x") == {}
    lines = [r.getMessage() for r in caplog.records if "SAE Features: skipping" in r.getMessage()]
    assert len(lines) == 3 and all("\n" not in l for l in lines), lines


def test_saved_files_have_normal_permissions_and_are_not_replaced(pack, tmp_path):
    from editlab.models.common import atomic_save_safetensors

    old = os.umask(0o022)
    try:
        path = tmp_path / "a.safetensors"
        atomic_save_safetensors({"x": torch.zeros(2)}, path, {"k": "v"}, overwrite=False)
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        before = path.read_bytes()
        with pytest.raises(FileExistsError):
            atomic_save_safetensors({"x": torch.ones(2)}, path, overwrite=False)
        assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]
        atomic_save_safetensors({"x": torch.ones(2)}, path, overwrite=True)
        assert path.read_bytes() != before
    finally:
        os.umask(old)
    common = pack["common"]
    (pack["root"] / "sae" / "taken.safetensors").write_bytes(b"mine")
    with pytest.raises(common.EditLabInputError, match="input 'name': expected a name not used yet"):
        pack["files"].output_file("sae", "taken", "name")
    assert pack["files"].output_file("sae", "taken", "name", overwrite=True).endswith("taken.safetensors")


def test_input_paths_never_leave_the_input_folder(pack, tmp_path):
    common = pack["common"]
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:the first line\n")
    (pack["input"] / "link.txt").symlink_to(secret)
    (pack["input"] / "linked_dir").symlink_to(tmp_path, target_is_directory=True)
    for name in ("link.txt", "../secret.txt", str(secret), "linked_dir/secret.txt"):
        with pytest.raises(common.EditLabInputError, match="input 'pairs_file': expected a file inside") as caught:
            pack["files"].read_text_lines(name, "pairs_file")
        assert "root:x" not in str(caught.value)
    for name in ("linked_dir", "..", str(tmp_path)):
        with pytest.raises(common.EditLabInputError, match="input 'folder': expected a folder inside"):
            pack["files"].input_folder(name, "folder")
    (pack["input"] / "latin1.txt").write_bytes("caf\xe9 | caf\xe9s\n".encode("latin-1"))
    with pytest.raises(common.EditLabInputError, match="input 'pairs_file': expected a UTF-8 text file") as caught:
        pack["files"].read_text_lines("latin1.txt", "pairs_file")
    assert "caf" not in str(caught.value)


@pytest.fixture
def interrupted(comfy_host):
    import comfy.model_management as mm

    mm.interrupt_current_processing(True)
    yield mm.InterruptProcessingException
    mm.interrupt_current_processing(False)


def test_reference_tokens_stop_when_interrupted(pack, interrupted):
    from editlab.nodes.tryon import EditLabReferenceTokens

    class NeverEncode:
        def encode(self, image):
            raise AssertionError("encoded after an interrupt")

    with pytest.raises(interrupted):
        EditLabReferenceTokens.execute(conditioning=[], vae=NeverEncode(), image=torch.rand(2, 64, 64, 3),
                                       method="offset", max_size=64)


def test_sae_training_prompts_stop_when_interrupted(pack, interrupted):
    class Untouched:  # no prompt may be encoded once the run is interrupted
        def __getattr__(self, name):
            raise AssertionError(f"the CLIP was used ({name}) after an interrupt")

    clip = Untouched()
    with pytest.raises(interrupted):
        pack["saedit"].EditLabSAETrain.execute(clip=clip, prompts="a man\na dog", prompts_file="",
                                               generated_prompts=0, part="auto", dict_size=16, top_k=2,
                                               matryoshka_groups="", lr=1e-3, batch_size=8, epochs=1, seed=0,
                                               name="never_saved")
    assert not (pack["root"] / "sae" / "never_saved.safetensors").exists()


def test_a_huge_reference_is_scaled_before_encoding(pack):
    import time

    from editlab.nodes.tryon import EditLabReferenceTokens

    seen = []

    class RecordingVAE:
        def encode(self, image):
            seen.append(tuple(image.shape))
            return torch.zeros(1, 16, image.shape[1] // 8, image.shape[2] // 8)

    start = time.monotonic()
    EditLabReferenceTokens.execute(conditioning=[], vae=RecordingVAE(), image=torch.rand(1, 8000, 6000, 3),
                                   method="offset", max_size=1024)
    assert seen == [(1, 1024, 768, 3)] and time.monotonic() - start < 30


def test_pose_estimate_stops_when_interrupted(pack, interrupted, monkeypatch):
    from editlab.nodes import tryon

    monkeypatch.setattr(tryon.PoseEstimator, "__call__",
                        lambda self, frame: pytest.fail("a frame was estimated after an interrupt"))
    with pytest.raises(interrupted):
        tryon.EditLabPoseEstimate.execute(image=torch.rand(3, 32, 32, 3), allow_no_person=True)
