"""ConceptSplit nodes: token-wise value adapters (ToVA) loaded, applied to a MODEL bound to their tokens, and trained.

The method lives in ``models/conceptsplit/``; these nodes check inputs, call it, clone, patch, return.
"""
from __future__ import annotations

import json
import os

import torch
from comfy_api.latest import io

from ..models.conceptsplit.patch import ToVAPatch, named_cross_attention_layers
from ..models.conceptsplit.tova import Binding, ToVAFileError, ValueLoRA, load_tova, save_tova
from ..models.saedit.tokens import prompt_tokens, word_positions
from . import host
from .common import (CATEGORY, EditLabInputError, EditLabNode, checked_image_size, inside_input_folder, input_folder,
                     output_file, saved)

CAT = f"{CATEGORY}/ConceptSplit"
TOVA_FOLDER = host.model_folder("tova", {".safetensors"})
ToVAType = io.Custom("EDITLAB_TOVA")
MAX_ADAPTERS = 4  # adapter_1 .. adapter_4 on the apply node
MAX_PROMPT_CHARS = 4000
MAX_TRAIN_IMAGES = 1000
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
UNET_FAMILIES = ("sd15", "sd2", "sdxl")


def _checked_prompt(prompt: str, input_name: str) -> str:
    if not prompt.strip():
        raise EditLabInputError(input_name, "a prompt holding the concepts' words")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise EditLabInputError(input_name, f"a prompt of at most {MAX_PROMPT_CHARS} characters", prompt)
    return prompt


def _unet_layers(model) -> dict:
    """The cross-attention layers of an SD1.5 / SD2.1 / SDXL MODEL by name; an error naming ``model`` otherwise."""
    family = host.model_family(model)
    layers = named_cross_attention_layers(model.get_model_object("diffusion_model")) \
        if family in UNET_FAMILIES else {}
    if not layers:
        raise EditLabInputError("model", "an SD1.5, SD2.1 or SDXL model (ToVA patches a UNet's cross-attention)",
                                family)
    return layers


def _check_adapter(adapter: ValueLoRA, input_name: str, family: str, layers: dict) -> None:
    """The adapter was trained for this model: same family, same context width, its layers there and as wide."""
    if adapter.family != family:
        raise EditLabInputError(input_name, f"an adapter trained for this model's family ({family})",
                                f"one for {adapter.family}")
    width = next(iter(layers.values())).to_v.weight.shape[1]
    if adapter.context_dim != width:
        raise EditLabInputError(input_name, f"an adapter for this model's {width}-wide text context",
                                f"one for a {adapter.context_dim}-wide context")
    for name, inner in adapter.inner_dims().items():
        if name not in layers or layers[name].to_v.weight.shape[0] != inner:
            raise EditLabInputError(input_name, "an adapter whose layers are this model's cross-attention layers",
                                    f"layer {name} ({inner} wide)")


def _positions(clip, prompt: str, word: str, input_name: str, for_input: str) -> list[int]:
    """Conditioning positions of ``word`` in ``prompt`` (the SAE slider's text-to-positions code)."""
    try:
        encoded = prompt_tokens(clip, prompt)
    except ValueError as exc:
        raise EditLabInputError(input_name, str(exc)) from None
    try:
        return word_positions(clip, encoded, word)
    except ValueError as exc:
        raise EditLabInputError(input_name, f"a prompt holding the word of {for_input}: {exc}", prompt) from None


class EditLabToVALoader(EditLabNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EditLabToVALoader", display_name="ToVA Loader", category=CAT,
            description="Loads one concept's token-wise value adapter (ToVA) from models/tova/: a value-only LoRA "
                        "for the cross-attention layers, with the concept's word and the model family it was "
                        "trained for.",
            inputs=[io.Combo.Input("adapter_name", options=host.model_files(TOVA_FOLDER),
                                   tooltip="A ToVA file in models/tova/ (.safetensors).")],
            outputs=[ToVAType.Output(display_name="adapter")],
        )

    @classmethod
    def execute(cls, adapter_name) -> io.NodeOutput:
        path = host.model_file_path(TOVA_FOLDER, adapter_name)
        if path is None:
            raise EditLabInputError("adapter_name", f"a file in models/{TOVA_FOLDER}/", adapter_name)
        try:
            adapter = load_tova(path)
        except ToVAFileError as exc:
            raise EditLabInputError("adapter_name", f"a ToVA file: {exc}", adapter_name) from None
        return io.NodeOutput({"adapter": adapter, "name": adapter_name})


class EditLabToVAApply(EditLabNode):
    @classmethod
    def define_schema(cls):
        adapters = [ToVAType.Input(f"adapter_{i}", optional=i > 1,
                                   tooltip="A concept's adapter (ToVA Loader or ToVA Train); it acts at its word's "
                                           "positions in the prompt." + (" Optional." if i > 1 else ""))
                    for i in range(1, MAX_ADAPTERS + 1)]
        return io.Schema(
            node_id="EditLabToVAApply", display_name="ToVA Apply", category=CAT,
            description="Attaches up to four concepts' value adapters to an SD1.5/SD2.1/SDXL MODEL, each acting only "
                        "on the value vectors of its own word's tokens in the prompt (never merged), on the "
                        "conditional branch. The patch is list-style: other packs' attention patches still run.",
            inputs=[io.Model.Input("model", tooltip="An SD1.5, SD2.1 or SDXL model."),
                    io.Clip.Input("clip", tooltip="Its text encoder, to find the words' token positions."),
                    io.String.Input("prompt", multiline=True, default="a photo of sks dog and zwx cat",
                                    tooltip="The positive prompt, exactly as encoded for sampling; it must hold each "
                                            "adapter's word."),
                    io.Float.Input("strength", default=1.0, min=-2.0, max=3.0, step=0.05,
                                   tooltip="Scale of every adapter's value change; 0 gives the base model's output."),
                    *adapters],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, clip, prompt, strength, adapter_1, adapter_2=None, adapter_3=None,
                adapter_4=None) -> io.NodeOutput:
        _checked_prompt(prompt, "prompt")
        layers = _unet_layers(model)
        family = host.model_family(model)
        bindings, taken = [], {}
        given = [(f"adapter_{i}", a) for i, a in enumerate((adapter_1, adapter_2, adapter_3, adapter_4), 1)]
        for input_name, a in given:
            if a is None:
                continue
            adapter = a["adapter"]
            _check_adapter(adapter, input_name, family, layers)
            positions = _positions(clip, prompt, adapter.token, "prompt", f"{input_name} ('{adapter.token}')")
            shared = sorted(set(positions) & set(taken))
            if shared:
                raise EditLabInputError(input_name, f"a concept on its own tokens; '{adapter.token}' sits on the "
                                                    f"tokens of {taken[shared[0]]}", a["name"])
            taken.update({p: input_name for p in positions})
            bindings.append(Binding(adapter, positions, strength))
        patch = ToVAPatch(bindings, layers)
        m = model.clone()
        m.set_model_attn2_patch(patch.input_hook)
        m.set_model_attn2_output_patch(patch.output_hook)
        return io.NodeOutput(m)


NODES = [EditLabToVALoader, EditLabToVAApply]
