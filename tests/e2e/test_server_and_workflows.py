"""The pack in a real headless ComfyUI: loading, every shipped workflow checked and run, UI == API, determinism."""
import json
import re
from pathlib import Path

import numpy as np
import pytest

from editlab.client.api import output_files
from editlab.client.cli import pack_nodes, prepare_prompt, run_workflow
from editlab.client.tiny import LOADERS, missing_model_files
from editlab.client.workflow import load_workflow, to_api, validate

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))


def _pixels(path):
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).copy()


def test_pack_loads_with_its_nodes(object_info, server):
    names = {n["name"] for n in pack_nodes(object_info)}
    assert "EditLabTinyModels" in names
    for name in names:
        assert object_info[name]["category"].startswith("EditLab/")
        assert object_info[name]["description"], f"{name} has no description"
    failed = [l for l in server.log_tail(2000).splitlines() if "IMPORT FAILED" in l or "Cannot import" in l]
    assert not [l for l in failed if "editlab" in l], failed


def test_web_extension_is_served(server):
    exts = server.client.get_json("/extensions")
    assert any("editlab" in e.lower() for e in exts), exts


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_shipped_workflow_fits_live_node_definitions(path, object_info):
    ui = load_workflow(path)
    prompt = to_api(ui, object_info)
    loaders = [n for n in prompt.values() if n["class_type"] in LOADERS]
    assert loaders and not [n for n in prompt.values() if n["class_type"] == "EditLabTinyModels"], \
        "shipped workflows load real weights with the stock loaders"
    # This server has no weights: every file the loaders name is reported, and nothing else is wrong.
    assert len(missing_model_files(prompt, object_info)) >= len(loaders)
    tiny = prepare_prompt(prompt, object_info, tiny="always")
    assert not [n for n in tiny.values() if n["class_type"] in LOADERS]
    assert validate(tiny, object_info) == []
    twin = REPO / "workflows" / "api" / path.name
    assert twin.is_file(), f"{path.name} needs an API-format twin in workflows/api/"
    api = load_workflow(twin)
    strip = lambda p: {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in p.items()}
    assert strip(prompt) == strip(api), "the UI file and its API twin describe different graphs"


def _evict_cache(server, tmp_path):
    """Run a different prompt: ComfyUI's cache keeps only the last prompt's results, so the next run recomputes.

    (POST /free is no substitute: the server applies it only after the next prompt has run.)
    """
    other = load_workflow(REPO / "tests" / "e2e" / "data" / "tiny_flux_t2i.json")
    run_workflow(server.client, other, ["6.seed=987654", "6.steps=1"], tmp_path / "evict", show_progress=False)


def overwrite_sets(api_prompt: dict, object_info: dict) -> list[str]:
    """``--set ID.overwrite=true`` for every saving node that saves: these tests run a workflow again on purpose, and
    a saving node refuses to replace its file otherwise (issue 9)."""
    args = []
    for node_id, node in api_prompt.items():
        optional = object_info.get(node["class_type"], {}).get("input", {}).get("optional", {})
        if "overwrite" in optional and str(node["inputs"].get("name", "")).strip():
            args += ["--set", f"{node_id}.overwrite=true"]
    return args


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_ui_workflow_through_the_client_equals_its_api_twin(path, server, editlab_cli, tmp_path, workflow_inputs,
                                                            object_info):
    outs = {}
    uploads = [arg for f in workflow_inputs for arg in ("--upload", f)]
    uploads += overwrite_sets(load_workflow(REPO / "workflows" / "api" / path.name), object_info)
    for kind, file in (("ui", path), ("api", REPO / "workflows" / "api" / path.name)):
        _evict_cache(server, tmp_path)  # both runs compute their nodes; neither is served the other's cache
        done = editlab_cli("run", file, "--tiny", "--server", server.url, "--out", tmp_path / kind, "-q", *uploads)
        assert done.returncode == 0, done.stderr
        # shipped at real sizes: --tiny printed each value it scaled down (node, input, old -> new)
        dry_run_most = {"width": 64, "height": 64, "target_area": 64 * 64}
        real = {(k, n): v for k, node in load_workflow(REPO / "workflows" / "api" / path.name).items()
                for n, v in node["inputs"].items()
                if n in dry_run_most and isinstance(v, int) and v > dry_run_most[n]}
        for (node_id, name), value in real.items():
            assert re.search(rf"node {node_id} \S+: {name} {value} -> \d+ ", done.stderr), done.stderr
        outs[kind] = sorted(Path(p) for p in done.stdout.split())
        assert outs[kind], "the workflow produced no files"
    assert len(outs["ui"]) == len(outs["api"])
    for a, b in zip(outs["ui"], outs["api"]):
        if a.suffix == ".txt":  # a text output (e.g. training statistics)
            assert a.name == b.name and a.read_text() == b.read_text()
            continue
        assert a.name != b.name, "each run saved its own file"
        assert np.array_equal(_pixels(a), _pixels(b))


def test_run_names_missing_model_files_before_queueing(server, editlab_cli, tmp_path):
    queued = len(server.client.get_json("/history"))
    done = editlab_cli("run", REPO / "workflows" / "tryon_flux_fill.json", "--server", server.url, "--out",
                       tmp_path)
    assert done.returncode == 2
    for line in ("flux1-fill-dev.safetensors (node", "models/diffusion_models/", "t5xxl_fp16.safetensors",
                 "models/text_encoders/", "ae.safetensors", "models/vae/", "--tiny"):
        assert line in done.stderr, done.stderr
    assert len(server.client.get_json("/history")) == queued, "nothing was queued"


def test_tiny_says_what_it_swapped(server, editlab_cli, tmp_path):
    done = editlab_cli("run", REPO / "workflows" / "saedit_train_sae.json", "--tiny", "--server", server.url,
                       "--out", tmp_path, "-q")
    assert done.returncode == 0, done.stderr
    assert "DualCLIPLoader (clip_l.safetensors, t5xxl_fp16.safetensors) -> EditLabTinyModels flux" in done.stderr


def test_same_seed_same_outputs_bit_for_bit(server, tmp_path):
    workflow = load_workflow(REPO / "tests" / "e2e" / "data" / "tiny_flux_t2i.json")
    runs = []
    for i in range(2):
        _evict_cache(server, tmp_path)
        files = run_workflow(server.client, workflow, [], tmp_path / str(i), show_progress=False)
        runs.append(files)
    (a,), (b,) = runs
    assert a.name != b.name  # two distinct files on the server...
    assert np.array_equal(_pixels(a), _pixels(b))  # ...with identical pixels
    other = run_workflow(server.client, workflow, ["6.seed=43"], tmp_path / "other", show_progress=False)
    assert not np.array_equal(_pixels(a), _pixels(other[0])), "the seed must matter"


# composed workflow -> (the image it makes, [(node class whose strength is set to 0: one patch switched off)])
COMPOSED_OFF = {"composed_tova_expression": ("tova_expression", ["EditLabToVAApply", "EditLabApplyExpression"]),
                "composed_tryon_slider_fill": ("tryon_slider_result", ["EditLabSAESlider"])}


@pytest.mark.parametrize("name", sorted(COMPOSED_OFF))
def test_composed_workflow_each_patch_acts_in_the_shipped_graph(name, server, editlab_cli, tmp_path, workflow_inputs,
                                                                object_info):
    """Each method's patch reaches the composed workflow's image: with one patch's strength at 0 (the node's off
    value) the image differs from the shipped graph's, on the tiny models at a fixed seed."""
    twin = REPO / "workflows" / "api" / f"{name}.json"
    api = load_workflow(twin)
    image, patches = COMPOSED_OFF[name]
    args = [arg for f in workflow_inputs for arg in ("--upload", f)] + overwrite_sets(api, object_info)

    def run(out, *sets):
        done = editlab_cli("run", twin, "--tiny", "--server", server.url, "--out", tmp_path / out, "-q", *args, *sets)
        assert done.returncode == 0, done.stderr
        (made,) = [Path(p) for p in done.stdout.split() if image in Path(p).name]
        return _pixels(made)

    shipped = run("shipped")
    for kind in patches:
        (node_id,) = [k for k, v in api.items() if v["class_type"] == kind]
        off = run(kind, "--set", f"{node_id}.strength=0")
        assert off.shape == shipped.shape
        assert not np.array_equal(off, shipped), f"{kind} at strength 0 gives the composed image: it did not act"


def _tiny_flux_lora(path: Path) -> None:
    """A LoRA on every 2-D block weight of the tiny Flux (``--tiny``'s stand-in for Kontext), in the generic
    ``diffusion_model.<weight>`` key layout the host's LoRA loader reads."""
    import torch
    from safetensors.torch import save_file

    from editlab.models.tiny import build_tiny_models

    g = torch.Generator().manual_seed(21)
    lora = {}
    for k, w in build_tiny_models("flux", 0).model.model.state_dict().items():
        if k.startswith("diffusion_model.") and "blocks" in k and k.endswith(".weight") and w.ndim == 2:
            base = k[:-len(".weight")]
            lora[f"{base}.lora_up.weight"] = torch.randn(w.shape[0], 2, generator=g) * 0.1
            lora[f"{base}.lora_down.weight"] = torch.randn(2, w.shape[1], generator=g) * 0.1
            lora[f"{base}.alpha"] = torch.tensor(2.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(lora, str(path))


def test_composed_kontext_slider_acts_beside_the_layered_adapters(server, editlab_cli, tmp_path, workflow_inputs,
                                                                  object_info, comfy_host):
    """The Kontext composition saves the edit plain and slid from one seed through the layered adapters' model and
    CLIP: the slider changes the image (the product lock keeps the bag's pixels in both). The shipped graph has no
    adapter files chosen (they come from Layered Edit Train): with a LoRA file in both slots the adapters act too
    (their strengths at 0 give another image), beside the slider."""
    twin = REPO / "workflows" / "api" / "composed_slider_layered_kontext.json"
    api = load_workflow(twin)
    (node_id,) = [k for k, v in api.items() if v["class_type"] == "EditLabLayeredAdapters"]
    name = "editlab_e2e_tiny_flux_layered.safetensors"
    _tiny_flux_lora(server.models_dir / "loras" / name)
    args = [arg for f in workflow_inputs for arg in ("--upload", f)] + overwrite_sets(api, object_info)
    adapters = ["--set", f"{node_id}.pattern_shift_lora={name}", "--set", f"{node_id}.consistency_lora={name}"]

    def run(out, *sets):
        done = editlab_cli("run", twin, "--tiny", "--server", server.url, "--out", tmp_path / out, "-q", *args,
                           *adapters, *sets)
        assert done.returncode == 0, done.stderr
        files = [Path(p) for p in done.stdout.split()]
        (plain,) = [p for p in files if "slider_layered_plain" in p.name]
        (sunny,) = [p for p in files if "slider_layered_sunny" in p.name]
        return _pixels(plain), _pixels(sunny)

    (a, b), (a_off, b_off) = run("on"), run("off", "--set", f"{node_id}.pattern_shift_strength=0",
                                            "--set", f"{node_id}.consistency_strength=0")
    assert a.shape == b.shape and not np.array_equal(a, b), "the slider did not act beside the adapters"
    assert not np.array_equal(a, a_off) and not np.array_equal(b, b_off), "the layered adapters did not act"
