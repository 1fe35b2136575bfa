"""--tiny on the shipped workflows' API twins: every stock loader replaced, links moved to the matching tiny output,
and the real sizes and step counts scaled down for the dry run, each change said."""
import json
import re
from pathlib import Path

import pytest

from editlab.client.tiny import (DROPPED, DROPPED_USERS, LOADERS, PASS_THROUGH, loader_architecture,
                                 missing_model_files, substitute_tiny)

REPO = Path(__file__).resolve().parents[2]
TWINS = sorted((REPO / "workflows" / "api").glob("*.json"))
TINY_OUTPUTS = ["MODEL", "CLIP", "VAE"]


@pytest.mark.parametrize("path", TWINS, ids=lambda p: p.stem)
def test_every_loader_is_swapped_and_links_point_at_tiny_outputs(path):
    prompt = json.loads(path.read_text())
    loaders = {k for k, v in prompt.items() if v["class_type"] in LOADERS}
    assert loaders, "shipped workflows use the stock loaders"
    tiny, said = substitute_tiny(prompt)
    opted_out = [line for line in said if "(a dry run without CLIP vision features)" in line]
    said = [line for line in said if "(scaled down for the tiny models)" not in line  # sizes: tested below
            and line not in opted_out]
    assert bool(opted_out) == any(v["class_type"] in DROPPED for v in prompt.values())
    assert len([line for line in said if " -> " in line]) == len(loaders)
    assert not [k for k, v in tiny.items() if v["class_type"] in LOADERS]
    gone = set(prompt) - set(tiny) - loaders  # LoRA pass-throughs; CLIP vision nodes (no tiny CLIP vision)
    assert {prompt[k]["class_type"] for k in gone} <= set(PASS_THROUGH) | set(DROPPED) | set(DROPPED_USERS)
    assert len(said) == len(loaders) + len(gone)
    for node_id, node in tiny.items():
        for name, value in node["inputs"].items():
            if isinstance(value, list):
                assert value[0] in tiny, f"node {node_id}.{name} links to removed node {value[0]}"
                src = tiny[value[0]]
                if src["class_type"] == "EditLabTinyModels":
                    expected = {"model": "MODEL", "clip": "CLIP", "vae": "VAE"}.get(name)
                    if expected:
                        assert TINY_OUTPUTS[value[1]] == expected, (node_id, name, value)
    # Non-loader nodes and their values are untouched.
    for node_id in set(prompt) - loaders - gone:
        assert tiny[node_id]["class_type"] == prompt[node_id]["class_type"]


def test_architectures_from_loader_settings():
    assert loader_architecture({"class_type": "UNETLoader", "inputs": {"unet_name": "flux1-fill-dev.safetensors"}}) \
        == "flux_fill"
    assert loader_architecture({"class_type": "UNETLoader", "inputs": {"unet_name": "flux1-dev.safetensors"}}) == "flux"
    assert loader_architecture({"class_type": "DualCLIPLoader", "inputs": {"type": "sd3"}}) == "sd3"
    assert loader_architecture({"class_type": "CheckpointLoaderSimple",
                                "inputs": {"ckpt_name": "sd3.5_large_fp8_scaled.safetensors"}}) == "sd3"
    assert loader_architecture({"class_type": "CheckpointLoaderSimple",
                                "inputs": {"ckpt_name": "v1-5-pruned-emaonly-fp16.safetensors"}}) == "sd15"
    assert loader_architecture({"class_type": "VAELoader", "inputs": {"vae_name": "my_vae.safetensors"}}) is None


def test_lora_passes_the_model_through():
    prompt = {"1": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux1-dev.safetensors"}},
              "2": {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["1", 0], "lora_name": "x.safetensors",
                                                                    "strength_model": 1.0}},
              "3": {"class_type": "KSampler", "inputs": {"model": ["2", 0]}}}
    tiny, said = substitute_tiny(prompt)
    assert tiny["3"]["inputs"]["model"] == ["tiny_flux", 0] and "2" not in tiny and len(said) == 2


def test_missing_files_name_their_folder():
    info = {"UNETLoader": {"input": {"required": {"unet_name": [["other.safetensors"], {}]}}}}
    prompt = {"4": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux1-dev.safetensors"}}}
    assert missing_model_files(prompt, info) == [
        "flux1-dev.safetensors (node 4 UNETLoader): put it in ComfyUI's models/diffusion_models/"]
    info["UNETLoader"]["input"]["required"]["unet_name"] = [["flux1-dev.safetensors"], {}]
    assert missing_model_files(prompt, info) == []


def test_model_files_are_the_ones_comfyuis_templates_use():
    """Every model file a shipped workflow names appears, with the same folder, in ComfyUI's own templates."""
    import importlib.util

    spec = importlib.util.find_spec("comfyui_workflow_templates")
    if spec is None:
        pytest.skip("comfyui-workflow-templates is not installed in this environment")
    roots = [Path(p).parent for p in (spec.submodule_search_locations or [])]
    known = set()
    for root in roots:
        for path in root.glob("comfyui_workflow_templates*/templates/*.json"):
            try:
                data = json.loads(path.read_text())
            except (ValueError, UnicodeDecodeError):
                continue
            # every "models" list anywhere in the file: newer templates keep their nodes inside subgraphs
            stack = [data]
            while stack:
                item = stack.pop()
                if isinstance(item, dict):
                    for model in item.get("models") or [] if isinstance(item.get("models"), list) else []:
                        if isinstance(model, dict):
                            known.add((model.get("name"), model.get("directory")))
                    stack.extend(item.values())
                elif isinstance(item, list):
                    stack.extend(item)
    used = set()
    for path in (REPO / "workflows").glob("*.json"):
        for node in json.loads(path.read_text())["nodes"]:
            for model in (node.get("properties") or {}).get("models") or []:
                used.add((model["name"], model["directory"]))
    assert used
    missing = sorted(used - known)
    # a model family the installed templates no longer cover at all (0.33's package has no SD1.5 template) cannot be
    # checked here: it was checked against the templates of the hosts that ship one
    uncovered = [m for m in missing if not any(str(k[0]).startswith(m[0][:4]) for k in known)]
    assert not [m for m in missing if m not in uncovered], missing


def test_prepare_prompt_tiny_modes():
    from editlab.client import ClientError
    from editlab.client.cli import prepare_prompt

    prompt = {"1": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux1-dev.safetensors"}},
              "2": {"class_type": "KSampler", "inputs": {"model": ["1", 0]}}}
    have = {"UNETLoader": {"input": {"required": {"unet_name": [["flux1-dev.safetensors"], {}]}}}}
    lack = {"UNETLoader": {"input": {"required": {"unet_name": [[], {}]}}}}
    assert prepare_prompt(prompt, have, "if-missing") == prompt  # real weights found: used as they are
    assert prepare_prompt(prompt, lack, "if-missing")["2"]["inputs"]["model"] == ["tiny_flux", 0]
    assert prepare_prompt(prompt, have, "always")["2"]["inputs"]["model"] == ["tiny_flux", 0]
    with pytest.raises(ClientError, match="flux1-dev.safetensors .*models/diffusion_models/"):
        prepare_prompt(prompt, lack, "never")


# What a dry run on the tiny models may use at most, written here from the tiny models' purpose (seconds on a CPU),
# not read from client/tiny.py: pixels per side, pixels of area, canvas height, step counts.
DRY_RUN_LIMITS = {"width": 64, "height": 64, "resolution": 64, "target_area": 64 * 64}
STEP_INPUTS = {"steps": 8, "loda_steps": 2, "steps_stage1": 2, "steps_stage2": 2}
LINE = re.compile(r"^node (\S+) (\S+): (\S+) (\S+) -> (\S+) \(scaled down for the tiny models\)$")


def _number(text):
    return float(text) if "." in text else int(text)


@pytest.mark.parametrize("path", TWINS, ids=lambda p: p.stem)
def test_tiny_scales_real_sizes_and_steps_down_and_says_each_change(path):
    """After --tiny no size or step count is above what a dry run may use, and every value that changed is said
    once as ``node ID CLASS: INPUT OLD -> NEW`` with the values it really had and has; nothing else changed."""
    prompt = json.loads(path.read_text())
    tiny, said = substitute_tiny(prompt)
    lines = [LINE.match(line) for line in said if "scaled down" in line]
    assert all(lines), said
    told = {(m[1], m[3]): (_number(m[4]), _number(m[5])) for m in lines}
    assert len(told) == len(lines), "one line per change"
    for line in said:  # the other change --tiny makes and says: the ChronoEdit sampler's dry-run flag
        m = re.match(r"^node (\S+) \S+: (without_clip_vision) on ", line)
        if m:
            told[(m[1], m[2])] = (prompt[m[1]]["inputs"].get(m[2], False), True)
    for node_id, node in tiny.items():
        if node["class_type"] == "EditLabTinyModels":
            continue
        before = prompt[node_id]["inputs"]
        for name, value in node["inputs"].items():
            if isinstance(value, list):
                continue
            limit = DRY_RUN_LIMITS.get(name) or STEP_INPUTS.get(name)
            if node["class_type"] == "EditLabTryOnStitch" and name == "height":
                limit = 128
            if limit is not None and isinstance(value, (int, float)):
                assert value <= limit, f"node {node_id} {node['class_type']}.{name} = {value} after --tiny"
            if value != before[name]:
                assert told.pop((node_id, name)) == (before[name], value), (node_id, name)
    assert not told, f"said but not done: {told}"


def test_a_real_size_workflow_is_scaled_and_small_values_are_kept():
    """The numbers by hand: 1024 px -> 64, 50 steps -> 8 with the reasoning drop at step 10 of 50 -> 2 of 8 (10 *
    8 / 50 = 1.6), the attention-map window kept whole; a value already small (a --set override) stays."""
    prompt = {"1": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux1-dev.safetensors"}},
              "2": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 1024, "height": 48, "batch_size": 1}},
              "3": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "latent_image": ["2", 0], "steps": 3}},
              "4": {"class_type": "EditLabTemporalReasoningSampler", "inputs": {"steps": 50, "reasoning_steps": 10}},
              "5": {"class_type": "EditLabAttentionMaps", "inputs": {"steps": 50, "start_step": 0, "end_step": 50}},
              "6": {"class_type": "EditLabChronoEditConditioning", "inputs": {"target_area": 921600}}}
    tiny, said = substitute_tiny(prompt)
    assert tiny["2"]["inputs"] == {"width": 64, "height": 48, "batch_size": 1}
    assert tiny["3"]["inputs"]["steps"] == 3
    assert tiny["4"]["inputs"] == {"steps": 8, "reasoning_steps": 2}
    assert tiny["5"]["inputs"] == {"steps": 4, "start_step": 0, "end_step": 4}
    assert tiny["6"]["inputs"] == {"target_area": 4096}
    scaled = [line for line in said if "scaled down" in line]
    assert scaled == ["node 2 EmptySD3LatentImage: width 1024 -> 64 (scaled down for the tiny models)",
                      "node 4 EditLabTemporalReasoningSampler: steps 50 -> 8 (scaled down for the tiny models)",
                      "node 4 EditLabTemporalReasoningSampler: reasoning_steps 10 -> 2 (scaled down for the tiny "
                      "models)",
                      "node 5 EditLabAttentionMaps: steps 50 -> 4 (scaled down for the tiny models)",
                      "node 5 EditLabAttentionMaps: end_step 50 -> 4 (scaled down for the tiny models)",
                      "node 6 EditLabChronoEditConditioning: target_area 921600 -> 4096 (scaled down for the tiny "
                      "models)"]
    assert prompt["2"]["inputs"]["width"] == 1024, "the caller's prompt is not changed"


@pytest.mark.parametrize("name", ["worldtoimage_local_library", "worldtoimage_openverse"])
def test_worldtoimage_loads_flux_kontext_and_goes_to_the_tiny_flux(name):
    """The agent feeds reference latents: its model is Flux Kontext (trained on them), as ComfyUI's Kontext template
    loads it; --tiny maps that file to the tiny Flux, whose output feeds the agent."""
    prompt = json.loads((REPO / "workflows" / "api" / f"{name}.json").read_text())
    unets = [v["inputs"]["unet_name"] for v in prompt.values() if v["class_type"] == "UNETLoader"]
    assert unets == ["flux1-dev-kontext_fp8_scaled.safetensors"]
    tiny, said = substitute_tiny(prompt)
    assert any("UNETLoader (flux1-dev-kontext_fp8_scaled.safetensors) -> EditLabTinyModels flux" in line
               for line in said), said
    (agent,) = [v for v in tiny.values() if v["class_type"] == "EditLabWorldToImage"]
    assert tiny[agent["inputs"]["model"][0]]["inputs"]["architecture"] == "flux"
    assert agent["inputs"]["reference_mode"] == "reference_latents"


def test_dropping_clip_vision_turns_the_chronoedit_samplers_dry_run_flag_on():
    """The ChronoEdit sampler refuses a model with an image projection without CLIP vision features unless
    ``without_clip_vision`` is on: --tiny removes the encoder, so it turns the flag on and says so."""
    prompt = json.loads((REPO / "workflows" / "api" / "chronoedit_reasoning_edit.json").read_text())
    (sampler_id,) = [k for k, v in prompt.items() if v["class_type"] == "EditLabTemporalReasoningSampler"]
    assert prompt[sampler_id]["inputs"]["without_clip_vision"] is False  # shipped: the real model needs them
    tiny, said = substitute_tiny(prompt)
    assert tiny[sampler_id]["inputs"]["without_clip_vision"] is True
    assert f"node {sampler_id} EditLabTemporalReasoningSampler: without_clip_vision on (a dry run without CLIP " \
           f"vision features)" in said
