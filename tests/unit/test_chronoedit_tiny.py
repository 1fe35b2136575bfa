"""--tiny on the ChronoEdit workflows: ChronoEdit's UNet file maps to the tiny Wan 2.1 I2V, the CLIP vision loader
and encoder are removed (no tiny CLIP vision model) with the optional input they fed, the distill LoRA passes through;
without --tiny a missing CLIP vision file is named with its own folder."""
import json
from pathlib import Path

from editlab.client.tiny import missing_model_files, substitute_tiny

REPO = Path(__file__).resolve().parents[2]


def _api(name):
    return json.loads((REPO / "workflows" / "api" / f"{name}.json").read_text())


def test_reasoning_workflow_goes_tiny_without_clip_vision():
    prompt = _api("chronoedit_reasoning_edit")
    out, said = substitute_tiny(prompt)
    kinds = {v["class_type"] for v in out.values()}
    assert not kinds & {"CLIPVisionLoader", "CLIPVisionEncode", "UNETLoader", "CLIPLoader", "VAELoader"}
    tiny = [v for v in out.values() if v["class_type"] == "EditLabTinyModels"]
    assert [t["inputs"]["architecture"] for t in tiny] == ["wan21_i2v"]
    cond = next(v for v in out.values() if v["class_type"] == "EditLabChronoEditConditioning")
    assert "clip_vision_output" not in cond["inputs"] and cond["inputs"]["image"][0] in out
    assert any("CLIPVisionLoader removed" in line for line in said)
    assert any("UNETLoader (chrono_edit_14B_fp16.safetensors) -> EditLabTinyModels wan21_i2v" in line
               for line in said), said
    # every link still points at a node of the prompt
    for node in out.values():
        for value in node["inputs"].values():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                assert value[0] in out


def test_distilled_workflow_lora_passes_through():
    out, said = substitute_tiny(_api("chronoedit_distilled_8step"))
    assert "LoraLoaderModelOnly" not in {v["class_type"] for v in out.values()}
    shift = next(v for v in out.values() if v["class_type"] == "ModelSamplingSD3")
    assert out[shift["inputs"]["model"][0]]["class_type"] == "EditLabTinyModels"


def test_missing_clip_vision_file_names_its_folder():
    prompt = {"1": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "clip_vision_h.safetensors"}}}
    info = {"CLIPVisionLoader": {"input": {"required": {"clip_name": [["other.safetensors"]]}}}}
    (line,) = missing_model_files(prompt, info)
    assert "models/clip_vision/" in line
