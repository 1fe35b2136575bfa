"""EditLabLLM (an OpenAI-compatible chat endpoint as a socket other nodes use) and EditLabVIEScore (a vision LLM
rating an edit: semantic consistency, perceptual quality, overall = sqrt(SC * PQ)).

The LLM socket carries ``models.llm.LLMConfig``: URL, model, the owner's endpoint and the NAME of the variable the
owner bound to it, temperature, timeout, retries. Which endpoints exist and which key each may use is the server
owner's decision (``models/llm/endpoints.py``: ``EDITLAB_LLM_ENDPOINTS`` or ``user/editlab/llm_endpoints.json``); a
workflow only selects one, so a shared workflow can not make a key travel to a host of its author's choosing. The key
itself is read when a request is made and never stored, output or logged. The ``openai`` package is imported only
when a request is made: without it these nodes load and say so when run.
"""
from __future__ import annotations

import json
import logging
import os
from importlib.util import find_spec
from urllib.parse import urlsplit

import numpy as np
from comfy_api.latest import io, ui

from ..models import netpolicy
from ..models.llm import LLMClient, LLMConfig, LLMError, OwnerConfigError, SelectionError, load_owner_endpoints, select
from ..models.llm.endpoints import OWNER_ENV, OWNER_FILE
from ..models.llm.viescore import viescore
from . import host
from .common import CATEGORY, EditLabInputError, EditLabNode, rgb_images

log = logging.getLogger("editlab")
LLMType = io.Custom("EDITLAB_LLM")
MAX_URL_CHARS = 2000
MAX_INSTRUCTION_CHARS = 2000
if find_spec("openai") is None:
    log.warning("EditLab: the 'openai' package is missing; the LLM nodes load but cannot call an endpoint "
                "(pip install -r requirements.txt)")


def pil_images(image, input_name: str) -> list:
    """An IMAGE batch as RGB PIL images (size and finite values checked first)."""
    from PIL import Image

    rgb = rgb_images(image, input_name)
    arr = (rgb.detach().float().cpu().clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
    return [Image.fromarray(a) for a in arr]


def owner_endpoints() -> dict:
    """The server owner's LLM endpoints (environment and ``<ComfyUI user dir>/editlab/llm_endpoints.json``)."""
    user_dir = os.path.dirname(os.path.normpath(host.user_cache_dir("")))  # <user>/editlab/ -> <user>
    try:
        return load_owner_endpoints(user_dir)
    except OwnerConfigError as exc:
        raise RuntimeError(f"EditLab LLM: the server owner's endpoint configuration is unusable: {exc}") from None


def owner_config_stamp() -> str:
    """A digest of the owner's configuration as it is now (environment text, file contents)."""
    import hashlib

    digest = hashlib.sha256(os.environ.get(OWNER_ENV, "").encode())
    try:
        path = os.path.join(os.path.dirname(os.path.normpath(host.user_cache_dir(""))), OWNER_FILE)
        with open(path, "rb") as f:
            digest.update(f.read(1 << 20))
    except OSError:
        pass
    return digest.hexdigest()


def checked_config(base_url, model, api_key_env, temperature, timeout, max_retries, vision) -> LLMConfig:
    base_url = base_url.strip()
    if len(base_url) > MAX_URL_CHARS:
        raise EditLabInputError("base_url", f"an http:// or https:// URL of at most {MAX_URL_CHARS} characters")
    try:
        endpoint, url = select(base_url, api_key_env, owner_endpoints())
    except SelectionError as exc:
        # never quoted: a base URL or api_key_env may hold a pasted secret
        raise EditLabInputError(exc.input_name, exc.expected) from None
    if endpoint is None:
        try:
            literal = netpolicy.host_literal(urlsplit(url).hostname or "")
        except ValueError as exc:
            raise EditLabInputError("base_url", f"a valid host ({exc})") from None
        why = None if literal is None or netpolicy.is_loopback(literal) else netpolicy.refusal(literal)
        if why:
            raise EditLabInputError("base_url", f"an endpoint on loopback, a public address or one the server's "
                                                f"owner configured; {literal} is {why}")
    if not model.strip():
        raise EditLabInputError("model", "a model name the endpoint serves")
    if not 0 <= temperature <= 2:
        raise EditLabInputError("temperature", "a temperature from 0 to 2", temperature)
    return LLMConfig(base_url=url, model=model.strip(), api_key_env=endpoint.key_env if endpoint else "",
                     temperature=float(temperature), timeout=float(timeout), max_retries=int(max_retries), seed=0,
                     vision=bool(vision), endpoint=endpoint.name if endpoint else "",
                     allow_private=bool(endpoint and endpoint.allow_private))


class EditLabLLM(EditLabNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EditLabLLM",
            display_name="LLM (OpenAI-compatible)",
            category=f"{CATEGORY}/WorldToImage",
            description=(
                "An OpenAI-compatible chat endpoint for the agent, the image scorer and VIEScore: OpenAI, or a local "
                "server (Ollama, llama.cpp, vLLM, LM Studio). Nothing is sent here; the nodes that use it send the "
                "requests. Keys stay with the server's owner: an endpoint with a key is one the owner declared "
                "(EDITLAB_LLM_ENDPOINTS or user/editlab/llm_endpoints.json), selected here by name or base URL; a "
                "workflow can not send a key anywhere else. Local servers on 127.0.0.1 need no configuration."),
            inputs=[
                io.String.Input("base_url", default="http://127.0.0.1:11434/v1",
                                tooltip="The API's base URL, ending in /v1 (Ollama: http://127.0.0.1:11434/v1, "
                                        "llama.cpp: http://127.0.0.1:8080/v1), or the name of an endpoint the "
                                        "server's owner declared (e.g. openai for https://api.openai.com/v1 with "
                                        "its key). No query, fragment or user:password."),
                io.String.Input("model", default="llava",
                                tooltip="Model name as the endpoint knows it (a vision model for scoring and "
                                        "VIEScore, e.g. llava, qwen2.5vl, gpt-4o)."),
                io.String.Input("api_key_env", default="",
                                tooltip="Empty (the key the server's owner bound to the selected endpoint, if any, "
                                        "is used), or the NAME of that bound variable (e.g. OPENAI_API_KEY), never "
                                        "the key. Any other variable is refused. The key is never saved in "
                                        "workflows, outputs, history or logs."),
                io.Float.Input("temperature", default=0.0, min=0.0, max=2.0, step=0.05,
                               tooltip="Sampling temperature; 0 (with the fixed request seed) is the most "
                                       "repeatable."),
                io.Float.Input("timeout", default=60.0, min=1.0, max=600.0, step=1.0,
                               tooltip="Seconds one request may take in all (name lookup, connection, the whole "
                                       "answer) before that attempt counts as failed."),
                io.Int.Input("max_retries", default=2, min=0, max=5,
                             tooltip="Extra attempts after a timeout, a 429/5xx answer or malformed JSON; then "
                                     "the node fails with what happened on each attempt (or the agent falls "
                                     "back to its keyword mode)."),
                io.Boolean.Input("vision", default=True,
                                 tooltip="Whether the model accepts images. Scoring and VIEScore need it; off, the "
                                         "agent's planner gets text only."),
            ],
            outputs=[LLMType.Output(display_name="llm")],
        )

    @classmethod
    def fingerprint_inputs(cls, base_url, model, api_key_env, temperature, timeout, max_retries, vision):
        # the owner's configuration is an input too: an edit to it must not be answered from the cache
        return (base_url, model, api_key_env, temperature, timeout, max_retries, vision, owner_config_stamp())

    @classmethod
    def execute(cls, base_url, model, api_key_env, temperature, timeout, max_retries, vision) -> io.NodeOutput:
        return io.NodeOutput(checked_config(base_url, model, api_key_env, temperature, timeout, max_retries, vision))


class EditLabVIEScore(EditLabNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EditLabVIEScore",
            display_name="VIEScore (edit quality by a vision LLM)",
            category=f"{CATEGORY}/LayeredEdit",
            description=(
                "Rates an edit with a vision LLM in the VIEScore protocol: semantic consistency (0-10: was the "
                "instruction carried out, and nothing else changed; the lower of the two), perceptual quality "
                "(0-10: natural, free of artifacts; the lower of the two) and overall = sqrt(SC x PQ), with the "
                "judge's reasons. A batch gives the mean and every pair's scores in the JSON."),
            inputs=[
                LLMType.Input("llm", tooltip="The vision LLM that judges (EditLab LLM node)."),
                io.String.Input("instruction", multiline=True, default="",
                                tooltip="The edit instruction the edited image was made from."),
                io.Image.Input("source_image", tooltip="The image before the edit (one, or one per edited image)."),
                io.Image.Input("edited_image", tooltip="The edited image(s)."),
            ],
            outputs=[io.Float.Output(display_name="semantic_consistency"),
                     io.Float.Output(display_name="perceptual_quality"),
                     io.Float.Output(display_name="overall"),
                     io.String.Output(display_name="reasons"),
                     io.String.Output(display_name="json")],
        )

    @classmethod
    def execute(cls, llm, instruction, source_image, edited_image) -> io.NodeOutput:
        if not isinstance(llm, LLMConfig):
            raise EditLabInputError("llm", "the output of an EditLab LLM node", type(llm).__name__)
        if not llm.vision:
            raise EditLabInputError("llm", "an LLM with vision on (VIEScore shows it the images)")
        if not instruction.strip() or len(instruction) > MAX_INSTRUCTION_CHARS:
            raise EditLabInputError("instruction", f"the edit instruction (1 to {MAX_INSTRUCTION_CHARS} characters)",
                                    instruction)
        sources, edits = pil_images(source_image, "source_image"), pil_images(edited_image, "edited_image")
        if len(sources) not in (1, len(edits)):
            raise EditLabInputError("source_image", f"one image or one per edited image ({len(edits)})",
                                    f"{len(sources)} images")
        client = LLMClient(llm)
        results = []
        for i, edited in enumerate(edits):
            try:
                results.append(viescore(client, instruction, sources[i if len(sources) > 1 else 0], edited))
            except LLMError as exc:
                if exc.refused:  # the endpoint itself is not allowed (a redirect elsewhere, an address refused)
                    raise EditLabInputError("llm", f"an endpoint requests may go to; {exc}") from None
                raise RuntimeError(f"VIEScore: the judge gave no usable answer for image {i}: {exc}") from None
        sc = sum(r.semantic_consistency for r in results) / len(results)
        pq = sum(r.perceptual_quality for r in results) / len(results)
        overall = sum(r.overall for r in results) / len(results)
        reasons = "\n".join(f"[{i}] SC {r.semantic_consistency:g} ({r.sc_reasoning}) | PQ {r.perceptual_quality:g} "
                            f"({r.pq_reasoning})" for i, r in enumerate(results))
        text = json.dumps({"semantic_consistency": sc, "perceptual_quality": pq, "overall": overall,
                           "model": llm.model, "pairs": [r.record() for r in results]}, indent=1)
        summary = f"VIEScore: SC {sc:.2f}, PQ {pq:.2f}, overall {overall:.2f}"
        return io.NodeOutput(sc, pq, overall, reasons, text, ui=ui.PreviewText(summary))


NODES = [EditLabLLM, EditLabVIEScore]
