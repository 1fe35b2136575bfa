"""Bad input through a live server (issue 9): every case is an execution error that names the input and says what
was expected, in a short message; nothing is written; the same server process keeps serving valid prompts.

The table below has one row per case of the issue and per sibling found in the other nodes. Every file this module
puts in the host's model folders or the server's input folder carries TOKEN in its name and is removed at the end.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from editlab.client import ClientError
from editlab.client.api import PromptFailed, text_outputs

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
TOKEN = f"badinput{uuid.uuid4().hex[:8]}"
MODEL_FOLDERS = ("sae", "sae_directions", "expression_adapters", "tova", "loras", "expression_reference_loras")
SECRET = "SECRET-FIRST-LINE-of-a-file-outside-the-input-folder"
NAN = float("nan")


# -- graph pieces ---------------------------------------------------------------------------------------------------

def N(class_type: str, **inputs) -> dict:
    return {"class_type": class_type, "inputs": inputs}


def tiny(arch="flux"):
    return N("EditLabTinyModels", architecture=arch, seed=0)


def empty(w=64, h=64, batch=1, color=0):
    return N("EmptyImage", width=w, height=h, batch_size=batch, color=color)


def solid(value=0.5, w=64, h=64):
    return N("SolidMask", value=value, width=w, height=h)


def load(name):
    return N("LoadImage", image=name)


def sae_train(**over):
    inputs = dict(clip=["1", 1], prompts="a man\na dog", prompts_file="", generated_prompts=20, part="auto",
                  dict_size=16, top_k=2, matryoshka_groups="", lr=1e-3, batch_size=8, epochs=1, seed=0,
                  name=f"{TOKEN}_never")
    inputs.update(over)
    return {"1": tiny(), "9": N("EditLabSAETrain", **inputs)}


def sae_direction(**over):
    inputs = dict(clip=["1", 1], sae=["2", 0], pairs="a man | a smiling man", pairs_file="", part="auto",
                  method="svd", percentile=99.5, name="")
    inputs.update(over)
    return {"1": tiny(), "2": N("EditLabSAELoader", sae_name=f"{TOKEN}_ok.safetensors"),
            "9": N("EditLabSAEDirection", **inputs)}


def sae_features(**over):
    inputs = dict(clip=["1", 1], sae=["2", 0], prompt="a smiling man in a park", part="auto", top_n=4)
    inputs.update(over)
    return {"1": tiny(), "2": N("EditLabSAELoader", sae_name=f"{TOKEN}_ok.safetensors"),
            "9": N("EditLabSAEFeatures", **inputs)}


def sae_slider(**over):
    prompt = "a photo of a man"
    inputs = dict(conditioning=["3", 0], clip=["1", 1], sae=["2", 0], direction=["4", 0], prompt=prompt,
                  word="man", strength=0.5, schedule="exponential", part="auto")
    inputs.update(over)
    return {"1": tiny(), "2": N("EditLabSAELoader", sae_name=f"{TOKEN}_ok.safetensors"),
            "3": N("CLIPTextEncode", text=prompt, clip=["1", 1]),
            "4": N("EditLabSAEDirectionLoader", direction_name=f"{TOKEN}_ok.safetensors"),
            "9": N("EditLabSAESlider", **inputs)}


def flow_inversion(sigma=1.0, multiplier=1.0):
    return {"1": tiny(), "2": N("CLIPTextEncode", text="a fox", clip=["1", 1]),
            "3": N("EmptySD3LatentImage", width=64, height=64, batch_size=1),
            "4": N("LatentMultiply", samples=["3", 0], multiplier=multiplier),
            "5": N("BasicScheduler", model=["1", 0], scheduler="simple", steps=2, denoise=1.0),
            "6": N("SetFirstSigma", sigmas=["5", 0], sigma=sigma),
            "9": N("EditLabFlowInversion", model=["1", 0], conditioning=["2", 0], latent=["4", 0], sigmas=["6", 0],
                   iterations=1)}


def stitch(person=None, mask=None, product=None, **over):
    graph = {"2": person or empty(), "3": mask or solid(), "4": product or empty(32, 32)}
    inputs = dict(person=["2", 0], mask=["3", 0], product=["4", 0], layout="side_by_side", height=64)
    inputs.update(over)
    graph["9"] = N("EditLabTryOnStitch", **inputs)
    return graph


def unstitch(generated=None, person=None, mask=None):
    graph = stitch()
    graph["8"] = graph.pop("9")
    graph["5"] = generated or empty(128, 64)
    graph["6"] = person or empty()
    graph["7"] = mask or solid()
    graph["9"] = N("EditLabTryOnUnstitch", generated=["5", 0], stitch=["8", 2], person=["6", 0], mask=["7", 0])
    return graph


def reference_tokens(image=None, **over):
    inputs = dict(conditioning=["3", 0], vae=["1", 2], image=["2", 0], method="offset", max_size=64)
    inputs.update(over)
    return {"1": tiny(), "2": image or empty(), "3": N("CLIPTextEncode", text="a bag", clip=["1", 1]),
            "9": N("EditLabReferenceTokens", **inputs)}


def face(image, **over):
    inputs = dict(image=["2", 0], face_index=0, allow_no_face=True)
    inputs.update(over)
    return {"2": image, "9": N("EditLabFaceBlendshapes", **inputs)}


def blendshape_edit(**over):
    inputs = dict(preset="smile", values="{}", symmetric=True, intensity=1.0)
    inputs.update(over)
    return {"9": N("EditLabBlendshapeEdit", **inputs)}


def flame(**over):
    inputs = dict(expression="0.5, -1", eyelid_left=0.0, eyelid_right=0.0, jaw_open=0.1, jaw_yaw=0.0, jaw_roll=0.0)
    inputs.update(over)
    return {"9": N("EditLabFLAMEExpression", **inputs)}


def apply_expression(**over):
    inputs = dict(model=["1", 0], adapter=["2", 0], blendshapes=["3", 0], strength=1.0, start_percent=0.0,
                  end_percent=1.0)
    inputs.update(over)
    return {"1": tiny("sd15"), "2": N("EditLabExpressionAdapterLoader", adapter_name=f"{TOKEN}_ok.safetensors"),
            "3": blendshape_edit()["9"], "9": N("EditLabApplyExpression", **inputs)}


def reference_adapter(reference=None, **over):
    inputs = dict(model=["1", 0], vae=["1", 2], reference=["2", 0], strength=0.8)
    inputs.update(over)
    return {"1": tiny("sd15"), "2": reference or empty(), "9": N("EditLabReferenceAdapter", **inputs)}


def train_adapter(**over):
    inputs = dict(model=["1", 0], clip=["1", 1], vae=["1", 2], folder=f"{TOKEN}_faces", prompt="a face",
                  resolution=64, steps=1, lr=1e-3, batch_size=1, num_tokens=2, seed=0, name=f"{TOKEN}_never")
    inputs.update(over)
    return {"1": tiny("sd15"), "9": N("EditLabTrainExpressionAdapter", **inputs)}


def train_reference_lora(**over):
    inputs = dict(model=["1", 0], clip=["1", 1], vae=["1", 2], adapter=["2", 0], folder=f"{TOKEN}_faces",
                  prompt="a face", resolution=64, steps=1, lr=1e-3, batch_size=1, rank=2, seed=0,
                  name=f"{TOKEN}_never")
    inputs.update(over)
    return {"1": tiny("sd15"), "2": N("EditLabExpressionAdapterLoader", adapter_name=f"{TOKEN}_sd15.safetensors"),
            "9": N("EditLabTrainReferenceLoRA", **inputs)}


def tova_train(**over):
    inputs = dict(model=["1", 0], clip=["1", 1], vae=["1", 2], folder=f"{TOKEN}_faces", prompt="a photo of a face",
                  word="face", resolution=64, rank=2, steps=1, lr=1e-3, batch_size=1, seed=0, name=f"{TOKEN}_never")
    inputs.update(over)
    return {"1": tiny("sd15"), "9": N("EditLabToVATrain", **inputs)}


def tova_apply(adapter_name, **over):
    inputs = dict(model=["1", 0], clip=["1", 1], prompt="a photo of sks dog", strength=1.0, adapter_1=["2", 0])
    inputs.update(over)
    return {"1": tiny("sd15"), "2": N("EditLabToVALoader", adapter_name=adapter_name),
            "9": N("EditLabToVAApply", **inputs)}


def loda(**over):
    inputs = dict(sampler=["2", 0], clip=["1", 1], prompt="a photo of a dog and a cat", concepts="dog, cat",
                  loda_steps=2, step_size=20.0, threshold=3.0, afg_strength=2.0)
    inputs.update(over)
    return {"1": tiny("sd15"), "2": N("KSamplerSelect", sampler_name="euler"), "9": N("EditLabLODA", **inputs)}


def loda_sampling(steps=4, **over):
    """LODA around euler inside SamplerCustom (node 9): the step count is known only there."""
    graph = loda(**over)
    graph["8"] = graph.pop("9")
    graph.update({"3": N("CLIPTextEncode", clip=["1", 1], text="a photo of a dog and a cat"),
                  "4": N("EmptyLatentImage", width=64, height=64, batch_size=1),
                  "5": N("BasicScheduler", model=["1", 0], scheduler="simple", steps=steps, denoise=1.0),
                  "9": N("SamplerCustom", model=["1", 0], add_noise=True, noise_seed=0, cfg=1.0, positive=["3", 0],
                         negative=["3", 0], sampler=["8", 0], sigmas=["5", 0], latent_image=["4", 0])})
    return graph


def attention_maps(**over):
    inputs = dict(model=["1", 0], clip=["1", 1], positive=["3", 0], negative=["3", 0], latent_image=["4", 0],
                  prompt="a photo of a dog and a cat", words="dog, cat", seed=0, steps=2, cfg=1.0,
                  sampler_name="euler", scheduler="simple", start_step=0, end_step=2)
    inputs.update(over)
    return {"1": tiny("sd15"), "3": N("CLIPTextEncode", clip=["1", 1], text="a photo of a dog and a cat"),
            "4": N("EmptyLatentImage", width=64, height=64, batch_size=1), "9": N("EditLabAttentionMaps", **inputs)}


# -- chronoedit --
def chrono_cond(**over):
    """ChronoEdit Conditioning on the tiny Wan as node 9."""
    inputs = dict(positive=["3", 0], negative=["3", 0], vae=["1", 2], image=["2", 0], target_area=48 * 32, width=48,
                  height=32, reasoning=True, reasoning_frames=3)
    inputs.update(over)
    return {"1": tiny("wan21_i2v"), "2": empty(48, 32), "3": N("CLIPTextEncode", text="the cup is red", clip=["1", 1]),
            "9": N("EditLabChronoEditConditioning", **inputs)}


def chrono_sampler(model=None, **over):
    """The Temporal Reasoning Sampler on the tiny Wan's ChronoEdit Conditioning as node 9 (``model`` a link)."""
    graph = chrono_cond()
    graph["4"] = graph.pop("9")
    inputs = dict(model=model or ["1", 0], positive=["4", 0], negative=["4", 1], latent=["4", 2], seed=0, steps=2,
                  cfg=1.0, sampler_name="euler", scheduler="simple", reasoning_steps=1,
                  without_clip_vision=True)  # the tiny Wan has an image projection and no CLIP vision model here
    inputs.update(over)
    graph["9"] = N("EditLabTemporalReasoningSampler", **inputs)
    return graph


def chrono_video(vae):
    """Trajectory to Video as node 9 on the sampler's trajectory, with the VAE ``vae`` (a link)."""
    graph = chrono_sampler()
    graph["6"] = graph.pop("9")
    return graph | {"9": N("EditLabTrajectoryToVideo", trajectory=["6", 1], vae=vae)}
# -- worldtoimage --
def llm_node(**over):
    inputs = dict(base_url="http://127.0.0.1:9/v1", model="m", api_key_env="", temperature=0.0, timeout=5.0,
                  max_retries=0, vision=True)
    inputs.update(over)
    return {"9": N("EditLabLLM", **inputs)}


def world_to_image(**over):
    inputs = dict(model=["1", 0], clip=["1", 1], vae=["1", 2], prompt="a lamp", width=64, height=64, steps=1,
                  cfg=1.0, sampler_name="euler", scheduler="simple", seed=0, iterations=1, threshold=0.3,
                  candidates=1, references=0, reference_mode="none")
    inputs.update(over)
    return {"1": tiny(), "9": N("EditLabWorldToImage", **inputs)}


# -- the table ------------------------------------------------------------------------------------------------------

@dataclass
class Case:
    graph: dict  # API prompt; node "9" is the node expected to fail
    input: str  # the input the error must name
    says: str = ""  # a piece of the expected-value text
    never_quoted: list = field(default_factory=list)  # text that must not appear in the error


HUGE = f"{TOKEN}/wide_32768x16.png"  # in the server's input folder (written by the fixture)
BIG_TEXT = "x" * 1_000_000
CASES = {
    # -- the server must survive -------------------------------------------------------------------------------
    "face blendshapes 32768x16": Case(face(load(HUGE)), "image", "16384 px"),
    "face blendshapes 3x1": Case(face(empty(3, 1)), "image", "sides of 16"),
    "pose estimate 32768x16": Case({"2": load(HUGE), "9": N("EditLabPoseEstimate", image=["2", 0],
                                                             allow_no_person=True)}, "image", "8192 px"),
    "stitch product 32768x16": Case(stitch(product=load(HUGE)), "product", "8192 px"),
    "stitch person 32768x16": Case(stitch(person=load(HUGE)), "person", "8192 px"),
    "reference tokens 32768x16": Case(reference_tokens(load(HUGE)), "image", "8192 px"),
    "reference adapter 32768x16": Case(reference_adapter(load(HUGE)), "reference", "16384 px"),
    "trainer folder of unreadable images only": Case(train_adapter(folder=f"{TOKEN}_unreadable"), "folder",
                                                     "images with a face"),
    "sae features 10 kB prompt": Case(sae_features(prompt="a smiling man " * 800), "prompt", "4000 characters"),
    "sae features 1500 tokens": Case(sae_features(prompt="a " * 1500), "prompt", "512 tokens"),
    "sae slider 1 MB prompt": Case(sae_slider(prompt=BIG_TEXT), "prompt", "4000 characters"),
    "sae slider 1 MB word": Case(sae_slider(word=BIG_TEXT), "word", "4000 characters"),
    "sae slider prompt not the conditioning's": Case(sae_slider(prompt="a photo of a woman and a man"), "prompt",
                                                     "the text this conditioning was encoded from"),
    "sae slider prompt other than the recorded one": Case(
        sae_slider(prompt="a photo of a woman and a man") | {
            "3": N("EditLabTextEncode", text="a photo of a man", clip=["1", 1])},
        "prompt", "the conditioning's own prompt"),
    "sae slider on a part the SAE was not trained on": Case(sae_slider(part="clip"), "part", "no CLIP tokens"),
    "text encode 1 MB text": Case({"1": tiny(), "9": N("EditLabTextEncode", text=BIG_TEXT, clip=["1", 1])}, "text",
                                  "4000 characters"),
    "adapter trainer 1 MB prompt": Case(train_adapter(prompt=BIG_TEXT), "prompt", "4000 characters"),
    "sae train 5 kB prompt line": Case(sae_train(prompts="a" * 5000), "prompts", "4000 characters"),
    # -- nothing escapes ---------------------------------------------------------------------------------------
    "prompts_file links out": Case(sae_train(prompts_file=f"{TOKEN}_link.txt"), "prompts_file", "inside",
                                   [SECRET]),
    "prompts_file ../ out": Case(sae_train(prompts_file="../../../../etc/passwd"), "prompts_file", "inside",
                                 ["root:"]),
    "prompts_file absolute": Case(sae_train(prompts_file="/etc/passwd"), "prompts_file", "inside", ["root:"]),
    "pairs_file links out": Case(sae_direction(pairs_file=f"{TOKEN}_link.txt"), "pairs_file", "inside", [SECRET]),
    "pairs_file latin-1": Case(sae_direction(pairs_file=f"{TOKEN}_latin1.txt"), "pairs_file", "UTF-8", ["caf"]),
    "trainer folder links out": Case(train_adapter(folder=f"{TOKEN}_linked_dir"), "folder", "inside"),
    "trainer folder ../": Case(train_adapter(folder=".."), "folder", "inside"),
    "sae train name with folders": Case(sae_train(name="../escape"), "name", "no folders"),
    "sae train existing name": Case(sae_train(name=f"{TOKEN}_ok"), "name", "overwrite"),
    "sae direction existing name": Case(sae_direction(name=f"{TOKEN}_ok"), "name", "overwrite"),
    "adapter trainer existing name": Case(train_adapter(name=f"{TOKEN}_ok", folder=f"{TOKEN}_faces"), "name",
                                          "overwrite"),
    # -- non-finite numbers ------------------------------------------------------------------------------------
    "blendshape edit intensity NaN": Case(blendshape_edit(intensity=NAN), "intensity", "finite"),
    "flame expression values NaN": Case(flame(expression="nan, 1"), "expression", "finite"),
    "flame expression values inf": Case(flame(expression="1, inf"), "expression", "finite"),
    "flame eyelid NaN": Case(flame(eyelid_left=NAN), "eyelid_left", "finite"),
    "flame jaw NaN": Case(flame(jaw_open=NAN), "jaw_open", "finite"),
    "apply expression start_percent NaN": Case(apply_expression(start_percent=NAN), "start_percent", "finite"),
    "apply expression end_percent NaN": Case(apply_expression(end_percent=NAN), "end_percent", "finite"),
    "apply expression strength NaN": Case(apply_expression(strength=NAN), "strength", "finite"),
    "reference adapter strength NaN": Case(reference_adapter(strength=NAN), "strength", "finite"),
    "sae direction percentile NaN": Case(sae_direction(percentile=NAN), "percentile", "finite"),
    "sae train lr NaN": Case(sae_train(lr=NAN), "lr", "finite"),
    "sae slider strength NaN": Case(sae_slider(strength=NAN), "strength", "finite"),
    "adapter trainer lr NaN": Case(train_adapter(lr=NAN), "lr", "finite"),
    "apply expression end_percent NaN from a link": Case(apply_expression(end_percent=["5", 0]) |
                                                         {"5": N("PrimitiveFloat", value=NAN)}, "end_percent",
                                                         "finite"),
    "flame jaw NaN from a link": Case(flame(jaw_open=["5", 0]) | {"5": N("PrimitiveFloat", value=NAN)}, "jaw_open",
                                      "finite"),
    "flow inversion sigmas of NaN": Case(flow_inversion(sigma=NAN), "sigmas", "finite"),
    "flow inversion latent of NaN": Case(flow_inversion(multiplier=NAN), "latent", "finite"),
    "stitch mask of NaN": Case(stitch(mask=solid(NAN)), "mask", "NaN"),
    "stitch product of NaN": Case({**stitch(product=N("MaskToImage", mask=["5", 0])), "5": solid(NAN, 32, 32)},
                                  "product", "finite"),
    "unstitch generated of NaN": Case({**unstitch(generated=N("MaskToImage", mask=["10", 0])),
                                       "10": solid(NAN, 128, 64)}, "generated", "NaN"),
    "face blendshapes image of NaN": Case({**face(N("MaskToImage", mask=["5", 0])), "5": solid(NAN)}, "image",
                                          "finite"),
    # -- the right input named ---------------------------------------------------------------------------------
    "sae train top_k over dict_size": Case(sae_train(top_k=32), "top_k", "dict_size"),
    "sae train groups zero": Case(sae_train(matryoshka_groups="0,16"), "matryoshka_groups", "positive"),
    "sae train groups negative": Case(sae_train(matryoshka_groups="-8,24"), "matryoshka_groups", "positive"),
    "sae train groups not numbers": Case(sae_train(matryoshka_groups="a,b"), "matryoshka_groups", "whole numbers"),
    "sae train groups wrong sum": Case(sae_train(matryoshka_groups="4,4"), "matryoshka_groups", "adding up"),
    "sae direction unknown method": Case(sae_direction(method="median"), "method", "one of svd, mean"),
    "stitch unknown layout": Case(stitch(layout="diagonal"), "layout", "one of side_by_side"),
    "stitch product batch mismatch": Case(stitch(person=empty(batch=2), product=empty(32, 32, batch=3)),
                                          "product", "batch"),
    "stitch mask of another size": Case(stitch(mask=solid(0.5, 48, 64)), "mask", "same size"),
    "unstitch wrong person image": Case(unstitch(person=empty(48, 48)), "person", "stitch was made from"),
    "unstitch generated of another size": Case(unstitch(generated=empty(32, 32)), "generated", "canvas"),
    "unstitch 17x9 mask": Case(unstitch(mask=solid(0.5, 17, 9)), "mask", "same size"),
    "reference tokens unknown method": Case(reference_tokens(method="sideways"), "method", "one of offset"),
    "tiny models unknown architecture": Case({"9": tiny("sd9")}, "architecture", "one of flux"),
    "sae features unknown part": Case(sae_features(part="both"), "part", "one of auto"),
    "sae slider unknown schedule": Case(sae_slider(schedule="cosine"), "schedule", "one of"),
    "blendshape edit unknown preset": Case(blendshape_edit(preset="smirk"), "preset", "one of neutral"),
    "try-on mask unknown category": Case({"2": empty(), "3": N("EditLabPoseEstimate", image=["2", 0],
                                                               allow_no_person=True),
                                          "9": N("EditLabTryOnMask", pose=["3", 0], category="cape", grow=8,
                                                 feather=8, keep_face=True, keep_hands=True)}, "category",
                                         "one of upper"),
    # -- raw exceptions that leaked ----------------------------------------------------------------------------
    "tova train word not in the prompt": Case(tova_train(word="dog", captions="prompt for every image"), "word",
                                              "is not a word of the prompt"),
    "tova train template without {}": Case(tova_train(templates="a photo of a {}\na photo"), "templates",
                                           "needs {}"),
    "tova train lr NaN": Case(tova_train(lr=NAN), "lr", "finite"),
    "tova train folder ../": Case(tova_train(folder=".."), "folder", "inside"),
    "tova apply adapter for another family": Case(tova_apply(f"{TOKEN}_sdxl.safetensors"), "adapter_1",
                                                  "family (sd15)"),
    "tova apply strength NaN": Case(tova_apply(f"{TOKEN}_sdxl.safetensors", strength=NAN), "strength", "finite"),
    "loda a single concept": Case(loda(concepts="dog"), "concepts", "2 to 16"),
    "loda concept not in the prompt": Case(loda(concepts="dog, horse"), "concepts", "is not a word of the prompt"),
    "loda step_size NaN": Case(loda(step_size=NAN), "step_size", "finite"),
    "loda more steps than the sampling has": Case(loda_sampling(loda_steps=5, steps=4), "loda_steps",
                                                  "at most the 4 sampling steps"),
    "tova apply adapter for another width": Case(tova_apply(f"{TOKEN}_width.safetensors"), "adapter_1",
                                                 "-wide text context"),
    "tova loader wrong shapes": Case({"9": N("EditLabToVALoader", adapter_name=f"{TOKEN}_shape.safetensors")},
                                     "adapter_name", "has down (4, 31)"),
    "attention maps word not in the prompt": Case(attention_maps(words="dog, horse"), "words",
                                                  "is not a word of the prompt"),
    "attention maps cfg NaN": Case(attention_maps(cfg=NAN), "cfg", "finite"),
    "attention maps empty step range": Case(attention_maps(start_step=2, end_step=2), "start_step", "before end_step"),
    "tova loader missing metadata": Case({"9": N("EditLabToVALoader", adapter_name=f"{TOKEN}_nometa.safetensors")},
                                         "adapter_name", "lacks the ToVA metadata"),
    "sae loader 1-D tensors": Case({"9": N("EditLabSAELoader", sae_name=f"{TOKEN}_1d.safetensors")}, "sae_name",
                                   "W_enc must be"),
    "sae loader config not matching": Case({"9": N("EditLabSAELoader", sae_name=f"{TOKEN}_mismatch.safetensors")},
                                           "sae_name", "its tensors are"),
    "sae loader extra config keys": Case({"9": N("EditLabSAELoader", sae_name=f"{TOKEN}_extra.safetensors")},
                                         "sae_name", "unknown config keys"),
    "sae loader zero width": Case({"9": N("EditLabSAELoader", sae_name=f"{TOKEN}_zero.safetensors")}, "sae_name",
                                  "inconsistent shapes"),
    "direction loader bad metadata": Case({"9": N("EditLabSAEDirectionLoader",
                                                  direction_name=f"{TOKEN}_badjson.safetensors")},
                                          "direction_name", "not valid JSON"),
    "adapter loader zero-width norm": Case({"9": N("EditLabExpressionAdapterLoader",
                                                   adapter_name=f"{TOKEN}_zeronorm.bin")}, "adapter_name",
                                           "non-empty"),
    "adapter loader image_proj as list": Case({"9": N("EditLabExpressionAdapterLoader",
                                                      adapter_name=f"{TOKEN}_list.bin")}, "adapter_name",
                                              "dict of name -> tensor"),
    "adapter loader extra keys": Case({"9": N("EditLabExpressionAdapterLoader",
                                              adapter_name=f"{TOKEN}_extra.bin")}, "adapter_name", "Unexpected"),
    "adapter loader 1-D projection": Case({"9": N("EditLabExpressionAdapterLoader",
                                                  adapter_name=f"{TOKEN}_1d.bin")}, "adapter_name", "2-d tensor"),
    "face blendshapes RGBA 3x1": Case(face(N("JoinImageWithAlpha", image=["3", 0], alpha=["4", 0])) |
                                      {"3": empty(3, 1), "4": solid(0.5, 3, 1)}, "image", "sides of 16"),
    "blendshape edit 100000-deep JSON": Case(blendshape_edit(values="[" * 100_000 + "]" * 100_000), "values",
                                             "100000 characters"),
    "blendshape edit 10000-deep JSON": Case(blendshape_edit(values="{\"a\": " * 10_000 + "1" + "}" * 10_000),
                                            "values", "nested too deeply"),
    "blendshape edit 1 MB value": Case(blendshape_edit(values=BIG_TEXT), "values", "100000 characters"),
    "blendshape edit unknown name": Case(blendshape_edit(values=json.dumps({"k" * 50_000: 1})), "values",
                                         "ARKit"),
    # -- chronoedit --
    "chronoedit sampler on a flux model": Case(chrono_sampler(model=["5", 0]) | {"5": tiny("flux")}, "model",
                                               "image-to-video"),
    "chronoedit reasoning_steps over steps": Case(chrono_sampler(steps=2, reasoning_steps=3), "reasoning_steps",
                                                  "at most steps"),
    "chronoedit sampler cfg NaN": Case(chrono_sampler(cfg=NAN), "cfg", "finite"),
    "chronoedit sampler on an empty latent": Case(chrono_sampler(latent=["5", 0]) | {
        "5": N("EmptyLatentImage", width=48, height=32, batch_size=1)}, "latent", "ChronoEdit Conditioning"),
    "chronoedit 2 reasoning frames": Case(chrono_cond(reasoning_frames=2), "reasoning_frames", "3 to 21"),
    "chronoedit vae without frames": Case(chrono_cond(vae=["5", 2]) | {"5": tiny("flux")}, "vae", "video VAE"),
    "chronoedit width not a multiple of 16": Case(chrono_cond(width=40), "width", "multiple of 16"),
    "chronoedit trajectory with a flux vae": Case(chrono_video(["5", 2]) | {"5": tiny("flux")}, "vae", "video VAE"),
    # -- worldtoimage --
    "llm key pasted as the variable name": Case(llm_node(api_key_env="sk-live-0123456789abcdefXYZ"), "api_key_env",
                                                "NAME of an environment variable",
                                                never_quoted=["sk-live-0123456789abcdefXYZ"]),
    "llm file:// base url": Case(llm_node(base_url="file:///etc/passwd"), "base_url", "http:// or https://"),
    "llm temperature NaN": Case(llm_node(temperature=NAN), "temperature", "finite"),
    "image library folder outside input": Case({"9": N("EditLabImageLibrary", folder="../..", recursive=True)},
                                               "folder", "inside ComfyUI's input folder"),
    "web search template without {query}": Case({"9": N("EditLabWebImageSearch", service="custom_json",
                                                        endpoint="http://127.0.0.1:9/search", allow_loopback=True,
                                                        use_cache=False, timeout=5.0, max_megabytes=1.0,
                                                        max_megapixels=1.0)}, "endpoint", "{query}"),
    "image scorer vlm without llm": Case({"9": N("EditLabImageScorer", judge="vlm", formula="authors_gated",
                                                 vlm_aesthetic=False)}, "llm", "EditLab LLM"),
    "world-to-image empty prompt": Case(world_to_image(prompt="  "), "prompt", "1 to 2000 characters"),
    "world-to-image threshold NaN": Case(world_to_image(threshold=NAN), "threshold", "finite"),
    "viescore empty instruction": Case({"1": llm_node()["9"], "2": empty(), "9": N(
        "EditLabVIEScore", llm=["1", 0], instruction=" ", source_image=["2", 0], edited_image=["2", 0])},
        "instruction", "edit instruction"),
    # -- layered --
    "layered adapters window reversed": Case({"1": tiny(), "9": N(
        "EditLabLayeredAdapters", model=["1", 0], clip=["1", 1], pattern_shift_lora="None",
        pattern_shift_strength=1.0, pattern_shift_start=0.8, pattern_shift_end=0.2, consistency_lora="None",
        consistency_strength=1.0, consistency_start=0.0, consistency_end=1.0)}, "pattern_shift_start",
        "pattern_shift_start < pattern_shift_end"),
    "layered adapters LoRA for another model": Case({"1": tiny(), "9": N(
        "EditLabLayeredAdapters", model=["1", 0], clip=["1", 1], pattern_shift_lora="None",
        pattern_shift_strength=1.0, pattern_shift_start=0.0, pattern_shift_end=1.0,
        consistency_lora=f"{TOKEN}_foreign.safetensors", consistency_strength=1.0, consistency_start=0.0,
        consistency_end=1.0)}, "consistency_lora", "a LoRA for this model"),
    "layered adapters strength NaN": Case({"1": tiny(), "9": N(
        "EditLabLayeredAdapters", model=["1", 0], clip=["1", 1], pattern_shift_lora="None",
        pattern_shift_strength=NAN, pattern_shift_start=0.0, pattern_shift_end=1.0, consistency_lora="None",
        consistency_strength=1.0, consistency_start=0.0, consistency_end=1.0)}, "pattern_shift_strength", "finite"),
    "product lock empty mask": Case({"2": empty(), "3": solid(0.0), "9": N(
        "EditLabProductLock", original=["2", 0], edited=["2", 0], mask=["3", 0], feather=4, colour_match=0.0)},
        "mask", "empty"),
    "product lock full mask": Case({"2": empty(), "3": solid(1.0), "9": N(
        "EditLabProductLock", original=["2", 0], edited=["2", 0], mask=["3", 0], feather=4, colour_match=0.0)},
        "mask", "covers all"),
    "product lock mask of another size": Case({"2": empty(), "3": solid(1.0, 32, 64), "9": N(
        "EditLabProductLock", original=["2", 0], edited=["2", 0], mask=["3", 0], feather=4, colour_match=0.0)},
        "mask", "images' size"),
    "product lock batch mismatch": Case({"2": empty(batch=2), "4": empty(batch=3), "3": solid(1.0), "9": N(
        "EditLabProductLock", original=["2", 0], edited=["4", 0], mask=["3", 0], feather=4, colour_match=0.0)},
        "original", "one original or one per edited image"),
    "product lock colour_match NaN": Case({"2": empty(), "3": solid(1.0), "9": N(
        "EditLabProductLock", original=["2", 0], edited=["2", 0], mask=["3", 0], feather=4, colour_match=NAN)},
        "colour_match", "finite"),
    "consistency report edited of another size": Case({"2": empty(), "4": empty(32, 32), "9": N(
        "EditLabEditConsistency", original=["2", 0], edited=["4", 0], filename_prefix="")}, "edited",
        "original's size"),
    "consistency report prefix out of the output folder": Case({"2": empty(), "9": N(
        "EditLabEditConsistency", original=["2", 0], edited=["2", 0], filename_prefix="../../escape")},
        "filename_prefix", "inside ComfyUI's output folder"),
    "layered train folder ../": Case({"1": tiny(), "9": N(
        "EditLabLayeredTrain", model=["1", 0], clip=["1", 1], vae=["1", 2], folder="..", stages="both",
        pattern_shift_lora="None", resolution=64, rank=2, steps_stage1=1, steps_stage2=1, lr=1e-3,
        product_weight=5.0, guidance=2.5, seed=0, name=f"{TOKEN}_never")}, "folder", "inside"),
    "layered train pairs without masks": Case({"1": tiny(), "9": N(
        "EditLabLayeredTrain", model=["1", 0], clip=["1", 1], vae=["1", 2], folder=f"{TOKEN}_pairs", stages="both",
        pattern_shift_lora="None", resolution=64, rank=2, steps_stage1=1, steps_stage2=1, lr=1e-3,
        product_weight=5.0, guidance=2.5, seed=0, name=f"{TOKEN}_never")}, "folder", "product masks"),
    "layered train on sd15": Case({"1": tiny("sd15"), "9": N(
        "EditLabLayeredTrain", model=["1", 0], clip=["1", 1], vae=["1", 2], folder=f"{TOKEN}_pairs", stages="both",
        pattern_shift_lora="None", resolution=64, rank=2, steps_stage1=1, steps_stage2=1, lr=1e-3,
        product_weight=5.0, guidance=2.5, seed=0, name=f"{TOKEN}_never")}, "model", "Flux-family"),
    "layered train lr NaN": Case({"1": tiny(), "9": N(
        "EditLabLayeredTrain", model=["1", 0], clip=["1", 1], vae=["1", 2], folder=f"{TOKEN}_pairs", stages="both",
        pattern_shift_lora="None", resolution=64, rank=2, steps_stage1=1, steps_stage2=1, lr=NAN,
        product_weight=5.0, guidance=2.5, seed=0, name=f"{TOKEN}_never")}, "lr", "finite"),
    # -- expression (issue 16: reference LoRA, stage 2) --
    "reference adapter trained mode without a lora": Case(reference_adapter(mode="trained LoRA"), "lora",
                                                          "connected"),
    "reference adapter lora without trained mode": Case(
        reference_adapter(lora=["3", 0]) | {"3": N("EditLabReferenceLoRALoader",
                                                   lora_name=f"{TOKEN}_other.safetensors")}, "mode", "trained LoRA"),
    "reference adapter lora_scale NaN": Case(reference_adapter(lora_scale=NAN), "lora_scale", "finite"),
    "reference adapter lora for another UNet": Case(
        reference_adapter(mode="trained LoRA", lora=["3", 0]) | {"3": N("EditLabReferenceLoRALoader",
                                                                        lora_name=f"{TOKEN}_other.safetensors")},
        "lora", "does not fit"),
    "reference lora loader corrupt file": Case({"9": N("EditLabReferenceLoRALoader",
                                                       lora_name=f"{TOKEN}_corrupt.safetensors")}, "lora_name",
                                               "cannot read"),
    "reference lora loader another format": Case({"9": N("EditLabReferenceLoRALoader",
                                                         lora_name=f"{TOKEN}_format.safetensors")}, "lora_name",
                                                 "not a reference LoRA"),
    "reference lora trainer FLAME adapter": Case(train_reference_lora() | {
        "2": N("EditLabExpressionAdapterLoader", adapter_name=f"{TOKEN}_flame.safetensors")}, "adapter", "ARKit-52"),
    "reference lora trainer adapter for another UNet": Case(train_reference_lora() | {
        "2": N("EditLabExpressionAdapterLoader", adapter_name=f"{TOKEN}_ok.safetensors")}, "adapter",
        "cross-attention layers"),
    "reference lora trainer lr NaN": Case(train_reference_lora(lr=NAN), "lr", "finite"),
    "reference lora trainer folder ../": Case(train_reference_lora(folder=".."), "folder", "inside"),
    "reference lora trainer 1 MB prompt": Case(train_reference_lora(prompt=BIG_TEXT), "prompt", "4000 characters"),
}


# -- fixtures -------------------------------------------------------------------------------------------------------

_SERVER_MODELS: list[Path] = []


@pytest.fixture(autouse=True, scope="module")
def _server_models(server):
    """The session server's models/ folder (a temporary base directory, never the host's tree)."""
    _SERVER_MODELS[:] = [server.models_dir]


def _model_dir(folder: str) -> Path:
    return _SERVER_MODELS[0] / folder


def _queue(server, graph: dict, timeout=600):
    """Queue ``graph`` with a sink on node 9 (unless it is an output node already); the history entry."""
    prompt = json.loads(json.dumps(graph))
    prompt.setdefault("99", N("PreviewAny", source=["9", 0]))
    return server.client.wait(server.client.queue(prompt), timeout=timeout)


def _error(server, graph: dict) -> str:
    try:
        _queue(server, graph)
    except PromptFailed as exc:
        return str(exc)
    except ClientError as exc:
        return "REJECTED AT VALIDATION: " + str(exc)
    raise AssertionError("the prompt succeeded")


def _written(server) -> dict:
    """What a run may have written: every output file, and this module's files in the model folders."""
    found = {}
    roots = [server.workdir / "output"] + [_model_dir(f) for f in MODEL_FOLDERS]
    for root in roots:
        for path in root.rglob("*") if root.is_dir() else []:
            if path.is_file() and (root == roots[0] or TOKEN in path.name):
                st = path.stat()
                found[str(path)] = (st.st_size, st.st_mtime_ns)
    return found


def _save_sae(path, d, m, config=None, flat=False):
    import torch
    from safetensors.torch import save_file

    t = {"W_enc": torch.randn(d, m), "W_dec": torch.randn(m, d), "b_dec": torch.zeros(d), "b_enc": torch.zeros(m),
         "threshold": torch.tensor(0.1)}
    if flat:
        t = {k: v.flatten() for k, v in t.items()}
    cfg = {"act_size": d, "dict_size": m, "top_k": 2, **(config or {})}
    save_file(t, str(path), metadata={"format": "editlab.sae.v1", "config": json.dumps(cfg), "encoder": "t5"})


def _bad_adapters(folder: Path):
    import torch

    from editlab.models.expression.adapter import random_adapter, save_adapter

    adapter = random_adapter(52, 32, [16, 16], num_tokens=2, form="linear")
    save_adapter(adapter, str(folder / f"{TOKEN}_ok.safetensors"), "arkit52")
    for name, change in (("zeronorm", lambda p, i: p.update({"norm.weight": torch.zeros(0)})),
                         ("list", None), ("extra", lambda p, i: p.update({"surprise.weight": torch.zeros(2)})),
                         ("1d", lambda p, i: p.update({"proj.weight": p["proj.weight"].flatten()}))):
        image_proj, ip = adapter.parts()
        if change:
            change(image_proj, ip)
        else:
            image_proj = list(image_proj.values())
        torch.save({"image_proj": image_proj, "ip_adapter": ip}, folder / f"{TOKEN}_{name}.bin")


def _tova_files(folder: Path):
    import torch
    from safetensors.torch import save_file

    from editlab.models.conceptsplit.tova import ValueLoRA, save_tova

    save_tova(ValueLoRA("sks", "sdxl", 2, 64, {"input.4.0": 128}), folder / f"{TOKEN}_sdxl.safetensors")
    save_tova(ValueLoRA("sks", "sd15", 2, 7, {"input.1.0": 32}), folder / f"{TOKEN}_width.safetensors")
    meta = {"format": "editlab.tova.v1", "token": "dog", "family": "sd15", "rank": "4", "context_dim": "32",
            "layers": '["input.1.0"]'}
    save_file({"input.1.0.down": torch.zeros(4, 31), "input.1.0.up": torch.zeros(64, 4)},
              str(folder / f"{TOKEN}_shape.safetensors"), metadata=meta)
    save_file({"input.1.0.down": torch.zeros(2, 32), "input.1.0.up": torch.zeros(64, 2)},
              str(folder / f"{TOKEN}_nometa.safetensors"))


def _reference_lora_files(loras: Path, adapters: Path):
    """-- expression (issue 16) --: reference LoRA files and the adapters the stage-2 rows load."""
    import torch
    from safetensors.torch import save_file

    from editlab.models.expression.adapter import random_adapter, save_adapter

    tiny_sd15 = [64, 128, 128, 128, 64, 64, 128]  # the tiny SD1.5's cross-attention widths
    save_adapter(random_adapter(52, 32, tiny_sd15, num_tokens=2), str(adapters / f"{TOKEN}_sd15.safetensors"),
                 "arkit52")
    save_adapter(random_adapter(55, 32, [16, 16], num_tokens=2), str(adapters / f"{TOKEN}_flame.safetensors"),
                 "flame55")
    meta = {"format": "editlab.reference_lora.v1", "rank": "2", "alpha": "2.0", "layers": '["input_1_0"]'}
    save_file({"input_1_0.to_q.lora_A.weight": torch.zeros(2, 7)}, str(loras / f"{TOKEN}_other.safetensors"),
              metadata=meta)
    save_file({"x": torch.zeros(2)}, str(loras / f"{TOKEN}_format.safetensors"),
              metadata={**meta, "format": "editlab.tova.v1"})
    (loras / f"{TOKEN}_corrupt.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")


@pytest.fixture(scope="module")
def prepared(server, workflow_inputs, tmp_path_factory):
    """The files the table refers to, made before any row runs; removed (with all TOKEN files) at the end."""
    from PIL import Image

    pid = server.proc.pid
    inputs = server.workdir / "input"
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.txt").write_text(SECRET + "\n| a second line\n")
    shutil.copy(REPO / "workflows" / "input" / "editlab_photo.png", outside / "face.png")
    (inputs / TOKEN).mkdir()
    Image.new("RGB", (32768, 16), (200, 180, 160)).save(inputs / HUGE)
    (inputs / f"{TOKEN}_link.txt").symlink_to(outside / "secret.txt")
    (inputs / f"{TOKEN}_latin1.txt").write_bytes("caf\xe9 | caf\xe9s cr\xe8me\n".encode("latin-1"))
    (inputs / f"{TOKEN}_linked_dir").symlink_to(outside, target_is_directory=True)
    faces, unreadable = inputs / f"{TOKEN}_faces", inputs / f"{TOKEN}_unreadable"
    faces.mkdir()
    unreadable.mkdir()
    shutil.copy(REPO / "workflows" / "input" / "editlab_photo.png", faces / "a_face.png")
    for folder in (faces, unreadable):
        (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
        Image.new("RGB", (32768, 16), (90, 90, 90)).save(folder / "wide.png")
        (folder / "outside_link.png").symlink_to(outside / "face.png")
    for folder in MODEL_FOLDERS:
        _model_dir(folder).mkdir(parents=True, exist_ok=True)
    sae_dir, dir_dir = _model_dir("sae"), _model_dir("sae_directions")
    _save_sae(sae_dir / f"{TOKEN}_1d.safetensors", 8, 16, flat=True)
    _save_sae(sae_dir / f"{TOKEN}_mismatch.safetensors", 8, 16, {"act_size": 12})
    _save_sae(sae_dir / f"{TOKEN}_extra.safetensors", 8, 16, {"shiny": True})
    _save_sae(sae_dir / f"{TOKEN}_zero.safetensors", 0, 16)
    _bad_adapters(_model_dir("expression_adapters"))
    _tova_files(_model_dir("tova"))
    # layered: a LoRA for another model, a pair folder without product masks
    from safetensors.torch import save_file as _save_lora
    from torch import zeros as _zeros

    _save_lora({"lora_unet_nothing_here.lora_up.weight": _zeros(2, 2),
                "lora_unet_nothing_here.lora_down.weight": _zeros(2, 2)},
               str(_model_dir("loras") / f"{TOKEN}_foreign.safetensors"))
    pairs = inputs / f"{TOKEN}_pairs"
    pairs.mkdir()
    shutil.copy(REPO / "workflows" / "input" / "editlab_product_bag.png", pairs / "bag_source.png")
    shutil.copy(REPO / "workflows" / "input" / "editlab_product_bag_watermarked.png", pairs / "bag_target.png")
    (pairs / "bag.txt").write_text("add a watermark")
    _reference_lora_files(_model_dir("expression_reference_loras"), _model_dir("expression_adapters"))
    # a real SAE and direction for the tiny Flux, made by the nodes themselves
    _queue(server, sae_train(name=f"{TOKEN}_ok", generated_prompts=40))
    _queue(server, sae_direction(name=f"{TOKEN}_ok"))
    import torch
    from safetensors.torch import save_file

    save_file({"direction": torch.zeros(16), "feature_ids": torch.zeros(1, dtype=torch.int64),
               "weights": torch.zeros(1)}, str(dir_dir / f"{TOKEN}_badjson.safetensors"),
              metadata={"format": "editlab.sae_direction.v1", "pairs": "[[", "sae": f"{TOKEN}_ok.safetensors"})
    yield {"pid": pid, "outside": outside, "inputs": inputs}
    for folder in MODEL_FOLDERS:
        for path in _model_dir(folder).glob(f"*{TOKEN}*"):
            path.unlink()
    for path in inputs.glob(f"{TOKEN}*"):
        if path.is_symlink() or path.is_file():
            path.unlink()
        else:
            shutil.rmtree(path)


# -- the tests ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_named_and_writes_nothing(case, server, prepared):
    row = CASES[case]
    before = _written(server)
    message = _error(server, row.graph)
    if message.startswith("REJECTED") and "Value not in list" in message:
        # Newer hosts (0.33) check COMBO values themselves before running anything: their validation error names the
        # node and the input too (older hosts let the pack's own check say it).
        assert f"node 9 (" in message and f"{row.input}: " in message and "not in [" in message, message[:2000]
    else:
        assert not message.startswith("REJECTED"), message
        assert message.startswith("node 9 ("), message  # the node that got the bad value, not one downstream
        assert f"input '{row.input}': expected" in message, message[:2000]
        assert row.says in message, message[:2000]
    assert len(message) < 2000, f"{len(message)} characters"
    for text in row.never_quoted:
        assert text not in message, message
    assert _written(server) == before, "a failing prompt wrote files"
    assert server.proc.poll() is None and server.proc.pid == prepared["pid"], "the server process died"


def test_symlinks_are_never_followed_out(server, prepared):
    """prompts_file / pairs_file / folder links out of the input folder are refused without quoting the file; a link
    inside a training folder is skipped and listed, not trained on."""
    for graph, name in ((sae_train(prompts_file=f"{TOKEN}_link.txt"), "prompts_file"),
                        (sae_direction(pairs_file=f"{TOKEN}_link.txt"), "pairs_file"),
                        (train_adapter(folder=f"{TOKEN}_linked_dir"), "folder"),
                        (train_adapter(folder=f"{TOKEN}_linked_dir/."), "folder")):
        message = _error(server, graph)
        assert f"input '{name}': expected" in message and SECRET not in message, message
    entry = _queue(server, train_adapter(name=f"{TOKEN}_trained"))
    (_, _, text), = [t for t in text_outputs(entry) if t[0] == "9"]
    stats = json.loads(text)
    assert stats["images"] == 1, stats  # a_face.png only
    listed = " ".join(stats["unreadable"])
    for name in ("outside_link.png: links outside", "corrupt.png: not a readable image", "wide.png: 32768x16"):
        assert name in listed, stats


SAVERS = {
    "sae": (lambda name, seed, **o: sae_train(name=name, seed=seed, **o), "sae"),
    "direction": (lambda name, seed, **o: sae_direction(name=name, pairs=f"a man | a smiling man {seed}", **o),
                  "sae_directions"),
    "adapter": (lambda name, seed, **o: train_adapter(name=name, seed=seed, folder=f"{TOKEN}_faces", **o),
                "expression_adapters"),
    # -- expression (issue 16) --
    "reference_lora": (lambda name, seed, **o: train_reference_lora(name=name, seed=seed, **o),
                       "expression_reference_loras"),
}


@pytest.mark.parametrize("kind", list(SAVERS))
def test_overwrite_only_when_asked(kind, server, prepared):
    build, folder = SAVERS[kind]
    name = f"{TOKEN}_{kind}_ow"
    path = _model_dir(folder) / f"{name}.safetensors"
    _queue(server, build(name, 1))
    first = path.read_bytes()
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, oct(path.stat().st_mode)  # not 0600
    message = _error(server, build(name, 2))  # another seed: the node runs again, and must not replace the file
    assert "input 'name': expected a name not used yet" in message and "overwrite" in message, message
    assert path.read_bytes() == first
    assert not list(_model_dir(folder).glob(f"{name}*.part"))
    _queue(server, build(name, 3, overwrite=True))
    assert path.read_bytes() != first
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask


NAN_PER_METHOD = {
    "saedit": ["sae slider strength NaN", "sae direction percentile NaN", "sae train lr NaN"],
    "tryon": ["stitch mask of NaN", "stitch product of NaN", "unstitch generated of NaN"],
    "expression": ["blendshape edit intensity NaN", "flame jaw NaN", "apply expression start_percent NaN",
                   "adapter trainer lr NaN"],
    # -- chronoedit --
    "chronoedit": ["chronoedit sampler cfg NaN"],
}


@pytest.mark.parametrize("method", list(NAN_PER_METHOD))
def test_nan_is_refused_per_method(method, server, prepared):
    """NaN reaches each method's nodes through the host (its min/max check lets NaN pass) and is refused by name."""
    for case in NAN_PER_METHOD[method]:
        row = CASES[case]
        message = _error(server, row.graph)
        assert f"input '{row.input}': expected" in message, (case, message)


def test_a_bad_direction_file_does_not_break_sae_features(server, prepared):
    import time

    def lines():
        return [l for l in server.log_tail(100000).splitlines() if f"{TOKEN}_badjson" in l]

    before = len(lines())
    entry = _queue(server, sae_features(prompt="a man in a park"))
    assert entry["status"]["status_str"] == "success"
    deadline = time.monotonic() + 10
    while len(lines()) == before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(lines()) - before == 1 and "skipping" in lines()[-1], lines()


def test_face_blendshapes_takes_an_rgba_image(server, prepared):
    graph = face(N("JoinImageWithAlpha", image=["3", 0], alpha=["4", 0]), allow_no_face=False)
    graph.update({"3": load("editlab_photo.png"), "4": N("ImageToMask", image=["3", 0], channel="red")})
    entry = _queue(server, graph)
    assert entry["status"]["status_str"] == "success"


def test_reference_tokens_on_flux_fill_stop_naming_the_node(server, prepared):
    """Reference Tokens on a Flux Fill conditioning (a stranger's graph: InpaintModelConditioning, then the
    references, then the stock KSampler): the sampler's execution error names Reference Tokens and what to use instead,
    not the host's tensor shape error; nothing is written; the server keeps serving."""
    graph = {"1": tiny("flux_fill"), "2": empty(), "3": N("CLIPTextEncode", text="a bag", clip=["1", 1]),
             "4": solid(1.0),
             "5": N("InpaintModelConditioning", positive=["3", 0], negative=["3", 0], vae=["1", 2], pixels=["2", 0],
                    mask=["4", 0], noise_mask=False),
             "6": N("EditLabReferenceTokens", conditioning=["5", 0], vae=["1", 2], image=["2", 0], method="offset",
                    max_size=64),
             "7": N("KSampler", model=["1", 0], seed=0, steps=1, cfg=1.0, sampler_name="euler", scheduler="simple",
                    positive=["6", 0], negative=["5", 1], latent_image=["5", 2], denoise=1.0),
             "8": N("VAEDecode", samples=["7", 0], vae=["1", 2]),
             "9": N("SaveImage", images=["8", 0], filename_prefix=TOKEN)}
    before = _written(server)
    message = _error(server, graph)
    assert message.startswith("node 7 ("), message[:2000]  # the sampler that met the model
    assert "Reference Tokens" in message and "Flux Fill" in message and "Try-On Stitch" in message, message[:2000]
    assert "Sizes of tensors must match" not in message, message[:2000]
    assert _written(server) == before, "a failing prompt wrote files"
    assert server.proc.poll() is None and server.proc.pid == prepared["pid"], "the server process died"


def test_table_size_and_the_server_still_serves(server, prepared, tmp_path):
    print(f"bad-input table: {len(CASES)} cases through the live server")
    assert len(CASES) >= 60
    assert server.proc.poll() is None and server.proc.pid == prepared["pid"]
    graph = json.loads((REPO / "tests" / "e2e" / "data" / "tiny_flux_t2i.json").read_text())
    entry = server.client.wait(server.client.queue(graph), timeout=300)
    assert entry["status"]["status_str"] == "success"
    assert server.proc.pid == prepared["pid"]
