"""World-To-Image nodes: image sources (a local library, web image search), an image scorer (a VLM judge or a local
CLIP vision model) and the agent that retrieves references, rewrites the prompt, generates, scores and iterates.

The method lives in ``models/worldtoimage/`` (plain Python over callables); these nodes check inputs, wrap the host's
sampling, VAE and CLIP into those callables and call ``run_agent``. Every web request goes through
``models/fetch.py`` (the guarded client).
"""
from __future__ import annotations

import json

import numpy as np
import torch
from comfy_api.latest import io, ui

from ..models import panels
from ..models.fetch import FetchLimits
from ..models.llm import LLMClient, LLMConfig
from ..models.worldtoimage import judge as J
from ..models.worldtoimage.agent import AgentSettings, run_agent
from ..models.worldtoimage.library import ImageLibrary
from ..models.worldtoimage.scoring import FORMULAS, Score, combine, substitutions
from ..models.worldtoimage.sources import DEFAULT_ENDPOINTS, SERVICES, LibrarySource, SourceError, WebImageSource
from . import host
from .common import CATEGORY, EditLabInputError, EditLabNode, checked_image_size
from .files import input_folder
from .llm import LLMType, pil_images

CAT = f"{CATEGORY}/WorldToImage"
SourceType = io.Custom("EDITLAB_IMAGE_SOURCE")
ScorerType = io.Custom("EDITLAB_IMAGE_SCORER")
MAX_SOURCES = 3
MAX_PROMPT_CHARS = 2000
NO_CLIP_VISION = "(none)"
REFERENCE_MODES = ("reference_latents", "image_prompt", "none")


def tensor_to_pil(image):
    from PIL import Image

    return Image.fromarray((image.detach().float().cpu().clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8))


def pil_to_tensor(pil, width: int, height: int) -> torch.Tensor:
    """(1, H, W, 3) in [0, 1]: centre-cropped to the aspect of width x height, then resized."""
    from PIL import Image

    w, h = pil.size
    target = width / height
    if w / h > target:
        nw = max(1, round(h * target))
        pil = pil.crop(((w - nw) // 2, 0, (w - nw) // 2 + nw, h))
    else:
        nh = max(1, round(w / target))
        pil = pil.crop((0, (h - nh) // 2, w, (h - nh) // 2 + nh))
    pil = pil.resize((width, height), Image.LANCZOS)
    return torch.from_numpy(np.asarray(pil).copy()).float().div(255.0)[None]


class EditLabImageLibrary(EditLabNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EditLabImageLibrary",
            display_name="Image Library (local folder)",
            category=CAT,
            description=(
                "A folder of your images inside ComfyUI's input folder as an image source for the World-To-Image "
                "agent: works offline. Each image's caption is its sidecar .txt file (same name) or else its file "
                "name; an optional <name>.licence.txt gives its licence. Indexed once (again only when files change) "
                "and searched by keywords."),
            inputs=[
                io.String.Input("folder", default=".",
                                tooltip="A folder inside ComfyUI's input folder ('.' = the input folder itself)."),
                io.Boolean.Input("recursive", default=True, tooltip="Also index images in sub-folders."),
            ],
            outputs=[SourceType.Output(display_name="source"), io.String.Output(display_name="index")],
        )

    @classmethod
    def fingerprint_inputs(cls, folder, recursive):
        from ..models.worldtoimage.library import _signature

        try:
            return (folder, recursive, _signature(input_folder(folder, "folder")))
        except Exception:  # noqa: BLE001 - a bad folder is reported by execute
            return (folder, recursive)

    @classmethod
    def execute(cls, folder, recursive) -> io.NodeOutput:
        path = input_folder(folder, "folder")
        try:
            library = ImageLibrary(path, recursive)
        except ValueError as exc:
            raise EditLabInputError("folder", str(exc), folder) from None
        if not library.entries:
            raise EditLabInputError("folder", "a folder holding .png/.jpg/.webp/.bmp/.gif images", folder)
        index = "\n".join(f"{e.name}: {e.caption[:80]} [{e.licence}]" for e in library.entries[:200])
        text = f"{len(library.entries)} images\n{index}"
        return io.NodeOutput(LibrarySource(library), text, ui=ui.PreviewText(text))


class EditLabWebImageSearch(EditLabNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EditLabWebImageSearch",
            display_name="Web Image Search",
            category=CAT,
            description=(
                "A web image source for the World-To-Image agent: Openverse, Wikimedia Commons, a SearxNG instance or "
                "your own JSON endpoint. Every request goes through one guarded client: http/https only, private, "
                "loopback, link-local and cloud metadata addresses refused (loopback only for this endpoint's own "
                "host and port, when allowed), redirects re-checked, one time limit per request, size limits, "
                "malformed answers recorded as refusals, and a download must decode as a PNG, JPEG, WEBP, GIF or "
                "BMP image within the pixel cap. "
                "Results and images are cached on disk with their source URL and licence. Nothing is fetched until "
                "the agent runs."),
            inputs=[
                io.Combo.Input("service", options=list(SERVICES), default="openverse",
                               tooltip="openverse: openly licensed images (licence recorded); wikimedia_commons: "
                                       "Commons files (licence recorded); searxng: your SearxNG instance (JSON "
                                       "format enabled; no licence information); custom_json: your endpoint."),
                io.String.Input("endpoint", default="",
                                tooltip="Empty = the service's default (" + ", ".join(
                                    f"{k}: {v}" for k, v in DEFAULT_ENDPOINTS.items()) + "). A local SearxNG "
                                    "or endpoint on 127.0.0.1 needs allow_loopback. custom_json: a URL template with "
                                    "{query} and optionally {count}."),
                io.Boolean.Input("allow_loopback", default=False,
                                 tooltip="Allow this endpoint on 127.0.0.1 / localhost (a local SearxNG or your own "
                                         "service): its own host and port only; image URLs and redirects to any "
                                         "other port on loopback stay refused, as do private and metadata "
                                         "addresses."),
                io.Boolean.Input("use_cache", default=True,
                                 tooltip="Reuse cached search answers and images (reruns are reproducible and "
                                         "offline); off: always ask the service again."),
                io.Float.Input("timeout", default=10.0, min=0.5, max=120.0, step=0.5,
                               tooltip="Seconds one request may take in total (name lookup, connect, headers and "
                                       "body: a hard deadline)."),
                io.Float.Input("max_megabytes", default=20.0, min=0.1, max=100.0, step=0.5,
                               tooltip="Largest download accepted; a bigger body is refused while streaming."),
                io.Float.Input("max_megapixels", default=40.0, min=0.01, max=100.0, step=1.0,
                               tooltip="Largest image accepted, checked in the header before decoding."),
            ],
            outputs=[SourceType.Output(display_name="source")],
        )

    @classmethod
    def execute(cls, service, endpoint, allow_loopback, use_cache, timeout, max_megabytes,
                max_megapixels) -> io.NodeOutput:
        limits = FetchLimits(max_bytes=int(max_megabytes * 2**20), connect_timeout=min(5.0, timeout),
                             read_timeout=timeout, total_timeout=timeout, max_pixels=int(max_megapixels * 1e6))
        try:
            source = WebImageSource(service, endpoint, limits, host.user_cache_dir("worldtoimage"), use_cache,
                                    allow_loopback=bool(allow_loopback))
        except SourceError as exc:
            raise EditLabInputError("endpoint", str(exc), endpoint) from None
        return io.NodeOutput(source)


class ImageScorer:
    """What the scorer socket carries: ``__call__(pil, prompt, keywords) -> Score``."""

    def __init__(self, judge: str, llm: LLMConfig | None, clip_vision, clip, formula: str, aesthetic: bool):
        self.judge, self.llm, self.clip_vision, self.clip = judge, llm, clip_vision, clip
        self.formula, self.aesthetic = formula, aesthetic

    def describe(self) -> dict:
        return {"judge": self.judge, "formula": self.formula,
                "aesthetic": "VLM rating" if self.aesthetic else "no predictor (term left out)"}

    def __call__(self, pil, prompt: str, keys: list[str]) -> Score:
        if self.judge == "vlm":
            score = J.judge(LLMClient(self.llm), pil, prompt, keys, self.aesthetic)
        else:
            score = self._clip_score(pil, prompt)
        if score.aesthetic is None:
            score.notes.append("aesthetic: no predictor available, term left out")
        score.notes.extend(substitutions(score, self.formula))
        score.combined = combine(score, self.formula)
        return score

    def _clip_score(self, pil, prompt: str) -> Score:
        image = pil_to_tensor(pil, pil.size[0], pil.size[1])
        img = self.clip_vision.encode_image(image).image_embeds.float().flatten()
        txt = projected_pooled(self.clip, prompt, img.numel())
        if txt.numel() != img.numel():
            raise EditLabInputError("clip", f"a text encoder whose pooled output is as wide as the CLIP vision "
                                            f"embedding ({img.numel()})", f"{txt.numel()} wide")
        cos = float(torch.nn.functional.cosine_similarity(img[None], txt[None]).item())
        return Score("clip", clip=cos, notes=["keyword coverage: not measured by CLIP"])


def projected_pooled(clip, text: str, width: int) -> torch.Tensor:
    """The prompt's pooled text embedding after CLIP's text projection (the space CLIP vision's ``image_embeds``
    live in), flattened. Flux and SD3 pool their CLIP-L unprojected; the host's ``projected_pooled`` option gives
    the projected one. It is set on a clone's text model for this one encoding and reset right after (the clone
    shares the text model; the host's own ``encode_from_tokens`` resets the options before every encoding too), so
    the user's CLIP encodes as before. SD3 pools CLIP-L and CLIP-G side by side: the part as wide as the image
    embedding is taken."""
    c = clip.clone()
    tokens = c.tokenize(text)
    model = c.cond_stage_model
    model.reset_clip_options()
    model.set_clip_options({"projected_pooled": True})
    try:
        c.load_model()
        pooled = model.encode_token_weights(tokens)[1]
    finally:
        model.reset_clip_options()
    txt = pooled.float().flatten()
    if txt.numel() != width and getattr(model, "clip_l", None) is not None and \
            getattr(model, "clip_g", None) is not None:
        wl = model.clip_l.transformer.text_projection.weight.shape[0]
        wg = model.clip_g.transformer.text_projection.weight.shape[0]
        if txt.numel() == wl + wg and width in (wl, wg):
            txt = txt[:wl] if width == wl else txt[wl:]
    return txt


class EditLabImageScorer(EditLabNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EditLabImageScorer",
            display_name="Image Scorer (VLM judge or CLIP)",
            category=CAT,
            description=(
                "Scores generated images for the World-To-Image agent: a vision LLM judge (semantic alignment 0-10 and "
                "which prompt keywords it sees) or a local CLIP vision model from ComfyUI's clip_vision folder (cosine "
                "with the prompt's projected pooled CLIP text embedding, e.g. clip_vision ViT-L/14 with Flux's, "
                "SD3's or SD1.5's CLIP-L). Aesthetic term only where a predictor is available (the VLM's rating, if asked). Default "
                "formula: the World-To-Image authors' gated combination. Wire an image and a prompt to score it here."),
            inputs=[
                io.Combo.Input("judge", options=["vlm", "clip_vision"], default="vlm",
                               tooltip="vlm: the LLM input judges (needs vision); clip_vision: a local CLIP model."),
                io.Combo.Input("formula", options=list(FORMULAS), default="authors_gated",
                               tooltip="authors_gated: the World-To-Image authors' hpsv2 + 0.5*min(20s - 5.6, 0) "
                                       "+ 0.25*aesthetic*[s > 0.28], s the CLIP cosine. Substituted here: no HPSv2 "
                                       "model (counts 0, as in the authors' own config); the aesthetic is the VLM's "
                                       "0-10 rating (the authors: LAION predictor), 0 when not asked; a VLM judge "
                                       "has no cosine, s = 0.04*(alignment + 10*coverage)/2 stands in. Without an "
                                       "aesthetic every image above s = 0.28 scores 0 (the first is kept). "
                                       "linear_gated: this pack's earlier s + 0.5*min(20s - 5.6, 0) + "
                                       "0.01*aesthetic*[s > 0.28] (still ranks above the gate); mean: the mean of "
                                       "the terms on 0-1."),
                io.Boolean.Input("vlm_aesthetic", default=False,
                                 tooltip="Ask the VLM judge for an aesthetic rating too (0-10). Off: no aesthetic "
                                         "term, and the history says so."),
                LLMType.Input("llm", optional=True, tooltip="The vision LLM (judge = vlm)."),
                io.Combo.Input("clip_vision_name", options=[NO_CLIP_VISION] + host.clip_vision_files(),
                               default=NO_CLIP_VISION, optional=True,
                               tooltip="A CLIP vision model from ComfyUI's clip_vision folder (judge = clip_vision)."),
                io.Clip.Input("clip", optional=True,
                              tooltip="The text encoder whose CLIP-L/G shares the CLIP vision model's space; its pooled "
                                      "output is taken after the text projection (judge = clip_vision)."),
                io.Image.Input("image", optional=True, tooltip="Optional: an image to score now."),
                io.String.Input("prompt", default="", optional=True, tooltip="The prompt the image is scored against."),
            ],
            outputs=[ScorerType.Output(display_name="scorer"), io.Float.Output(display_name="score"),
                     io.String.Output(display_name="json")],
        )

    @classmethod
    def execute(cls, judge, formula, vlm_aesthetic, llm=None, clip_vision_name=NO_CLIP_VISION, clip=None,
                image=None, prompt="") -> io.NodeOutput:
        clip_vision = None
        if judge == "vlm":
            if not isinstance(llm, LLMConfig):
                raise EditLabInputError("llm", "an EditLab LLM node's output (judge = vlm)")
            if not llm.vision:
                raise EditLabInputError("llm", "an LLM with vision on (the judge looks at the image)")
        else:
            if clip_vision_name in (None, NO_CLIP_VISION) or clip_vision_name not in host.clip_vision_files():
                raise EditLabInputError("clip_vision_name", "a model from ComfyUI's clip_vision folder",
                                        clip_vision_name)
            if clip is None:
                raise EditLabInputError("clip", "a CLIP text encoder (judge = clip_vision)")
            clip_vision = host.load_clip_vision(clip_vision_name)
        scorer = ImageScorer(judge, llm, clip_vision, clip, formula, bool(vlm_aesthetic) and judge == "vlm")
        value, text = 0.0, ""
        if image is not None:
            if not (prompt or "").strip():
                raise EditLabInputError("prompt", "the prompt to score the image against")
            from ..models.worldtoimage.keywords import keywords

            scores = [scorer(p, prompt, keywords(prompt)) for p in pil_images(image, "image")]
            value = sum(s.combined for s in scores) / len(scores)
            text = json.dumps([s.record() for s in scores], indent=1)
        return io.NodeOutput(scorer, value, text)


class EditLabWorldToImage(EditLabNode):
    @classmethod
    def define_schema(cls):
        sources = [SourceType.Input(f"source_{i}", optional=True,
                                    tooltip="An image source (Image Library, Web Image Search): searched in order.")
                   for i in range(1, MAX_SOURCES + 1)]
        return io.Schema(
            node_id="EditLabWorldToImage",
            display_name="World-To-Image Agent",
            category=CAT,
            description=(
                "World-To-Image: generate, score, then for each further iteration the LLM diagnoses the failure "
                "and rewrites the prompt; an understanding failure (or none given) also retrieves reference images "
                "for the concepts the model misses (library / web) and generates with them as reference latents "
                "(Flux Kontext style), a rendering failure generates from the rewritten prompt alone; score, keep "
                "the best; stop early at the threshold. "
                "Without an LLM it still runs: keyword retrieval, scoring, keep-best (the history says what was "
                "skipped). Outputs the best image, its prompt, the full history (prompts, references with source "
                "and licence, scores, seeds) and every iteration's image."),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (reference latents need a Flux-family model, "
                                                "e.g. Flux Kontext)."),
                io.Clip.Input("clip", tooltip="The model's text encoder."),
                io.Vae.Input("vae", tooltip="The model's VAE (encodes references, decodes results)."),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="What to generate; names the model may not know are what the agent "
                                        "looks up."),
                io.Int.Input("width", default=512, min=16, max=4096, step=16, tooltip="Image width in pixels."),
                io.Int.Input("height", default=512, min=16, max=4096, step=16, tooltip="Image height in pixels."),
                io.Int.Input("steps", default=20, min=1, max=200, tooltip="Sampling steps per iteration."),
                io.Float.Input("cfg", default=1.0, min=0.0, max=30.0, step=0.1,
                               tooltip="Classifier-free guidance (1.0 for Flux, which uses its own guidance)."),
                io.Combo.Input("sampler_name", options=list(host.SAMPLER_NAMES), default="euler",
                               tooltip="Sampler, as in KSampler."),
                io.Combo.Input("scheduler", options=list(host.SCHEDULER_NAMES), default="simple",
                               tooltip="Scheduler, as in KSampler."),
                io.Int.Input("seed", default=0, min=0, max=2**63 - 1,
                             tooltip="Noise seed, the same for every iteration (differences come from the prompt and "
                                     "the references; the authors also keep one seed)."),
                io.Int.Input("iterations", default=3, min=1, max=20,
                             tooltip="At most this many generations (the authors run 5; the first two give most of "
                                     "the gain)."),
                io.Float.Input("threshold", default=10.0, min=-10.0, max=10.0, step=0.01,
                               tooltip="Stop as soon as an iteration's combined score reaches this. 10 (the "
                                       "default): never, all iterations run, as the authors do. The authors' "
                                       "formula is at most 0 without an aesthetic rating (0 once s > 0.28) and at "
                                       "most 2.5 with one."),
                io.Int.Input("candidates", default=5, min=1, max=20,
                             tooltip="Candidates per query and source (the authors: 5, of which the LLM picks one)."),
                io.Int.Input("references", default=1, min=0, max=4,
                             tooltip="Reference images per iteration (0: no retrieval)."),
                io.Combo.Input("reference_mode", options=list(REFERENCE_MODES), default="reference_latents",
                               tooltip="reference_latents: references go in as the host's reference latents "
                                       "(Flux Kontext style token concatenation); image_prompt: through the style "
                                       "model and CLIP vision you wire (e.g. Flux Redux), as StyleModelApply does; "
                                       "none: retrieved and recorded only."),
                LLMType.Input("llm", optional=True,
                              tooltip="Plans (diagnosis, prompt rewrite, search queries) and picks references; "
                                      "the diagnosis routes: rendering = prompt only, understanding = prompt + "
                                      "retrieval. Without it: keyword queries, the prompt unchanged."),
                ScorerType.Input("scorer", optional=True,
                                 tooltip="Scores each iteration (Image Scorer). Without it nothing is scored and the "
                                         "first iteration is kept."),
                *sources,
                io.StyleModel.Input("style_model", optional=True,
                                    tooltip="Image-prompt model for reference_mode = image_prompt (e.g. Flux Redux, "
                                            "from Load Style Model)."),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="The CLIP vision model the style model reads (reference_mode = "
                                            "image_prompt; Redux: sigclip_vision_patch14_384)."),
            ],
            outputs=[io.Image.Output(display_name="best_image"), io.String.Output(display_name="final_prompt"),
                     io.String.Output(display_name="history"), io.Image.Output(display_name="all_iterations")],
        )

    @classmethod
    def execute(cls, model, clip, vae, prompt, width, height, steps, cfg, sampler_name, scheduler, seed, iterations,
                threshold, candidates, references, reference_mode, llm=None, scorer=None, source_1=None,
                source_2=None, source_3=None, style_model=None, clip_vision=None) -> io.NodeOutput:
        if not prompt.strip() or len(prompt) > MAX_PROMPT_CHARS:
            raise EditLabInputError("prompt", f"a prompt of 1 to {MAX_PROMPT_CHARS} characters", prompt)
        checked_image_size(height, width, "width")
        if llm is not None and not isinstance(llm, LLMConfig):
            raise EditLabInputError("llm", "an EditLab LLM node's output", type(llm).__name__)
        if scorer is not None and not isinstance(scorer, ImageScorer):
            raise EditLabInputError("scorer", "an EditLab Image Scorer node's output", type(scorer).__name__)
        sources = [s for s in (source_1, source_2, source_3) if s is not None]
        for i, s in enumerate((source_1, source_2, source_3), 1):
            if s is not None and not isinstance(s, (LibrarySource, WebImageSource)):
                raise EditLabInputError(f"source_{i}", "an Image Library or Web Image Search output",
                                        type(s).__name__)
        if reference_mode == "image_prompt" and (style_model is None or clip_vision is None):
            raise EditLabInputError("reference_mode", "style_model and clip_vision wired for image_prompt (or "
                                                      "reference_latents / none)", reference_mode)
        width, height = width // 8 * 8, height // 8 * 8
        negative = _encode(clip, "")

        def generate(text, refs, run_seed):
            positive = _encode(clip, text)
            if refs and reference_mode == "reference_latents":
                latents = [vae.encode(pil_to_tensor(r, width, height)) for r in refs]
                positive = host.conditioning_set_values(positive, {"reference_latents": latents}, append=True)
            elif refs and reference_mode == "image_prompt":
                for r in refs:
                    seen = clip_vision.encode_image(pil_to_tensor(r, width, height), crop=True)
                    positive = host.apply_style_model(positive, style_model, seen)
            latent = {"samples": torch.zeros([1, 4, height // 8, width // 8])}
            out = host.ksample(model, run_seed, steps, cfg, sampler_name, scheduler, positive, negative, latent)
            image = vae.decode(out["samples"])
            image = image.reshape(-1, *image.shape[-3:])[:1].float().cpu()
            return image, tensor_to_pil(image[0])

        bar = host.progress(iterations)
        settings = AgentSettings(iterations=iterations, threshold=float(threshold), seed=int(seed),
                                 candidates=candidates, references=references)
        result = run_agent(prompt.strip(), generate, scorer, sources if references > 0 else [], settings,
                           llm=LLMClient(llm) if llm is not None else None,
                           on_iteration=lambda i, total, pil: host.progress_preview(bar, i + 1, total, pil),
                           check_interrupted=host.check_interrupted)
        history = result.history
        history["scorer"] = scorer.describe() if scorer is not None else None
        history["generation"] = {"width": width, "height": height, "steps": steps, "cfg": cfg,
                                 "sampler_name": sampler_name, "scheduler": scheduler,
                                 "reference_mode": reference_mode}
        text = json.dumps(history, indent=1)
        all_images = torch.cat(result.images, dim=0)
        summary = (f"best: iteration {result.best} of {len(result.images)} "
                   f"(score {history['best_score']}), stopped: {history['stopped']}")
        return io.NodeOutput(result.images[result.best], result.final_prompt, text, all_images,
                             ui={**ui.PreviewText(f"{summary}\n\n{text}").as_dict(),
                                 **panels.ui_for("agent_history", panels.agent_history(history, result.images))})


def _encode(clip, text: str):
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


NODES = [EditLabImageLibrary, EditLabWebImageSearch, EditLabImageScorer, EditLabWorldToImage]
