"""Expression nodes: blendshapes from a face, editable blendshapes, FLAME-55 values, and the expression adapter
(blendshapes -> extra cross-attention key/value) applied to SD1.5/SDXL UNets."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import mediapipe  # noqa: F401 - imported here so a missing dependency removes only these nodes, with one log line
import numpy as np
import torch
from comfy_api.latest import io

from ..models import panels
from ..models.expression.adapter import AdapterFileError, ExpressionAdapter, LoadedAdapter, load_adapter
from ..models.expression.blendshapes import (PRESETS, Blendshapes, FaceEncoder, edit, flame,
                                             landmarker_path)
from ..models.expression.overlay import draw_overlay
from .common import CATEGORY, EditLabInputError, EditLabNode, checked_image_size, rgb_images, save_as_inputs
from .files import input_folder, inside_input_folder, output_file, saved
from . import host
from .host import mediapipe_dirs, model_folder

CAT = f"{CATEGORY}/Expression"
ADAPTER_FOLDER = model_folder("expression_adapters", {".safetensors", ".bin", ".pt"})
REFERENCE_LORA_FOLDER = model_folder("expression_reference_loras", {".safetensors"})

BlendshapesType = io.Custom("EDITLAB_BLENDSHAPES")
HostFaceLandmarksType = io.Custom("FACE_LANDMARKS")  # ComfyUI's own MediaPipe Face Landmarker (newer hosts)
AdapterType = io.Custom("EDITLAB_EXPRESSION_ADAPTER")  # LoadedAdapter
ReferenceLoRAType = io.Custom("EDITLAB_REFERENCE_LORA")  # ReferenceLoRAWeights
MIN_FACE_IMAGE_SIDE = 16  # px; smaller images hold no face the landmarker can find
MAX_VALUES_CHARS = 100_000  # Blendshape Edit's JSON
MAX_PROMPT_CHARS = 4000  # the adapter trainer's prompt


def _encoder() -> FaceEncoder:
    """A face landmarker for one node run; use it as a context manager so its native graph is closed after."""
    try:
        path = landmarker_path(mediapipe_dirs())
    except FileNotFoundError as exc:
        raise EditLabInputError("image", str(exc)) from None
    return FaceEncoder(path)


class EditLabFaceBlendshapes(EditLabNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EditLabFaceBlendshapes", display_name="Face Blendshapes (MediaPipe)", category=CAT,
            description="52 ARKit blendshape coefficients, head-pose matrix, face box and landmarks of one face "
                        "(faces ordered left to right; face_index picks one), with an overlay of the landmarks "
                        "and the strongest coefficients. Looks for face_landmarker.task in models/mediapipe/, "
                        "then in installed packages.",
            inputs=[io.Image.Input("image", tooltip="Photo with at least one face."),
                    io.Int.Input("face_index", default=0, min=0, max=63,
                                 tooltip="Which face, counted left to right from 0."),
                    io.Boolean.Input("allow_no_face", default=False,
                                     tooltip="On: an image without a face gives neutral blendshapes."),
                    HostFaceLandmarksType.Input(
                        "face_landmarks", optional=True,
                        tooltip="Optional: the face_landmarks output of ComfyUI's own 'Detect Face Landmarks "
                                "(MediaPipe)' node (newer ComfyUI) for this image: its blendshapes, box and "
                                "landmarks are used and this node runs no detector of its own.")],
            outputs=[BlendshapesType.Output(display_name="blendshapes"), io.Image.Output(display_name="overlay"),
                     io.String.Output(display_name="json")],
        )

    @classmethod
    def execute(cls, image, face_index, allow_no_face, face_landmarks=None) -> io.NodeOutput:
        image = rgb_images(image, "image", min_side=MIN_FACE_IMAGE_SIDE)  # before MediaPipe sees it
        frame = (image[0].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        if face_landmarks is not None:
            from ..models.expression.blendshapes import from_host_faces

            size = face_landmarks.get("image_size") if isinstance(face_landmarks, dict) else None
            if size is not None and tuple(int(v) for v in size) != tuple(frame.shape[:2]):
                raise EditLabInputError("face_landmarks", f"landmarks of this image ({frame.shape[0]}x"
                                                          f"{frame.shape[1]}); they are of a {size[0]}x{size[1]} one")
            try:
                faces = from_host_faces(face_landmarks, 0)
            except (ValueError, TypeError) as exc:
                raise EditLabInputError("face_landmarks", str(exc)) from None
        else:
            with _encoder() as encoder:
                faces = encoder.faces(frame)
        if not faces:
            if not allow_no_face:
                raise EditLabInputError("image", "an image with a face; none was found (or turn on allow_no_face)")
            shapes = Blendshapes(np.zeros(52, np.float32), meta={"faces": 0})
        elif face_index >= len(faces):
            raise EditLabInputError("face_index", f"a face index below the {len(faces)} face(s) found", face_index)
        else:
            shapes = faces[face_index]
            shapes.meta = {"faces": len(faces), "face_index": face_index}
        overlay = torch.tensor(draw_overlay(frame, shapes)).float()[None] / 255.0  # a copy: the array is read-only
        measured = {**shapes.as_dict(), **shapes.meta}
        face = {"image": panels.thumbnail(overlay[0], 256), "values": measured["values"],
                "faces": shapes.meta.get("faces")}
        return io.NodeOutput(shapes, overlay, json.dumps(measured), ui=panels.ui_for("face", face))


class EditLabBlendshapeEdit(EditLabNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EditLabBlendshapeEdit", display_name="Blendshape Edit", category=CAT,
            description="Starts from the given blendshapes (or neutral), applies a preset, then per-coefficient "
                        "values (JSON, e.g. {\"mouthSmileLeft\": 0.8}); symmetric copies Left/Right edits to the "
                        "other side; intensity scales everything; values clamp to [0, 1].",
            inputs=[
                io.Combo.Input("preset", options=list(PRESETS), default="neutral",
                               tooltip="An expression to start from (applied on top of the input blendshapes)."),
                io.String.Input("values", default="{}", multiline=True,
                                tooltip="JSON object: ARKit blendshape name -> value in [0, 1]."),
                io.Boolean.Input("symmetric", default=True, tooltip="Copy each Left/Right edit to the other side."),
                io.Float.Input("intensity", default=1.0, min=0.0, max=3.0, step=0.05,
                               tooltip="Scales every coefficient (results clamp to [0, 1])."),
                BlendshapesType.Input("blendshapes", optional=True,
                                      tooltip="Optional: the blendshapes to edit (default: neutral)."),
            ],
            outputs=[BlendshapesType.Output(display_name="blendshapes")],
        )

    @classmethod
    def execute(cls, preset, values, symmetric, intensity, blendshapes=None) -> io.NodeOutput:
        if len(values) > MAX_VALUES_CHARS:
            raise EditLabInputError("values", f"a JSON object of at most {MAX_VALUES_CHARS} characters", values)
        try:
            parsed = json.loads(values or "{}")
        except json.JSONDecodeError as exc:
            raise EditLabInputError("values", f"a JSON object ({exc.msg} at column {exc.colno})", values) from None
        except RecursionError:
            raise EditLabInputError("values", "a flat JSON object of name -> number (it is nested too deeply)",
                                    values) from None
        if not isinstance(parsed, dict):
            raise EditLabInputError("values", "a JSON object of name -> number", values)
        try:
            return io.NodeOutput(edit(blendshapes, preset, parsed, symmetric, intensity))
        except (ValueError, TypeError) as exc:
            raise EditLabInputError("values", str(exc)) from None


class EditLabFLAMEExpression(EditLabNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EditLabFLAMEExpression", display_name="FLAME Expression", category=CAT,
            description="A FLAME-55 expression vector (50 expression coefficients in [-3, 3], 2 eyelids in [0, 1], "
                        "3 jaw rotations in [-0.5, 0.5] rad) for adapters trained on FLAME, such as the authors'.",
            inputs=[
                io.String.Input("expression", default="0, 0, 0", tooltip="Up to 50 comma-separated values."),
                io.Float.Input("eyelid_left", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Left eyelid closure, 0 to 1."),
                io.Float.Input("eyelid_right", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Right eyelid closure, 0 to 1."),
                io.Float.Input("jaw_open", default=0.0, min=-0.5, max=0.5, step=0.01,
                               tooltip="Jaw rotation opening the mouth, in radians."),
                io.Float.Input("jaw_yaw", default=0.0, min=-0.5, max=0.5, step=0.01,
                               tooltip="Jaw rotation left/right, in radians."),
                io.Float.Input("jaw_roll", default=0.0, min=-0.5, max=0.5, step=0.01,
                               tooltip="Jaw roll, in radians."),
            ],
            outputs=[BlendshapesType.Output(display_name="blendshapes")],
        )

    @classmethod
    def execute(cls, expression, eyelid_left, eyelid_right, jaw_open, jaw_yaw, jaw_roll) -> io.NodeOutput:
        parts = [v for v in expression.replace(" ", "").split(",") if v]
        if len(parts) > 50:
            raise EditLabInputError("expression", f"up to 50 comma-separated numbers; it has {len(parts)}", expression)
        try:
            coeffs = [float(v) for v in parts]
        except ValueError:
            raise EditLabInputError("expression", "up to 50 comma-separated numbers", expression) from None
        if not all(np.isfinite(coeffs)):
            raise EditLabInputError("expression", "finite numbers (no nan or inf)", expression)
        try:
            return io.NodeOutput(flame(coeffs, [eyelid_left, eyelid_right], [jaw_open, jaw_yaw, jaw_roll]))
        except ValueError as exc:
            raise EditLabInputError("expression", f"up to 50 comma-separated numbers ({exc})", expression) from None


class EditLabExpressionAdapterLoader(EditLabNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EditLabExpressionAdapterLoader", display_name="Expression Adapter Loader", category=CAT,
            description="Loads an expression adapter from models/expression_adapters/: the authors' IP-Adapter-style "
                        "file (FLAME-55 -> tokens -> extra key/value per cross-attention layer; a pickled .bin read "
                        "with weights_only=True) or this pack's safetensors (ARKit-52 or FLAME-55).",
            inputs=[io.Combo.Input("adapter_name", options=host.model_files(ADAPTER_FOLDER),
                                   tooltip="An adapter in models/expression_adapters/ (.bin or .safetensors).")],
            outputs=[AdapterType.Output(display_name="adapter")],
        )

    @classmethod
    def execute(cls, adapter_name) -> io.NodeOutput:
        path = host.model_file_path(ADAPTER_FOLDER, adapter_name)
        if path is None:
            raise EditLabInputError("adapter_name", f"a file in models/{ADAPTER_FOLDER}/", adapter_name)
        try:
            adapter, info = load_adapter(path)
        except AdapterFileError as exc:
            raise EditLabInputError("adapter_name", f"an expression adapter file: {exc}", adapter_name) from None
        return io.NodeOutput(LoadedAdapter(adapter, adapter_name, info["input"], info["format"]))


def _fitting_layers(model, adapter: LoadedAdapter) -> list:
    """The MODEL's cross-attention layers, checked against the adapter's (count, widths, token width)."""
    from ..models.expression.patch import cross_attention_layers

    net = adapter.adapter
    layers = cross_attention_layers(model.get_model_object("diffusion_model"))
    dims = [attn.to_q.weight.shape[0] for _, attn in layers]
    if len(layers) != net.layers or dims != [w.weight.shape[0] for w in net.to_k_ip]:
        raise EditLabInputError("adapter", f"an adapter for this UNet's {len(layers)} cross-attention layers",
                                f"{adapter.name} with {net.layers}")
    if net.image_proj.cross_dim != layers[0][1].to_k.weight.shape[1]:
        raise EditLabInputError("adapter", f"tokens as wide as this model's text context "
                                           f"({layers[0][1].to_k.weight.shape[1]})", net.image_proj.cross_dim)
    return layers


class EditLabApplyExpression(EditLabNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EditLabApplyExpression", display_name="Apply Expression", category=CAT,
            description="Adds the adapter's decoupled key/value (from the blendshapes) to every cross-attention "
                        "layer of an SD1.5/SDXL UNet, scaled by strength, between start and end percent; the "
                        "unconditional branch uses zero blendshapes. At strength 0 the patch runs and changes nothing.",
            inputs=[
                io.Model.Input("model", tooltip="An SD1.5 or SDXL model."),
                AdapterType.Input("adapter", tooltip="The expression adapter (loader or trainer)."),
                BlendshapesType.Input("blendshapes",
                                      tooltip="The expression to apply (Face Blendshapes, Blendshape Edit or FLAME "
                                              "Expression)."),
                io.Float.Input("strength", default=1.0, min=-2.0, max=3.0, step=0.05,
                               tooltip="Scale of the adapter's attention; 0 leaves the model unchanged."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Sampling progress where the adapter starts acting."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Sampling progress where the adapter stops acting."),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, adapter, blendshapes, strength, start_percent, end_percent) -> io.NodeOutput:
        from ..models.expression.patch import ExpressionAttentionPatch

        net = adapter.adapter
        if blendshapes.values.shape[0] != net.input_dim:
            raise EditLabInputError("blendshapes", f"{net.input_dim}-d blendshapes for this adapter "
                                                   f"({adapter.input})",
                                    f"{blendshapes.values.shape[0]}-d ({blendshapes.space})")
        if start_percent > end_percent:
            raise EditLabInputError("end_percent", f"a value at or after start_percent ({start_percent})",
                                    end_percent)
        layers = _fitting_layers(model, adapter)
        sampling = model.get_model_object("model_sampling")
        patch = ExpressionAttentionPatch(net, torch.from_numpy(blendshapes.values), strength, layers,
                                         float(sampling.percent_to_sigma(start_percent)),
                                         float(sampling.percent_to_sigma(end_percent)))
        # The adapter as a host model: load_models_gpu counts, loads and offloads it with the UNet.
        patch.extra_models = [host.host_model(net, model, kept=adapter.host_models)]
        m = model.clone()
        m.set_model_attn2_patch(patch.input_hook)
        m.set_model_attn2_output_patch(patch.output_hook)
        return io.NodeOutput(m)


REFERENCE_MODES = ("training-free", "trained LoRA")


class EditLabReferenceAdapter(EditLabNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EditLabReferenceAdapter", display_name="Reference Adapter", category=CAT,
            description="Makes the UNet's self-attention also read a reference photo's features, written once by "
                        "running the frozen UNet on the reference at its lowest noise level, so appearance and "
                        "background carry over while the expression changes. Mode 'training-free' uses the UNet's "
                        "own projections; 'trained LoRA' adds a reference LoRA (Train Reference LoRA, the paper's "
                        "second stage, or Reference LoRA Loader) to the extended self-attention, scaled by "
                        "lora_scale (the authors use 0.8). At strength 0 the patch runs and changes nothing; 1 uses "
                        "the reference-extended attention fully.",
            inputs=[io.Model.Input("model", tooltip="An SD1.5 or SDXL model."),
                    io.Vae.Input("vae", tooltip="The model's VAE, to encode the reference."),
                    io.Image.Input("reference", tooltip="The photo whose appearance should carry over."),
                    io.Float.Input("strength", default=0.8, min=0.0, max=1.0, step=0.05,
                                   tooltip="0: the model unchanged; 1: self-attention reads the reference fully "
                                           "(as a trained LoRA was trained)."),
                    io.Combo.Input("mode", options=list(REFERENCE_MODES), default=REFERENCE_MODES[0], optional=True,
                                   tooltip="training-free: the UNet's own self-attention reads the reference; "
                                           "trained LoRA: with the connected reference LoRA."),
                    ReferenceLoRAType.Input("lora", optional=True,
                                            tooltip="The reference LoRA for mode 'trained LoRA' (Train Reference "
                                                    "LoRA or Reference LoRA Loader)."),
                    io.Float.Input("lora_scale", default=0.8, min=0.0, max=2.0, step=0.05, optional=True,
                                   tooltip="Scale of the reference LoRA (mode 'trained LoRA'); the authors use "
                                           "0.8.")],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, vae, reference, strength, mode=REFERENCE_MODES[0], lora=None,
                lora_scale=0.8) -> io.NodeOutput:
        from ..models.expression.patch import ReferenceAttentionPatch, transformer_blocks
        from ..models.expression.reference import reference_features

        reference = rgb_images(reference, "reference")
        if mode == REFERENCE_MODES[1] and lora is None:
            raise EditLabInputError("lora", "a reference LoRA connected in mode 'trained LoRA'")
        if mode == REFERENCE_MODES[0] and lora is not None:
            raise EditLabInputError("mode", "'trained LoRA' when a reference LoRA is connected (or disconnect it)",
                                    mode)
        blocks = transformer_blocks(model.get_model_object("diffusion_model"))
        if not blocks:
            raise EditLabInputError("model", "a UNet with attention blocks (SD1.5, SDXL)")
        layers = [(key, tb.attn1) for key, tb in blocks]
        net = None if lora is None else _bound_lora(lora, layers, lora_scale)
        latent = vae.encode(reference[:1])
        host.load_models([model])
        try:
            features = reference_features(model.model, latent, model.model_options.get("transformer_options", {}),
                                          host.compute_device())
        except ValueError as exc:
            raise EditLabInputError("model", str(exc)) from None
        patch = ReferenceAttentionPatch(features, strength, layers, lora=net)
        m = model.clone()
        m.set_model_attn1_patch(patch.input_hook)
        m.set_model_attn1_output_patch(patch.output_hook)
        return io.NodeOutput(m)


def _bound_lora(lora, layers: list, scale: float):
    from ..models.expression.reference_lora import ReferenceLoRAFileError, reference_lora_for

    try:
        net = reference_lora_for(layers, lora.tensors, lora.rank, lora.alpha)
    except ReferenceLoRAFileError as exc:
        raise EditLabInputError("lora", f"a reference LoRA for this model: {exc}", lora.name) from None
    net.set_scale(scale)
    return net


class EditLabReferenceLoRALoader(EditLabNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EditLabReferenceLoRALoader", display_name="Reference LoRA Loader", category=CAT,
            description="Loads a reference LoRA (the reference adapter's trained second stage) from "
                        "models/expression_reference_loras/, for the Reference Adapter's 'trained LoRA' mode.",
            inputs=[io.Combo.Input("lora_name", options=host.model_files(REFERENCE_LORA_FOLDER),
                                   tooltip="A file in models/expression_reference_loras/ (.safetensors).")],
            outputs=[ReferenceLoRAType.Output(display_name="lora")],
        )

    @classmethod
    def execute(cls, lora_name) -> io.NodeOutput:
        from ..models.expression.reference_lora import (ReferenceLoRAFileError, ReferenceLoRAWeights,
                                                        read_reference_lora)

        path = host.model_file_path(REFERENCE_LORA_FOLDER, lora_name)
        if path is None:
            raise EditLabInputError("lora_name", f"a file in models/{REFERENCE_LORA_FOLDER}/", lora_name)
        try:
            tensors, meta = read_reference_lora(path)
        except ReferenceLoRAFileError as exc:
            raise EditLabInputError("lora_name", f"a reference LoRA file: {exc}", lora_name) from None
        return io.NodeOutput(ReferenceLoRAWeights(tensors, meta["rank"], meta["alpha"], lora_name))


IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def _read_face_photo(path: str) -> np.ndarray:
    """An (H, W, 3) uint8 photo of a training folder; ValueError (the photo is listed, not fatal) for one that
    links out of the input folder, has a size the face encoder cannot take, or does not decode."""
    from PIL import Image

    if not inside_input_folder(path):
        raise ValueError("links outside the input folder")
    unreadable = lambda exc: ValueError(f"not a readable image ({type(exc).__name__})")
    try:
        im = Image.open(path)
    except Exception as exc:  # noqa: BLE001 - corrupt, truncated, not an image, a decompression bomb
        raise unreadable(exc) from None
    with im:
        try:  # before decoding: MediaPipe and OpenCV abort the process on some sizes
            checked_image_size(im.height, im.width, "folder", min_side=MIN_FACE_IMAGE_SIDE)
        except EditLabInputError:
            raise ValueError(f"{im.width}x{im.height} px is outside the sizes the face encoder takes") from None
        try:
            return np.array(im.convert("RGB"))
        except Exception as exc:  # noqa: BLE001
            raise unreadable(exc) from None


def _face_training_inputs() -> list:
    """The face-photo training inputs both training nodes take, in this order (public names: saved workflows)."""
    return [
        io.String.Input("folder", default="faces",
                        tooltip="Folder of face photos inside ComfyUI's input folder ('.' = the input folder itself)."),
        io.String.Input("prompt", default="a photo of a face", tooltip="Caption used for every training image."),
        io.Int.Input("resolution", default=512, min=64, max=1024, step=64, tooltip="Training image size in pixels."),
        io.Int.Input("steps", default=500, min=1, max=100000, tooltip="Training steps."),
        io.Float.Input("lr", default=1e-4, min=1e-6, max=1e-1, step=1e-5, tooltip="AdamW learning rate."),
        io.Int.Input("batch_size", default=2, min=1, max=64, tooltip="Images per step."),
    ]


def _face_folder_images(folder: str, resolution: int):
    """Square face crops of a folder's photos (inside ComfyUI's input directory), with their blendshapes
    (``models/expression/dataset.py``). Faceless photos are skipped and listed; unreadable, oversized or linked-out
    ones too, with the reason."""
    from ..models.expression.dataset import face_training_set

    path = input_folder(folder, "folder")
    files = [(name, os.path.join(path, name)) for name in sorted(os.listdir(path)) if name.lower().endswith(IMAGE_EXTS)]
    with _encoder() as encoder:  # closed when the folder is done
        found = face_training_set(files, encoder, resolution, _read_face_photo, check=host.check_interrupted)
    if not found.images:
        raise EditLabInputError("folder", "images with a face in them",
                                f"{folder}: none found" + (f"; unreadable: {'; '.join(found.unreadable)}"
                                                           if found.unreadable else ""))
    return found


class EditLabTrainExpressionAdapter(EditLabNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EditLabTrainExpressionAdapter", display_name="Train Expression Adapter (ARKit-52)",
            category=CAT, is_output_node=True,
            description="Stage 1: trains an ARKit-52 expression adapter on a folder of face photos (in ComfyUI's "
                        "input directory), each cropped to a square around its face (photos without a face are "
                        "skipped and listed), whose blendshapes the face encoder measures; the model's own diffusion "
                        "objective (epsilon, v or velocity, at its discrete timesteps), the model frozen; saves "
                        "models/expression_adapters/NAME.safetensors. Interruptible.",
            inputs=[
                io.Model.Input("model", tooltip="The SD1.5/SDXL model the adapter is trained for (kept frozen)."),
                io.Clip.Input("clip", tooltip="Its text encoder."),
                io.Vae.Input("vae", tooltip="Its VAE."),
                *_face_training_inputs(),
                io.Int.Input("num_tokens", default=4, min=1, max=64,
                             tooltip="Tokens the adapter adds to each cross-attention layer."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1,
                             tooltip="Seed for the initial weights, noise and batch order."),
                *save_as_inputs("expression_adapters", "my_expression_adapter"),
                io.Boolean.Input("gradient_checkpointing", default=True, optional=True,
                                 tooltip="Recompute each UNet block's activations in backward instead of keeping "
                                         "them: much less memory while training, about one more forward pass of "
                                         "compute per step. The same gradients either way."),
            ],
            outputs=[AdapterType.Output(display_name="adapter"), io.String.Output(display_name="stats")],
        )

    @classmethod
    def execute(cls, model, clip, vae, folder, prompt, resolution, steps, lr, batch_size, num_tokens, seed,
                name, overwrite=False, gradient_checkpointing=True) -> io.NodeOutput:
        from comfy_api.latest import ui

        from ..models.expression.adapter import random_adapter, save_adapter
        from ..models.expression.patch import cross_attention_layers
        from ..models.expression.train import train_unet_adapter

        path = output_file(ADAPTER_FOLDER, name, "name", overwrite)
        data = _training_data(model, clip, vae, folder, prompt, resolution)
        layers = cross_attention_layers(data.base.diffusion_model)
        if not layers:
            raise EditLabInputError("model", "a UNet with cross-attention (SD1.5, SDXL)")
        with torch.inference_mode(False), torch.no_grad():
            adapter = random_adapter(52, data.context.shape[-1], [a.to_q.weight.shape[0] for _, a in layers],
                                     num_tokens, seed=seed).to(data.device).train()
        bar = host.progress(steps)
        stats = train_unet_adapter(data.base, adapter, layers, data.context, data.pooled, data.latents, data.values,
                                   resolution, steps, lr, batch_size, seed, data.device,
                                   on_step=lambda i, n, loss: bar.update_absolute(i, n),
                                   should_stop=host.check_interrupted,
                                   gradient_checkpointing=gradient_checkpointing)
        adapter = adapter.cpu().eval()
        saved(lambda p, o: save_adapter(adapter, p, "arkit52", overwrite=o), path, "name", overwrite)
        text = json.dumps({**stats, **data.report(), "file": os.path.basename(path)})
        return io.NodeOutput(LoadedAdapter(adapter, os.path.basename(path), "arkit52", "editlab"), text,
                             ui=ui.PreviewText(text))


@dataclass
class _TrainingData:
    """A face folder ready for training inside a MODEL: crops, their latents, blendshapes and the prompt."""
    found: object  # FaceTrainingSet
    images: torch.Tensor  # (N, H, W, 3) in [0, 1]
    base: object  # the host BaseModel (loaded)
    device: object
    latents: torch.Tensor
    values: torch.Tensor
    context: torch.Tensor
    pooled: torch.Tensor | None

    def report(self) -> dict:
        return {"skipped": self.found.skipped, "unreadable": self.found.unreadable,
                "crops": {n: [c.x0, c.y0, c.side] for n, c in zip(self.found.names, self.found.crops)}}


def _training_data(model, clip, vae, folder: str, prompt: str, resolution: int) -> _TrainingData:
    if len(prompt) > MAX_PROMPT_CHARS:
        raise EditLabInputError("prompt", f"a prompt of at most {MAX_PROMPT_CHARS} characters", prompt)
    found = _face_folder_images(folder, resolution)
    images = torch.from_numpy(np.stack(found.images)).float() / 255.0
    model = host.training_clone(model)
    base = model.model
    cond = host.encoded(clip.encode_from_tokens_scheduled, clip.tokenize(prompt))
    latents = host.encoded(lambda: base.process_latent_in(vae.encode(images)))  # data: no graph through the VAE
    host.load_models([model])
    device = host.compute_device()
    with torch.inference_mode(False), torch.no_grad():
        latents, context = latents.to(device), cond[0][0].to(device)
        pooled = cond[0][1].get("pooled_output")
        pooled = None if pooled is None else pooled.to(device)
    return _TrainingData(found, images, base, device, latents, torch.from_numpy(np.stack(found.values)), context,
                         pooled)


class EditLabTrainReferenceLoRA(EditLabNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EditLabTrainReferenceLoRA", display_name="Train Reference LoRA (stage 2)",
            category=CAT, is_output_node=True,
            description="The paper's second stage: trains a LoRA (peft) on the UNet's self-attention projections "
                        "while the self-attention reads each photo's reference features (written by the frozen "
                        "UNet from the mirrored photo) and the expression adapter, frozen, feeds the photo's "
                        "measured blendshapes; the model's own diffusion objective, the model and the expression "
                        "adapter unchanged. Face photos from a folder in ComfyUI's input directory (square face "
                        "crops). Saves models/expression_reference_loras/NAME.safetensors for the Reference "
                        "Adapter's 'trained LoRA' mode. Interruptible.",
            inputs=[
                io.Model.Input("model", tooltip="The SD1.5/SDXL model (kept frozen)."),
                io.Clip.Input("clip", tooltip="Its text encoder."),
                io.Vae.Input("vae", tooltip="Its VAE."),
                AdapterType.Input("adapter", tooltip="The ARKit-52 expression adapter from stage 1 (kept frozen)."),
                *_face_training_inputs(),
                io.Int.Input("rank", default=8, min=1, max=128, tooltip="LoRA rank."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1,
                             tooltip="Seed for the initial LoRA weights, noise and batch order."),
                *save_as_inputs("expression_reference_loras", "my_reference_lora"),
                io.Boolean.Input("gradient_checkpointing", default=True, optional=True,
                                 tooltip="Recompute each UNet block's activations in backward instead of keeping "
                                         "them: much less memory while training, about one more forward pass of "
                                         "compute per step. The same gradients either way."),
            ],
            outputs=[ReferenceLoRAType.Output(display_name="lora"), io.String.Output(display_name="stats")],
        )

    @classmethod
    def execute(cls, model, clip, vae, adapter, folder, prompt, resolution, steps, lr, batch_size, rank, seed,
                name, overwrite=False, gradient_checkpointing=True) -> io.NodeOutput:
        from comfy_api.latest import ui

        from ..models.expression.patch import transformer_blocks
        from ..models.expression.reference import train_reference_lora
        from ..models.expression.reference_lora import ReferenceLoRA, ReferenceLoRAWeights, save_reference_lora

        path = output_file(REFERENCE_LORA_FOLDER, name, "name", overwrite)
        if adapter.adapter.input_dim != 52:
            raise EditLabInputError("adapter", "an ARKit-52 adapter (the folder's blendshapes are measured as "
                                               "ARKit-52)", f"{adapter.name} ({adapter.input})")
        _fitting_layers(model, adapter)
        data = _training_data(model, clip, vae, folder, prompt, resolution)
        blocks = transformer_blocks(data.base.diffusion_model)
        mirrored = data.images.flip(2)  # each photo's reference: the same face, mirrored
        references = host.encoded(lambda: data.base.process_latent_in(vae.encode(mirrored)))
        with torch.inference_mode(False), torch.no_grad():
            references = references.to(data.device)
            lora = ReferenceLoRA([(key, tb.attn1) for key, tb in blocks], rank, seed=seed).to(data.device)
        with torch.inference_mode(False), torch.no_grad():  # a copy autograd can read through (never trained)
            expression = ExpressionAdapter.from_parts(*adapter.adapter.parts()).to(data.device)
        bar = host.progress(steps)
        stats = train_reference_lora(data.base, expression, lora, data.context, data.pooled, data.latents,
                                     references, data.values, resolution, steps, lr, batch_size, seed, data.device,
                                     on_step=lambda i, n, loss: bar.update_absolute(i, n),
                                     should_stop=host.check_interrupted,
                                     gradient_checkpointing=gradient_checkpointing)
        lora.to("cpu")
        saved(lambda p, o: save_reference_lora(lora, p, overwrite=o), path, "name", overwrite)
        text = json.dumps({**stats, **data.report(), "file": os.path.basename(path)})
        return io.NodeOutput(ReferenceLoRAWeights(lora.state(), lora.rank, lora.alpha, os.path.basename(path)),
                             text, ui=ui.PreviewText(text))


NODES = [EditLabFaceBlendshapes, EditLabBlendshapeEdit, EditLabFLAMEExpression, EditLabExpressionAdapterLoader,
         EditLabApplyExpression, EditLabReferenceAdapter, EditLabTrainExpressionAdapter, EditLabTrainReferenceLoRA,
         EditLabReferenceLoRALoader]
