"""SAEdit nodes: train or load a sparse autoencoder over text-encoder tokens, find edit directions from prompt pairs,
and slide a direction on chosen words of a conditioning with a per-step schedule."""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

import torch
from comfy_api.latest import io, ui

from ..models import panels
from ..models.saedit import prompts as prompt_corpus
from ..models.saedit.direction import METHODS, direction_from_pairs
from ..models.saedit.edit import decoded_delta
from ..models.saedit.inversion import InversionSampler, InvertedNoise
from ..models.saedit.files import SAEFileError, load_direction, load_sae, save_direction, save_sae
from ..models.saedit.sae import SPARSITY, SAEConfig, SparseAutoencoder
from ..models.saedit.schedule import SCHEDULES, TIMINGS
from ..models.saedit.slider import slide_conditioning
from ..models.saedit.features import feature_table, heatmap
from ..models.saedit.tokens import (PARTS, content_embeddings, prompt_tokens, token_layout, token_texts,
                                    word_positions)
from ..models.saedit.train import TrainConfig, train_sae
from . import host
from .common import CATEGORY, EditLabInputError, EditLabNode, excerpt, save_as_inputs
from .files import output_file, read_text_lines, saved

log = logging.getLogger(__name__)
CAT = f"{CATEGORY}/SAEdit"
SAE_FOLDER = host.model_folder("sae", {".safetensors"})
DIRECTION_FOLDER = host.model_folder("sae_directions", {".safetensors"})

SAEType = io.Custom("EDITLAB_SAE")
DirectionType = io.Custom("EDITLAB_SAE_DIRECTION")


@dataclass
class LoadedSAE:
    sae: SparseAutoencoder
    name: str
    part: str  # which conditioning part it was trained on ("t5", "clip"; "" or "auto" in older files: unknown)


@dataclass
class LoadedDirection:
    direction: object  # tensor (dict_size,)
    feature_ids: object  # tensor (k,), or None (a direction built in code): views use the vector's non-zeros
    weights: object  # tensor (k,), or None: read from the vector
    pairs: list
    name: str


MAX_PROMPT_CHARS = 4000  # one prompt (SAE Features, SAE Slider, each training line)
MAX_FEATURE_ROWS = 512  # tokens in the SAE Features heat-map: one row each


def _read_lines(text: str, file_name: str, input_name: str) -> list[str]:
    lines = [l.strip() for l in text.splitlines() if l.strip() and not l.strip().startswith("#")]
    where = input_name
    if file_name.strip():
        lines += read_text_lines(file_name, f"{input_name}_file")
        where = f"{input_name}' or '{input_name}_file"
    long = next((l for l in lines if len(l) > MAX_PROMPT_CHARS), None)
    if long is not None:
        raise EditLabInputError(where, f"lines of at most {MAX_PROMPT_CHARS} characters", long)
    return lines


def _checked_prompt(prompt: str, input_name: str = "prompt", expected: str = "some text") -> str:
    if not prompt.strip():
        raise EditLabInputError(input_name, expected)
    if len(prompt) > MAX_PROMPT_CHARS:
        raise EditLabInputError(input_name, f"a prompt of at most {MAX_PROMPT_CHARS} characters", prompt)
    return prompt


def _matryoshka_groups(text: str, dict_size: int) -> list[int]:
    try:
        groups = [int(g) for g in text.replace(" ", "").split(",") if g]
    except ValueError:
        raise EditLabInputError("matryoshka_groups", "comma-separated whole numbers, e.g. 64,192", text) from None
    if any(g <= 0 for g in groups):
        raise EditLabInputError("matryoshka_groups", "positive group sizes", text)
    if groups and sum(groups) != dict_size:
        raise EditLabInputError("matryoshka_groups", f"group sizes adding up to dict_size ({dict_size}); "
                                                     f"they add up to {sum(groups)}", text)
    return groups


def _load_from_folder(folder: str, file_name: str, input_name: str, reader):
    """Resolve a file of a model folder and read it, with errors that name the input."""
    path = host.model_file_path(folder, file_name)
    if path is None:
        raise EditLabInputError(input_name, f"a file in models/{folder}/", file_name)
    try:
        return reader(path)
    except SAEFileError as exc:
        raise EditLabInputError(input_name, f"a readable file: {exc}", file_name) from None


def _check_width(sae: LoadedSAE, width: int) -> None:
    if sae.sae.config.act_size != width:
        raise EditLabInputError("sae", f"an SAE as wide as the conditioning's tokens ({width})",
                                f"{sae.name}, {sae.sae.config.act_size} wide")


def _progress(total):
    bar = host.progress(total)

    def step(i, n, stats):
        bar.update_absolute(i, n)
        if i % 50 == 0 or i == n:
            log.info("SAE training step %d/%d: loss %.4f, FVU %.3f, L0 %.1f, dead %.1f%%", i, n, stats["loss"],
                     stats["fvu"], stats["l0"], 100 * stats["dead_fraction"])

    return step


class EditLabSAETrain(EditLabNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EditLabSAETrain", display_name="SAE Train", category=CAT, is_output_node=True,
            description="Trains a BatchTopK sparse autoencoder (optionally Matryoshka) on the token embeddings that "
                        "this CLIP produces for a list of prompts, learns its inference threshold, and saves it to "
                        "models/sae/. For long runs use scripts/train_sae.py.",
            inputs=[
                io.Clip.Input("clip",
                              tooltip="The text encoder whose token embeddings the SAE learns (from your loader, or "
                                      "Tiny Models)."),
                io.String.Input("prompts", multiline=True, default="",
                                tooltip="One prompt per line (lines starting with # are skipped)."),
                io.String.Input("prompts_file", default="", tooltip="Optional .txt in ComfyUI's input folder."),
                io.Int.Input("generated_prompts", default=0, min=0, max=200000,
                             tooltip="Add this many prompts from the built-in generated corpus."),
                io.Combo.Input("part", options=list(PARTS), default="auto",
                               tooltip="Which tokens: T5 (Flux, SD3.5) or CLIP; auto picks T5 when present."),
                io.Int.Input("dict_size", default=4096, min=16, max=1 << 20,
                             tooltip="Number of SAE features (dictionary size)."),
                io.Int.Input("top_k", default=32, min=1, max=4096,
                             tooltip="Features kept active per token (batch_topk: on average over the batch)."),
                io.String.Input("matryoshka_groups", default="",
                                tooltip="Comma-separated group sizes adding up to dict_size; empty for none."),
                io.Float.Input("lr", default=1e-3, min=1e-6, max=1.0, step=1e-4, tooltip="Adam learning rate."),
                io.Int.Input("batch_size", default=1024, min=8, max=1 << 16, tooltip="Tokens per training step."),
                io.Int.Input("epochs", default=10, min=1, max=1000, tooltip="Passes over all the prompts' tokens."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1,
                             tooltip="Seed for the generated prompts, the initial weights and the batch order."),
                *save_as_inputs("sae", "my_sae"),
                io.Combo.Input("sparsity", options=list(SPARSITY), default="topk", optional=True,
                               tooltip="topk: each token keeps its top_k features, in training and use (reconstructs "
                                       "better at equal budget). batch_topk: the SAEdit authors' BatchTopK (top_k "
                                       "per token on average over a batch) with a learned threshold in use."),
            ],
            outputs=[SAEType.Output(display_name="sae"), io.String.Output(display_name="stats")],
        )

    @classmethod
    def execute(cls, clip, prompts, prompts_file, generated_prompts, part, dict_size, top_k, matryoshka_groups,
                lr, batch_size, epochs, seed, name, overwrite=False, sparsity="topk") -> io.NodeOutput:
        if top_k > dict_size:
            raise EditLabInputError("top_k", f"at most dict_size ({dict_size})", top_k)
        groups = _matryoshka_groups(matryoshka_groups, dict_size)
        config = SAEConfig(act_size=1, dict_size=dict_size, top_k=top_k, group_sizes=groups, sparsity=sparsity)
        path = output_file(SAE_FOLDER, name, "name", overwrite)
        texts = _read_lines(prompts, prompts_file, "prompts") + prompt_corpus.corpus(generated_prompts, seed=seed)
        if not texts:
            raise EditLabInputError("prompts", "at least one prompt (or generated_prompts > 0)")
        try:
            rows, resolved = content_embeddings(clip, texts, part, should_stop=host.check_interrupted)
        except ValueError as exc:
            raise EditLabInputError("part", str(exc), part) from None
        config.act_size = rows[0].shape[1]
        train = TrainConfig(lr=lr, batch_size=batch_size, epochs=epochs, seed=seed)
        # ComfyUI runs nodes under inference mode; training needs autograd and tensors made outside it.
        # On the host's compute device (a GPU where there is one), in float32 whatever the text encoder's dtype.
        device = host.compute_device()
        with torch.inference_mode(False), torch.enable_grad():
            tokens = torch.cat([r.clone() for r in rows]).to(device=device, dtype=torch.float32)
            steps = max(tokens.shape[0] // min(batch_size, tokens.shape[0]), 1) * epochs
            sae, stats = train_sae(tokens, config, train, on_step=_progress(steps),
                                   should_stop=host.check_interrupted)
            sae = sae.cpu()  # in here: copies made in inference mode would be inference tensors
        stats.update(prompts=len(texts), part=resolved)
        # atomic: a stopped run writes nothing. The resolved part ("t5" / "clip") is stored, so the SAE is refused
        # on the other part later (on SD3.5 the padded CLIP part and T5 are both 4096 wide).
        saved(lambda p, o: save_sae(sae, p, encoder=resolved, stats=stats, overwrite=o), path, "name", overwrite)
        log.info("saved SAE %s: %s", path, stats)
        text = json.dumps(stats)
        return io.NodeOutput(LoadedSAE(sae, os.path.basename(path), resolved), text, ui=ui.PreviewText(text))


class EditLabSAELoader(EditLabNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EditLabSAELoader", display_name="SAE Loader", category=CAT,
            description="Loads an SAE from models/sae/: this pack's files or the SAEdit authors' released layout "
                        "(W_enc, b_enc, W_dec, b_dec, threshold).",
            inputs=[io.Combo.Input("sae_name", options=host.model_files(SAE_FOLDER),
                                   tooltip="An SAE file in models/sae/ (this pack's or the SAEdit authors' layout).")],
            outputs=[SAEType.Output(display_name="sae")],
        )

    @classmethod
    def execute(cls, sae_name) -> io.NodeOutput:
        sae, info = _load_from_folder(SAE_FOLDER, sae_name, "sae_name", load_sae)
        return io.NodeOutput(LoadedSAE(sae, sae_name, info.get("encoder", "")))


class EditLabSAEDirection(EditLabNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EditLabSAEDirection", display_name="SAE Direction from Pairs", category=CAT,
            description="Finds an edit direction in SAE code space from 'source | target' prompt pairs (max-pool, "
                        "ratio, 99.5th-percentile mask, SVD over pairs; or the mean). Saved to "
                        "models/sae_directions/ when a name is given.",
            inputs=[
                io.Clip.Input("clip", tooltip="The same text encoder the SAE was trained on."),
                SAEType.Input("sae", tooltip="The SAE whose feature space the direction lives in."),
                io.String.Input("pairs", multiline=True, default="a man | a smiling man",
                                tooltip="One pair per line: source | target."),
                io.String.Input("pairs_file", default="", tooltip="Optional .txt in ComfyUI's input folder."),
                io.Combo.Input("part", options=list(PARTS), default="auto",
                               tooltip="Which tokens: T5 (Flux, SD3.5) or CLIP; auto picks T5 when present. Use the "
                                       "SAE's part."),
                io.Combo.Input("method", options=list(METHODS), default="svd",
                               tooltip="svd: the authors' recipe (shared direction over pairs, unit length); "
                                       "mean: the authors' mean of the pairs' vectors, not normalised (its length "
                                       "scales the slider's strength); mean_unit: that mean at unit length (this "
                                       "pack's earlier 'mean': strength moves 1/|mean| times as far as the "
                                       "authors')."),
                io.Float.Input("percentile", default=99.5, min=50.0, max=100.0, step=0.1,
                               tooltip="Only features above this percentile of the source-to-target ratio take part."),
                *save_as_inputs("sae_directions", "", verb="Save as"),
            ],
            outputs=[DirectionType.Output(display_name="direction")],
        )

    @classmethod
    def execute(cls, clip, sae, pairs, pairs_file, part, method, percentile, name, overwrite=False) -> io.NodeOutput:
        path = output_file(DIRECTION_FOLDER, name, "name", overwrite) if name.strip() else None
        lines = _read_lines(pairs, pairs_file, "pairs")
        parsed = []
        for line in lines:
            source, sep, target = line.partition("|")
            if not sep or not source.strip() or not target.strip():
                raise EditLabInputError("pairs", "one 'source | target' pair per line", line)
            parsed.append((source.strip(), target.strip()))
        if not parsed:
            raise EditLabInputError("pairs", "at least one 'source | target' pair")
        try:
            stop = host.check_interrupted
            src, resolved = content_embeddings(clip, [s for s, _ in parsed], _part_for(sae, part), should_stop=stop)
            tgt, _ = content_embeddings(clip, [t for _, t in parsed], _part_for(sae, part), should_stop=stop)
        except ValueError as exc:
            raise EditLabInputError("part", str(exc), part) from None
        _check_part(sae, resolved)
        _check_width(sae, src[0].shape[1])
        codes = [(sae.sae.encode(s), sae.sae.encode(t)) for s, t in zip(src, tgt)]
        try:
            found = direction_from_pairs(codes, method, percentile)
        except ValueError as exc:
            raise EditLabInputError("pairs", str(exc)) from None
        if path:
            saved(lambda p, o: save_direction(found["direction"], found["feature_ids"], found["weights"], p, parsed,
                                              method, sae.name, overwrite=o), path, "name", overwrite)
        return io.NodeOutput(LoadedDirection(found["direction"], found["feature_ids"], found["weights"], parsed,
                                             os.path.basename(path) if path else "(unsaved)"))


class EditLabSAEDirectionLoader(EditLabNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EditLabSAEDirectionLoader", display_name="SAE Direction Loader", category=CAT,
            description="Loads a direction saved by 'SAE Direction from Pairs' from models/sae_directions/.",
            inputs=[io.Combo.Input("direction_name", options=host.model_files(DIRECTION_FOLDER),
                                   tooltip="A direction file in models/sae_directions/.")],
            outputs=[DirectionType.Output(display_name="direction")],
        )

    @classmethod
    def execute(cls, direction_name) -> io.NodeOutput:
        d = _load_from_folder(DIRECTION_FOLDER, direction_name, "direction_name", load_direction)
        return io.NodeOutput(LoadedDirection(d["direction"], d["feature_ids"], d["weights"], d["pairs"],
                                             direction_name))


PROMPT_KEY = "editlab_prompt"  # the text a conditioning entry was encoded from, recorded by EditLabTextEncode


class EditLabTextEncode(EditLabNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EditLabTextEncode", display_name="CLIP Text Encode (records tokens)", category=CAT,
            description="Encodes a prompt exactly as CLIP Text Encode does, and records the prompt's text in the "
                        "conditioning, so SAE Slider finds the word's tokens without the prompt typed again (the "
                        "host ignores the record).",
            inputs=[io.Clip.Input("clip", tooltip="The text encoder (from your loader)."),
                    io.String.Input("text", multiline=True, dynamic_prompts=True, default="",
                                    tooltip="The prompt to encode.")],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, clip, text) -> io.NodeOutput:
        if len(text) > MAX_PROMPT_CHARS:
            raise EditLabInputError("text", f"a prompt of at most {MAX_PROMPT_CHARS} characters", text)
        conditioning = clip.encode_from_tokens_scheduled(clip.tokenize(text))
        return io.NodeOutput([[c, {**o, PROMPT_KEY: text}] for c, o in conditioning])


def _part_for(sae: LoadedSAE, part: str) -> str:
    """``part``, or the SAE's own part for "auto" when the SAE records one."""
    return sae.part if part == "auto" and sae.part in ("t5", "clip") else part


def _check_part(sae: LoadedSAE, resolved: str) -> None:
    if sae.part in ("t5", "clip") and resolved != sae.part:
        raise EditLabInputError("part", f"the SAE's part ({sae.part}): {sae.name} was trained on "
                                        f"{sae.part.upper()} tokens", resolved)


def _entry_text(options: dict, prompt: str) -> str:
    """The text a conditioning entry was encoded from: its record, else the typed ``prompt``."""
    recorded = options.get(PROMPT_KEY)
    if isinstance(recorded, str):
        if prompt.strip() and prompt.strip() != recorded.strip():
            raise EditLabInputError("prompt", "empty, or the conditioning's own prompt (it records "
                                              f"'{excerpt(recorded, 80)}')", prompt)
        return recorded
    return _checked_prompt(prompt, expected="the text the conditioning was encoded from (or encode it with "
                                            "'CLIP Text Encode (records tokens)' and leave this empty)")


class EditLabSAESlider(EditLabNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EditLabSAESlider", display_name="SAE Slider", category=CAT,
            description="Slides an SAE direction on the chosen word(s) of a conditioning. Only the decoded delta is "
                        "added, only at those tokens, with a strength that follows the denoising (exponential as "
                        "in SAEdit, linear or constant): the conditioning is split into ranges of the denoising "
                        "(as Conditioning Set Timestep Range does), so the host batches it with the negative prompt "
                        "and nothing runs per step. Other tokens and the negative prompt are untouched; strength 0 "
                        "gives the same image; sliders chain.",
            inputs=[
                io.Conditioning.Input("conditioning",
                                      tooltip="The prompt's conditioning to edit (from CLIP Text Encode (records "
                                              "tokens), or the stock CLIP Text Encode with the prompt typed below)."),
                io.Clip.Input("clip",
                              tooltip="The text encoder that made the conditioning (its tokenizer finds the word)."),
                SAEType.Input("sae", tooltip="The SAE the direction was found with."),
                DirectionType.Input("direction",
                                    tooltip="The edit direction (from SAE Direction from Pairs or its loader)."),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="Leave empty when the conditioning comes from 'CLIP Text Encode (records "
                                        "tokens)'. Otherwise the text the conditioning was encoded from; it is "
                                        "checked against the conditioning."),
                io.String.Input("word", default="", tooltip="The word or words to edit, as they appear in the prompt."),
                io.Float.Input("strength", default=0.5, min=-10.0, max=10.0, step=0.05,
                               tooltip="How far to slide: 0 leaves the image unchanged, negative goes the other "
                                       "way."),
                io.Combo.Input("schedule", options=list(SCHEDULES), default="exponential",
                               tooltip="How the strength follows the denoising: exponential (the authors'), linear "
                                       "or constant."),
                io.Combo.Input("part", options=list(PARTS), default="auto",
                               tooltip="Which tokens: T5 (Flux, SD3.5) or CLIP; auto takes the SAE's own part (or "
                                       "T5 when present, for SAEs that do not record it)."),
                io.Combo.Input("timing", options=list(TIMINGS), default="authors", optional=True,
                               tooltip="authors: their 40 factors x_k = k/39 (linspace(0, 40, 40)/40), applied "
                                       "one step late as their step-end callback does: steps 0 and 1 unedited, "
                                       "step k at x_(k-1); exact at 40 steps, followed by progress otherwise. "
                                       "undelayed: this pack's earlier grid, step k of 40 at x = k/40."),
            ],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, conditioning, clip, sae, direction, prompt, word, strength, schedule, part,
                timing="authors") -> io.NodeOutput:
        if len(prompt) > MAX_PROMPT_CHARS:
            raise EditLabInputError("prompt", f"a prompt of at most {MAX_PROMPT_CHARS} characters", prompt)
        if len(word) > MAX_PROMPT_CHARS:
            raise EditLabInputError("word", f"a word of the prompt (at most {MAX_PROMPT_CHARS} characters)", word)
        if direction.direction.shape[0] != sae.sae.config.dict_size:
            raise EditLabInputError("direction", f"a direction over this SAE's {sae.sae.config.dict_size} features",
                                    f"{direction.name}, {direction.direction.shape[0]} features")
        if not conditioning:
            raise EditLabInputError("conditioning", "a conditioning with at least one entry")
        delta = decoded_delta(sae.sae, direction.direction)
        wanted = _part_for(sae, part)
        out, checked, first = [], {}, None
        for cond, options in conditioning:
            _check_width(sae, cond.shape[-1])
            text = _entry_text(options, prompt)
            key = (text, cond.shape[1])
            if key not in checked:
                try:
                    layout = token_layout(clip, text, cond.shape[1], wanted)
                except ValueError as exc:
                    raise EditLabInputError("part", str(exc), part) from None
                _check_part(sae, layout.part)
                first = first or (cond, layout)
                try:
                    checked[key] = word_positions(clip, layout, word)
                except ValueError as exc:
                    raise EditLabInputError("word", str(exc), word) from None
                if PROMPT_KEY not in options:
                    _check_typed_prompt(clip, text, cond)
            out += slide_conditioning([[cond, options]], checked[key], delta, schedule, strength, timing=timing)
        return io.NodeOutput(out, ui=panels.ui_for("sae_features", _slider_view(clip, sae, direction, first, word,
                                                                                strength, schedule, checked)))


def _slider_view(clip, sae, direction, first, word, strength, schedule, checked) -> dict:
    """The feature view of a slider run: the direction's features, and the per-token activations of the first
    conditioning entry as the slider received it (before its own edit), the direction's features labelled."""
    chosen = panels.direction_features(direction.name, direction.feature_ids, direction.weights, direction.direction)
    table = {"tokens": []}
    if first is not None:
        cond, layout = first
        content = layout.content[:panels.MAX_PANEL_TOKENS]
        with torch.no_grad():
            codes = sae.sae.encode(cond[0, content].float().to(sae.sae.W_dec.device)).detach().cpu()
        labels = {f: [direction.name] for f in panels.direction_ids(direction.feature_ids, direction.direction)}
        table = feature_table(codes, token_texts(clip, layout)[:len(content)], content, 8, labels)
    return panels.feature_view(table, chosen, node="slider", sae=sae.name, word=word, strength=float(strength),
                               schedule=schedule,
                               positions=sorted({int(p) for ps in checked.values() for p in _flat_positions(ps)})[:256])


def _flat_positions(positions) -> list[int]:
    """The token positions a slider edits, from ``word_positions``' answer (a list, or a tensor)."""
    try:
        return [int(p) for p in (positions.tolist() if hasattr(positions, "tolist") else positions)]
    except (TypeError, ValueError):
        return []


def _check_typed_prompt(clip, text: str, cond: torch.Tensor) -> None:
    """A typed prompt must be the one the conditioning was encoded from: it is encoded and compared (a prompt that
    differs would edit other tokens than the word's without a sign)."""
    fresh = clip.encode_from_tokens_scheduled(clip.tokenize(text))[0][0]
    same = fresh.shape == cond.shape and torch.allclose(fresh.float().cpu(), cond.float().cpu(), rtol=1e-3,
                                                        atol=1e-4)
    if not same:
        raise EditLabInputError("prompt", "the text this conditioning was encoded from (encoding it gives another "
                                          "conditioning); or use 'CLIP Text Encode (records tokens)' and leave the "
                                          "prompt empty", text)


def _direction_labels(sae_name: str, extra=None) -> dict[int, list[str]]:
    """Feature id -> names of the saved directions made with this SAE (and the connected one) that use it."""
    labels: dict[int, list[str]] = {}
    found = []
    for name in host.model_files(DIRECTION_FOLDER):
        try:
            d = load_direction(host.model_file_path(DIRECTION_FOLDER, name))
        except Exception as exc:  # noqa: BLE001 - an unreadable file is the loader's business, not a view's
            log.warning("SAE Features: skipping models/%s/%s: %s", DIRECTION_FOLDER, name,
                        excerpt(str(exc), 300))
            continue
        if d["sae"] == sae_name:
            found.append((os.path.splitext(name)[0], d["feature_ids"]))
    if extra is not None:
        found.append((os.path.splitext(extra.name)[0], panels.direction_ids(extra.feature_ids, extra.direction)))
    for label, ids in found:
        for f in panels.direction_ids(ids):
            if label not in labels.setdefault(f, []):
                labels[f].append(label)
    return labels


class EditLabSAEFeatures(EditLabNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EditLabSAEFeatures", display_name="SAE Features per Token", category=CAT,
            description="Shows which SAE features fire on which token of a prompt: a heat-map IMAGE (tokens x "
                        "features) and JSON. Features used by saved directions made with this SAE (or by the "
                        "connected direction) are labelled with the direction's name, and drawn in green.",
            inputs=[
                io.Clip.Input("clip", tooltip="The text encoder the SAE was trained on."),
                SAEType.Input("sae", tooltip="The SAE whose features are shown."),
                io.String.Input("prompt", multiline=True, default="a smiling man in a park",
                                tooltip="The text whose tokens are shown."),
                io.Combo.Input("part", options=list(PARTS), default="auto",
                               tooltip="Which tokens: T5 (Flux, SD3.5) or CLIP; auto picks T5 when present."),
                io.Int.Input("top_n", default=8, min=1, max=256, tooltip="Features listed per token."),
                DirectionType.Input("direction", optional=True,
                                    tooltip="Optional: label the features this direction uses."),
            ],
            outputs=[io.Image.Output(display_name="heatmap"), io.String.Output(display_name="json")],
        )

    @classmethod
    def execute(cls, clip, sae, prompt, part, top_n, direction=None) -> io.NodeOutput:
        _checked_prompt(prompt)
        try:
            encoded = prompt_tokens(clip, prompt, _part_for(sae, part))
        except ValueError as exc:
            raise EditLabInputError("part", str(exc), part) from None
        _check_part(sae, encoded.part)
        if len(encoded.content) > MAX_FEATURE_ROWS:
            raise EditLabInputError("prompt", f"a prompt of at most {MAX_FEATURE_ROWS} tokens (one heat-map row "
                                              f"each); it has {len(encoded.content)}", prompt)
        _check_width(sae, encoded.embeddings.shape[-1])
        codes = sae.sae.encode(encoded.embeddings[0, encoded.content].float()).detach()
        texts = token_texts(clip, encoded)
        table = feature_table(codes, texts, encoded.content, top_n, _direction_labels(sae.name, direction))
        table["sae"] = sae.name
        chosen = None if direction is None else panels.direction_features(direction.name, direction.feature_ids,
                                                                          direction.weights, direction.direction)
        view = panels.feature_view(table, chosen, node="features", sae=sae.name, prompt=prompt[:400])
        return io.NodeOutput(heatmap(codes, texts, table), json.dumps(table), ui=panels.ui_for("sae_features", view))


class EditLabFlowInversion(EditLabNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EditLabFlowInversion", display_name="Flow Inversion (Flux)", category=CAT,
            description="Inverts an image latent to the noise that Euler sampling on the same sigmas, conditioning "
                        "and CFG turns back into it (rectified-flow models: Flux family, SD3). Feed 'noise' to "
                        "SamplerCustomAdvanced with the euler sampler, the same sigmas and a guider with the same cfg "
                        "and negative (BasicGuider at cfg 1, CFGGuider otherwise), then edit the conditioning (e.g. "
                        "with SAE Slider) to edit the photo.",
            inputs=[
                io.Model.Input("model", tooltip="A rectified-flow model (Flux family, SD3)."),
                io.Conditioning.Input("conditioning", tooltip="The unedited prompt."),
                io.Latent.Input("latent", tooltip="The photo's latent (VAE Encode)."),
                io.Sigmas.Input("sigmas", tooltip="The sigmas the edit will be sampled with (e.g. BasicScheduler)."),
                io.Int.Input("iterations", default=3, min=1, max=50,
                             tooltip="Fixed-point iterations per step: more is a closer inversion, and slower."),
                io.Float.Input("cfg", default=1.0, min=0.0, max=100.0, step=0.1, optional=True,
                               tooltip="The CFG the edit will be sampled with (1: no CFG, e.g. Flux dev; SD3 uses "
                                       "CFG). Other than 1 needs the negative."),
                io.Conditioning.Input("negative", optional=True,
                                      tooltip="The negative prompt the edit will be sampled with (needed when cfg is "
                                              "not 1)."),
            ],
            outputs=[io.Noise.Output(display_name="noise"), io.Latent.Output(display_name="inverted")],
        )

    @classmethod
    def execute(cls, model, conditioning, latent, sigmas, iterations, cfg=1.0, negative=None) -> io.NodeOutput:
        kind = getattr(model.model.model_type, "name", str(model.model.model_type))
        if kind not in ("FLUX", "FLOW"):
            raise EditLabInputError("model", "a rectified-flow model (Flux family, SD3)", kind)
        samples = latent["samples"]
        if not bool(torch.isfinite(sigmas).all()) or sigmas.ndim != 1 or len(sigmas) < 2:
            raise EditLabInputError("sigmas", "a finite, 1-D schedule of at least 2 sigmas", tuple(sigmas.shape))
        if not bool(torch.isfinite(samples).all()):
            raise EditLabInputError("latent", "a latent of finite values (it holds NaN or infinite values)")
        if cfg != 1.0 and negative is None:
            raise EditLabInputError("negative", f"the negative prompt the edit is sampled with (cfg is {cfg:g}: the "
                                                "inversion must use the same CFG as the sampling back)")
        bar = host.progress(len(sigmas) - 1)
        sampler = InversionSampler(iterations, on_step=lambda i, n: bar.update_absolute(i, n),
                                   should_stop=host.check_interrupted)
        try:
            out = host.sample_custom(model, torch.zeros_like(samples), cfg, sampler, sigmas, conditioning,
                                     conditioning if negative is None else negative, samples)
        except ValueError as exc:
            raise EditLabInputError("sigmas", str(exc)) from None
        noise = model.model.process_latent_in(out)  # the guider scaled its result out of model space; undo it

        def mismatch(shape):
            return EditLabInputError("latent_image", f"a latent of the inverted image's shape {tuple(noise.shape)}",
                                     shape)

        return io.NodeOutput(InvertedNoise(noise, mismatch), {"samples": out})


NODES = [EditLabSAETrain, EditLabSAELoader, EditLabSAEDirection, EditLabSAEDirectionLoader, EditLabSAESlider,
         EditLabSAEFeatures, EditLabFlowInversion, EditLabTextEncode]
