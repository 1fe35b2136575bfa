"""Writes the shipped workflows from one spec each: the UI-format file (workflows/NAME.json, what ComfyUI's templates
browser opens) and its API-format twin (workflows/api/NAME.json, what /prompt takes).

Every workflow loads its models with ComfyUI's stock loaders and the file names ComfyUI's own templates use for that
family (the comfyui-workflow-templates package), so it runs on a user's real weights as shipped; ``./editlab run
--tiny`` swaps those loaders for EditLabTinyModels for a dry run on a CPU. Each workflow has one Note saying what it
does and which file goes in which folder, a titled group per stage, a layout without overlaps and a saved view that
reads at the zoom it opens with. The browser tests open every file in the real front end and check all of that
there. Run: python scripts/make_workflows.py
"""
from __future__ import annotations

import ast
import contextlib
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEED_CONTROL = object()  # marks the front end's "control after generate" value that follows a seed widget
UPLOAD_BUTTON = object()  # marks LoadImage's upload widget value: in the UI file only
SEED_NAMES = ("seed", "noise_seed")  # the front end adds a control widget after INT inputs with these names

# Model files as ComfyUI's own templates name them (comfyui-workflow-templates: flux_dev_full_text_to_image,
# flux_fill_inpaint_example, sd3.5_simple_example, default), with the folder each goes in and where to get it.
MODEL_FILES = {
    "flux1-dev.safetensors": ("diffusion_models",
                              "https://huggingface.co/Comfy-Org/flux1-dev/resolve/main/flux1-dev.safetensors"),
    "flux1-fill-dev.safetensors": ("diffusion_models", "https://huggingface.co/Comfy-Org/flux1-dev/resolve/main/"
                                                       "split_files/diffusion_models/flux1-fill-dev.safetensors"),
    "clip_l.safetensors": ("text_encoders",
                           "https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/clip_l.safetensors"),
    "t5xxl_fp16.safetensors": ("text_encoders", "https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/"
                                                "main/t5xxl_fp16.safetensors"),
    "ae.safetensors": ("vae", "https://huggingface.co/Comfy-Org/Lumina_Image_2.0_Repackaged/resolve/main/"
                              "split_files/vae/ae.safetensors"),
    "sd3.5_large_fp8_scaled.safetensors": ("checkpoints", "https://huggingface.co/Comfy-Org/stable-diffusion-3.5-fp8/"
                                                          "resolve/main/sd3.5_large_fp8_scaled.safetensors"),
    "sd_xl_base_1.0.safetensors": ("checkpoints", "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/"
                                                  "resolve/main/sd_xl_base_1.0.safetensors?download=true"),
    "v1-5-pruned-emaonly-fp16.safetensors": ("checkpoints", "https://huggingface.co/Comfy-Org/"
                                                            "stable-diffusion-v1-5-archive/resolve/main/"
                                                            "v1-5-pruned-emaonly-fp16.safetensors"),
    # -- ChronoEdit (ComfyUI's image_chrono_edit_14B template) --
    "chrono_edit_14B_fp16.safetensors": ("diffusion_models", "https://huggingface.co/Comfy-Org/"
                                                             "Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files/"
                                                             "diffusion_models/chrono_edit_14B_fp16.safetensors"),
    "umt5_xxl_fp8_e4m3fn_scaled.safetensors": ("text_encoders", "https://huggingface.co/Comfy-Org/"
                                                                "Wan_2.1_ComfyUI_repackaged/resolve/main/split_files/"
                                                                "text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors"),
    "wan_2.1_vae.safetensors": ("vae", "https://huggingface.co/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/resolve/main/"
                                       "split_files/vae/wan_2.1_vae.safetensors"),
    "clip_vision_h.safetensors": ("clip_vision", "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/"
                                                 "main/split_files/clip_vision/clip_vision_h.safetensors"),
    "chronoedit_distill_lora.safetensors": ("loras", "https://huggingface.co/nvidia/ChronoEdit-14B-Diffusers/resolve/"
                                                     "main/lora/chronoedit_distill_lora.safetensors"),
}

# Layout, in graph units. A node's box is its title bar (30) plus its body; the front end only ever grows a body to
# fit its widgets, so the sizes written here are generous lower bounds and the browser test measures the real ones.
TITLE_H, SLOT_H, WIDGET_H = 30, 22, 26
GAP_X, GAP_Y = 50, 40
GROUP_PAD, GROUP_TITLE_H = 20, 46
NOTE_W = 440
VIEW_SCALE = 0.75
VIEW_AT = (90, 140)  # screen pixels where the Note's top-left lands: clear of the side bar, tabs and banner
MULTILINE = {("CLIPTextEncode", "text"), ("EditLabToVATrain", "templates"),
             ("EditLabTextEncode", "text"), ("EditLabSAETrain", "prompts"), ("EditLabSAEDirection", "pairs"),
             ("EditLabSAESlider", "prompt"), ("EditLabBlendshapeEdit", "values")}
WIDE = {"CLIPTextEncode": 400, "EditLabTextEncode": 400, "EditLabSAETrain": 360, "EditLabSAEDirection": 380, "EditLabSAESlider": 360,
        "KSampler": 320, "DualCLIPLoader": 340, "UNETLoader": 340, "CheckpointLoaderSimple": 360,
        "LoadImage": 320, "SaveImage": 320, "EditLabBlendshapeEdit": 340}
IMAGE_NODES = {"LoadImage": 300, "SaveImage": 280}  # room for the picture shown under the widgets


def with_seed_controls(widgets):
    """The widget values as the front end stores them: a "control after generate" value after every seed.

    ComfyUI's front end gives every INT input named seed / noise_seed (or declared with control_after_generate) a
    second widget; a UI file that leaves its value out shifts every later value one widget along. "fixed" keeps the
    shipped seed, so a workflow gives the same result each time it is run from the page."""
    out = []
    widgets = list(widgets)
    for i, (name, value) in enumerate(widgets):
        out.append((name, value))
        follows = widgets[i + 1][0] if i + 1 < len(widgets) else None
        if name in SEED_NAMES and follows is not SEED_CONTROL:
            out.append((SEED_CONTROL, "fixed"))
    return out


def node_size(type_, widgets, n_inputs, n_outputs):
    width = WIDE.get(type_, 300)
    height = max(n_inputs, n_outputs, 1) * SLOT_H + 12
    for name, _ in widgets:
        if name is UPLOAD_BUTTON:
            height += WIDGET_H
        elif (type_, name) in MULTILINE:
            height += 110
        else:
            height += WIDGET_H
    return [width, height + IMAGE_NODES.get(type_, 0)]


MUTED = 2  # a node the page shows and saves but never queues: an option the Note tells the user to switch on


class Models:
    """Where a workflow's MODEL, CLIP and VAE come from: (node id, output slot, type) each."""

    def __init__(self, model, clip, vae):
        self.model, self.clip, self.vae = model, clip, vae


class Graph:
    def __init__(self, title: str):
        self.title = title
        self.nodes, self.stages, self.note = [], {}, None
        self._section = ("", 0, "")  # (stage key prefix, band offset, title prefix): see section()

    @contextlib.contextmanager
    def section(self, key: str, band: int, label: str):
        """Within the block, a workflow's builder adds its stages as a row of this graph (the tour): stage keys
        prefixed, bands moved down by ``band``, titles prefixed with ``label``."""
        old, self._section = self._section, (key + "_", band, label)
        try:
            yield self
        finally:
            self._section = old

    def stage(self, key, title, band, order=None):
        """A group: stages of one band sit side by side (in ``order``), bands one under the other."""
        prefix, offset, label = self._section
        key, title, band = prefix + key, label + title, band + offset
        self.stages[key] = {"title": title, "band": band, "order": len(self.stages) if order is None else order}
        return key

    def add(self, type_, widgets=(), inputs=None, outputs=(), stage=None, col=0, row=0, title=None, mode=0,
            properties=None):
        """widgets: [(name, value)] in the node's input order (UPLOAD_BUTTON as the name of the front-end-only
        upload value; seed controls are added); inputs: {name: (source_node, slot, type)}; outputs: output types;
        stage: the group it belongs to, col/row: its place inside the group. Returns the node id."""
        node_id = len(self.nodes) + 1
        widgets = with_seed_controls(widgets)
        self.nodes.append({"id": node_id, "type": type_, "widgets": widgets, "inputs": dict(inputs or {}),
                           "outputs": list(outputs), "title": title, "mode": mode, "stage": stage, "col": col,
                           "row": row, "properties": properties or {},
                           "size": node_size(type_, widgets, len(inputs or {}), len(outputs))})
        return node_id

    def add_note(self, markdown):
        lines = sum(1 + len(line) // 70 for line in markdown.splitlines())
        self.note = {"text": markdown, "size": [NOTE_W, 80 + 17 * lines]}

    # -- layout -------------------------------------------------------------------------------------------------
    def _layout(self):
        """Positions: columns inside each stage, stages side by side in bands, bands below each other, the Note at
        the top left. Returns the groups' boxes."""
        boxes = {}
        for key, st in self.stages.items():  # each stage laid out at its own origin first
            members = [n for n in self.nodes if n["stage"] == key]
            cols = sorted({n["col"] for n in members})
            x, placed = 0, {}
            for c in cols:
                column = sorted((n for n in members if n["col"] == c), key=lambda n: n["row"])
                y = 0
                for n in column:
                    placed[n["id"]] = [x, y + TITLE_H]
                    y += TITLE_H + n["size"][1] + GAP_Y
                x += max(n["size"][0] for n in column) + GAP_X
            width = x - GAP_X + 2 * GROUP_PAD
            height = max(placed[n["id"]][1] + n["size"][1] for n in members) + GROUP_PAD + GROUP_TITLE_H
            boxes[key] = {"placed": placed, "w": width, "h": height}
        bands = sorted({st["band"] for st in self.stages.values()})
        x0 = NOTE_W + GAP_X * 2
        y = 0
        groups = []
        for band in bands:
            keys = sorted((k for k, st in self.stages.items() if st["band"] == band),
                          key=lambda k: self.stages[k]["order"])
            x = x0
            for k in keys:
                b = boxes[k]
                groups.append({"title": self.stages[k]["title"], "bounding": [x, y - TITLE_H, b["w"], b["h"]]})
                for node_id, (nx, ny) in b["placed"].items():
                    self.nodes[node_id - 1]["pos"] = [x + GROUP_PAD + nx, y - TITLE_H + GROUP_TITLE_H + ny]
                x += b["w"] + GAP_X
            y += max(boxes[k]["h"] for k in keys) + GAP_X
        return groups

    def ui(self) -> dict:
        groups = self._layout()
        links, out_links = [], {}
        for node in self.nodes:
            for slot, (name, (src, src_slot, type_)) in enumerate(node["inputs"].items()):
                link_id = len(links) + 1
                links.append([link_id, src, src_slot, node["id"], slot, type_])
                out_links.setdefault((src, src_slot), []).append(link_id)
        nodes, link_iter = [], iter(links)
        for node in self.nodes:
            ui_node = {"id": node["id"], "type": node["type"], "pos": node["pos"], "size": node["size"],
                       "flags": {}, "order": node["id"] - 1, "mode": node["mode"],
                       "inputs": [{"name": name, "type": t, "link": next(link_iter)[0]}
                                  for name, (_, _, t) in node["inputs"].items()],
                       "outputs": [{"name": t, "type": t, "links": out_links.get((node["id"], i), []),
                                    "slot_index": i} for i, t in enumerate(node["outputs"])],
                       "properties": {"Node name for S&R": node["type"], **node["properties"]},
                       "widgets_values": [v for _, v in node["widgets"]]}
            if node["title"]:
                ui_node["title"] = node["title"]
            nodes.append(ui_node)
        note_id = len(nodes) + 1
        nodes.append({"id": note_id, "type": "MarkdownNote", "pos": [0, 0], "size": self.note["size"], "flags": {},
                      "order": note_id - 1, "mode": 0, "inputs": [], "outputs": [], "properties": {},
                      "widgets_values": [self.note["text"]], "title": f"Read me: {self.title}",
                      "color": "#432", "bgcolor": "#653"})
        offset = [VIEW_AT[0] / VIEW_SCALE, VIEW_AT[1] / VIEW_SCALE + TITLE_H]
        return {"last_node_id": note_id, "last_link_id": len(links), "nodes": nodes, "links": links,
                "groups": [{"id": i + 1, "title": g["title"], "bounding": g["bounding"], "color": "#3f789e",
                            "font_size": 24, "flags": {}} for i, g in enumerate(groups)],
                "config": {}, "extra": {"ds": {"scale": VIEW_SCALE, "offset": offset}}, "version": 0.4}

    def api(self) -> dict:
        prompt = {}
        for node in self.nodes:
            if node["mode"] in (2, 4):
                continue
            inputs = {n: v for n, v in node["widgets"] if n not in (SEED_CONTROL, UPLOAD_BUTTON)}
            inputs.update({name: [str(src), slot] for name, (src, slot, _) in node["inputs"].items()})
            entry = {"class_type": node["type"], "inputs": inputs}
            if node["title"]:
                entry["_meta"] = {"title": node["title"]}
            prompt[str(node["id"])] = entry
        return prompt


# -- loaders ----------------------------------------------------------------------------------------------------
def _models_property(*names):
    return {"models": [{"name": n, "url": MODEL_FILES[n][1], "directory": MODEL_FILES[n][0]} for n in names]}


def flux_loaders(g, stage, fill=False, col=0):
    """UNETLoader + DualCLIPLoader + VAELoader as ComfyUI's Flux (Fill) templates have them."""
    unet_file = "flux1-fill-dev.safetensors" if fill else "flux1-dev.safetensors"
    unet = g.add("UNETLoader", [("unet_name", unet_file), ("weight_dtype", "default")], outputs=["MODEL"],
                 stage=stage, col=col, row=0, properties=_models_property(unet_file))
    clip = g.add("DualCLIPLoader", [("clip_name1", "clip_l.safetensors"), ("clip_name2", "t5xxl_fp16.safetensors"),
                                    ("type", "flux"), ("device", "default")], outputs=["CLIP"], stage=stage, col=col,
                 row=1, properties=_models_property("clip_l.safetensors", "t5xxl_fp16.safetensors"))
    vae = g.add("VAELoader", [("vae_name", "ae.safetensors")], outputs=["VAE"], stage=stage, col=col, row=2,
                properties=_models_property("ae.safetensors"))
    return Models((unet, 0, "MODEL"), (clip, 0, "CLIP"), (vae, 0, "VAE"))


def checkpoint_loader(g, stage, file, col=0):
    ckpt = g.add("CheckpointLoaderSimple", [("ckpt_name", file)], outputs=["MODEL", "CLIP", "VAE"], stage=stage,
                 col=col, properties=_models_property(file))
    return Models((ckpt, 0, "MODEL"), (ckpt, 1, "CLIP"), (ckpt, 2, "VAE"))


def sd35_loader(g, stage, col=0):
    return checkpoint_loader(g, stage, "sd3.5_large_fp8_scaled.safetensors", col)


def sd15_loader(g, stage, col=0):
    return checkpoint_loader(g, stage, "v1-5-pruned-emaonly-fp16.safetensors", col)


def sdxl_loader(g, stage, col=0):
    return checkpoint_loader(g, stage, "sd_xl_base_1.0.safetensors", col)


# -- notes ------------------------------------------------------------------------------------------------------
FLUX_FILES = ("- `flux1-dev.safetensors` in `models/diffusion_models/`\n"
              "- `clip_l.safetensors` and `t5xxl_fp16.safetensors` in `models/text_encoders/`\n"
              "- `ae.safetensors` in `models/vae/`")
FILL_FILES = "- `flux1-fill-dev.safetensors` in `models/diffusion_models/` (with the Flux text encoders and VAE)"
SD35_FILES = "- `sd3.5_large_fp8_scaled.safetensors` in `models/checkpoints/`"
SD15_FILES = "- `v1-5-pruned-emaonly-fp16.safetensors` in `models/checkpoints/`"
SDXL_FILES = "- `sd_xl_base_1.0.safetensors` in `models/checkpoints/`"
INPUTS = ("**Example images** (`{files}`) ship in the pack's `workflows/input/`: `./editlab serve` puts them in its "
          "input folder; for your own ComfyUI run `./editlab install-inputs --comfyui /path/to/ComfyUI` once.")
DRY_RUN = ("**No weights yet?** `./editlab run workflows/{name}.json --tiny` runs it on tiny random-weight models "
           "(same architectures) in seconds: the images are noise, the graph is real.")
# The settings every workflow ships with: the methods' authors' where they published them, else the host's own
# template for the model (comfyui-workflow-templates). `./editlab run --tiny` scales sizes and steps down for the dry
# run and prints each change (client/tiny.py, TINY_CAPS); nothing here is sized for the tiny models.
REAL = {
    # Flux dev txt2img as the SAEdit authors run it (examples/flux_dev_example.py: 1024x1024, 40 steps, guidance 3.5
    # = the Flux model's default guidance; KSampler cfg 1 as in ComfyUI's Flux dev template)
    "saedit_flux": {"size": 1024, "steps": 40, "cfg": 1.0},
    # SD3.5 large at Stability's published settings (1024x1024, 28 steps, cfg 3.5)
    "sd35": {"size": 1024, "steps": 28, "cfg": 3.5},
    # Flux Fill as ComfyUI's flux_fill_inpaint_example: 20 steps, cfg 1, FluxGuidance 30; a 1024-high canvas
    "fill": {"height": 1024, "steps": 20, "cfg": 1.0, "guidance": 30.0},
    # the expression authors' SD1.5 inference: 512x512, 25 steps, guidance 3; adapters trained at 512
    "sd15_expression": {"size": 512, "steps": 25, "cfg": 3.0, "train_resolution": 512},
    # ConceptSplit (the authors' config: 50 steps, guidance 7.5, LODA over the first 10; ToVA trained at the model's
    # resolution, DreamBooth-LoRA style, batch 1)
    "conceptsplit": {"steps": 50, "cfg": 7.5, "loda_steps": 10, "train_steps": 500},
    # Flux Kontext dev as ComfyUI's flux_kontext_dev_basic: 1024 px, 20 steps, cfg 1, euler/simple, FluxGuidance 2.5
    "kontext": {"size": 1024, "steps": 20, "cfg": 1.0},
    # ChronoEdit: 50 steps, cfg 5, shift 5, UniPC; 720x1280 = 921,600 pixels; 8 reasoning latent frames
    "chronoedit": {"target_area": 720 * 1280, "steps": 50, "cfg": 5.0, "shift": 5.0, "reasoning_steps": 10},
}
SMALL = ("Shipped at the real settings (see the widgets); `--tiny` scales sizes and step counts down for its dry run "
         "and prints each change.")
SMALL_STITCH = ("The canvas is 1024 px high (real size); `--tiny` scales it (and the steps) down for its dry run and "
                "prints each change.")


def note(title, what, files, name, inputs=(), extra=""):
    text = f"## {title}\n\n{what}\n\n**Model files** (the loaders' names; the missing-models dialog links them):\n{files}"
    if inputs:
        text += "\n\n" + INPUTS.format(files="`, `".join(inputs))
    if extra:
        text += "\n\n" + extra
    return text + "\n\n" + DRY_RUN.format(name=name)


# -- pieces -----------------------------------------------------------------------------------------------------
def text(g, clip, prompt, stage, col, row, title=None, kind="CLIPTextEncode"):
    return g.add(kind, [("text", prompt)], {"clip": clip}, ["CONDITIONING"], stage, col, row, title)


def recorded_text(g, clip, prompt, stage, col, row):
    """The prompt encoded by CLIP Text Encode (records tokens): an SAE Slider on it needs no retyped prompt."""
    return text(g, clip, prompt, stage, col, row, "Prompt (records tokens)", kind="EditLabTextEncode")


def sae_and_direction(g, m, name, stage, part="auto", col=0,
                      pairs="a man | a smiling man\na woman | a smiling woman\na fox in the snow | "
                            "a smiling fox in the snow\na child on a beach | a smiling child on a beach"):
    sae = g.add("EditLabSAETrain",
                [("prompts", ""), ("prompts_file", ""), ("generated_prompts", 300), ("part", part),
                 ("dict_size", 256), ("top_k", 16), ("matryoshka_groups", "64,192"), ("lr", 0.001),
                 ("batch_size", 256), ("epochs", 3), ("seed", 0), ("name", name), ("overwrite", True),
                 ("sparsity", "topk")],
                {"clip": m.clip}, ["EDITLAB_SAE", "STRING"], stage, col, 0)
    direction = g.add("EditLabSAEDirection",
                      [("pairs", pairs), ("pairs_file", ""), ("part", part), ("method", "svd"),
                       ("percentile", 99.5), ("name", ""), ("overwrite", True)],
                      {"clip": m.clip, "sae": (sae, 0, "EDITLAB_SAE")}, ["EDITLAB_SAE_DIRECTION"], stage, col + 1, 0)
    return sae, direction


def slider(g, m, cond, sae, direction, word, strength, stage, col, row, part="auto"):
    """An SAE Slider on a conditioning from CLIP Text Encode (records tokens): the prompt is not typed again."""
    return g.add("EditLabSAESlider",
                 [("prompt", ""), ("word", word), ("strength", strength), ("schedule", "exponential"),
                  ("part", part), ("timing", "authors")],
                 {"conditioning": (cond, 0, "CONDITIONING"), "clip": m.clip,
                  "sae": (sae, 0, "EDITLAB_SAE"), "direction": (direction, 0, "EDITLAB_SAE_DIRECTION")},
                 ["CONDITIONING"], stage, col, row, title=f"SAE Slider {strength:+g}")


def ksample(g, m, pos, neg, latent, stage, col, row, seed=42, steps=20, cfg=1.0, model=None):
    return g.add("KSampler", [("seed", seed), ("steps", steps), ("cfg", cfg), ("sampler_name", "euler"),
                              ("scheduler", "simple"), ("denoise", 1.0)],
                 {"model": model or m.model, "positive": (pos, 0, "CONDITIONING"),
                  "negative": (neg, 0, "CONDITIONING"), "latent_image": (latent, 0, "LATENT")}, ["LATENT"],
                 stage, col, row)


def decode(g, m, samples, stage, col, row):
    return g.add("VAEDecode", [], {"samples": (samples, 0, "LATENT"), "vae": m.vae}, ["IMAGE"], stage, col, row)


def save(g, image, prefix, stage, col, row, slot=0, title=None):
    return g.add("SaveImage", [("filename_prefix", prefix)], {"images": (image, slot, "IMAGE")}, [], stage, col, row,
                 title)


def load_image(g, name, stage, col, row, title=None):
    return g.add("LoadImage", [("image", name), (UPLOAD_BUTTON, "image")], {}, ["IMAGE", "MASK"], stage, col, row,
                 title)


def tryon(g, categories, products, prefix, band=0, layout="triptych_with_pose", label="",
          prompt="the person on the left wearing the product shown in the middle", edit_prompt=None):
    """Person photo -> pose -> mask(s) -> stitch with products and pose -> Flux Fill -> unstitch -> save.
    Also saves the pose render, mask and canvas, which do not depend on the model. ``edit_prompt(g, m, stage)``,
    when given, makes the prompt's conditioning node instead of a CLIP Text Encode (e.g. an SAE slider on it)."""
    s_models = g.stage(f"tryon_models{band}", f"{label}Flux Fill models", band)
    s_inputs = g.stage(f"tryon_inputs{band}", f"{label}Person, pose and mask", band)
    s_stitch = g.stage(f"tryon_stitch{band}", f"{label}Stitch person | product | pose", band)
    s_fill = g.stage(f"tryon_fill{band}", f"{label}Fill, paste back, save", band)
    m = flux_loaders(g, s_models, fill=True)
    person = load_image(g, "editlab_photo.png", s_inputs, 0, 0, title="Person photo")
    pose = g.add("EditLabPoseEstimate", [("allow_no_person", False)], {"image": (person, 0, "IMAGE")},
                 ["EDITLAB_POSE", "IMAGE", "STRING"], s_inputs, 1, 0)
    mask = None
    for i, category in enumerate(categories):
        one = g.add("EditLabTryOnMask", [("category", category), ("grow", 4), ("feather", 4), ("keep_face", True),
                                         ("keep_hands", True)], {"pose": (pose, 0, "EDITLAB_POSE")}, ["MASK"],
                    s_inputs, 1, 1 + i, title=f"Try-On Mask ({category})")
        mask = one if mask is None else g.add(
            "MaskComposite", [("x", 0), ("y", 0), ("operation", "add")],
            {"destination": (mask, 0, "MASK"), "source": (one, 0, "MASK")}, ["MASK"], s_inputs, 1, 1 + len(categories))
    save(g, pose, f"{prefix}_pose", s_inputs, 2, 0, slot=1, title="Save pose render")
    mask_image = g.add("MaskToImage", [], {"mask": (mask, 0, "MASK")}, ["IMAGE"], s_inputs, 2, 1)
    save(g, mask_image, f"{prefix}_mask", s_inputs, 2, 2, title="Save mask")
    product_inputs = {}
    for i, name in enumerate(products):
        image = load_image(g, name, s_stitch, 0, i, title=f"Product {i + 1}")
        product_inputs["product" if i == 0 else f"product_{i + 1}"] = (image, 0, "IMAGE")
    stitched = g.add("EditLabTryOnStitch", [("layout", layout), ("height", REAL["fill"]["height"])],
                     {"person": (person, 0, "IMAGE"), "mask": (mask, 0, "MASK"), **product_inputs,
                      "pose_image": (pose, 1, "IMAGE")}, ["IMAGE", "MASK", "EDITLAB_STITCH"], s_stitch, 1, 0)
    save(g, stitched, f"{prefix}_canvas", s_stitch, 1, 1, title="Save canvas")
    if edit_prompt is None:
        pos = text(g, m.clip, prompt, s_fill, 0, 0)
    else:
        pos = edit_prompt(g, m, s_fill)
    pos = g.add("FluxGuidance", [("guidance", REAL["fill"]["guidance"])], {"conditioning": (pos, 0, "CONDITIONING")},
                ["CONDITIONING"], s_fill, 0, 2)
    inpaint = g.add("InpaintModelConditioning", [("noise_mask", True)],
                    {"positive": (pos, 0, "CONDITIONING"), "negative": (pos, 0, "CONDITIONING"),
                     "vae": m.vae, "pixels": (stitched, 0, "IMAGE"), "mask": (stitched, 1, "MASK")},
                    ["CONDITIONING", "CONDITIONING", "LATENT"], s_fill, 0, 1)
    k = g.add("KSampler", [("seed", 7), ("steps", REAL["fill"]["steps"]), ("cfg", REAL["fill"]["cfg"]),
                           ("sampler_name", "euler"),
                           ("scheduler", "simple"), ("denoise", 1.0)],
              {"model": m.model, "positive": (inpaint, 0, "CONDITIONING"),
               "negative": (inpaint, 1, "CONDITIONING"), "latent_image": (inpaint, 2, "LATENT")}, ["LATENT"],
              s_fill, 1, 0)
    decoded = decode(g, m, k, s_fill, 1, 1)
    final = g.add("EditLabTryOnUnstitch", [], {"generated": (decoded, 0, "IMAGE"),
                                               "stitch": (stitched, 2, "EDITLAB_STITCH"),
                                               "person": (person, 0, "IMAGE"), "mask": (mask, 0, "MASK")},
                  ["IMAGE"], s_fill, 1, 2)
    save(g, final, f"{prefix}_result", s_fill, 2, 0, title="Save try-on result")


def expression_base(g, band=0, label=""):
    """SD1.5, the photo, its blendshapes (overlay saved) and an ARKit adapter trained in-graph on the input folder."""
    s_models = g.stage(f"expr_models{band}", f"{label}SD1.5 model", band)
    s_face = g.stage(f"expr_face{band}", f"{label}Face blendshapes and adapter", band)
    m = sd15_loader(g, s_models)
    photo = load_image(g, "editlab_photo.png", s_face, 0, 0, title="Face photo")
    shapes = g.add("EditLabFaceBlendshapes", [("face_index", 0), ("allow_no_face", False)],
                   {"image": (photo, 0, "IMAGE")}, ["EDITLAB_BLENDSHAPES", "IMAGE", "STRING"], s_face, 1, 0)
    adapter = g.add("EditLabTrainExpressionAdapter",
                    [("folder", "."), ("prompt", "a photo of a face"),
                     ("resolution", REAL["sd15_expression"]["train_resolution"]), ("steps", 10),
                     ("lr", 0.001), ("batch_size", 1), ("num_tokens", 2), ("seed", 0), ("name", "tiny_expression"),
                     ("overwrite", True), ("gradient_checkpointing", True)],
                    {"model": m.model, "clip": m.clip, "vae": m.vae},
                    ["EDITLAB_EXPRESSION_ADAPTER", "STRING"], s_face, 2, 0)
    return m, photo, shapes, adapter, s_face


def expression_sample(g, m, model, prefix, stage, prompt="a portrait photo of a person"):
    pos, neg = text(g, m.clip, prompt, stage, 0, 0), text(g, m.clip, "", stage, 0, 1, title="Negative prompt")
    real = REAL["sd15_expression"]
    latent = g.add("EmptyLatentImage", [("width", real["size"]), ("height", real["size"]), ("batch_size", 1)], {},
                   ["LATENT"], stage, 0, 2)
    k = ksample(g, m, pos, neg, latent, stage, 1, 0, seed=3, steps=real["steps"], cfg=real["cfg"],
                model=(model, 0, "MODEL"))
    image = decode(g, m, k, stage, 1, 1)
    save(g, image, prefix, stage, 2, 0)


def apply_expression(g, m, adapter, shapes, stage, col, row, strength=1.0, model=None):
    return g.add("EditLabApplyExpression", [("strength", strength), ("start_percent", 0.0), ("end_percent", 1.0)],
                 {"model": model or m.model, "adapter": (adapter, 0, "EDITLAB_EXPRESSION_ADAPTER"),
                  "blendshapes": (shapes, 0, "EDITLAB_BLENDSHAPES")}, ["MODEL"], stage, col, row)


EXPRESSION_ADAPTER = ("The **Train Expression Adapter** node trains a small adapter on the face photos in the input "
                      "folder (`folder` is relative to it; `.` = all of it) and saves "
                      "`models/expression_adapters/tiny_expression.safetensors`. With an adapter file of your own, "
                      "use an **Expression Adapter Loader** (files in `models/expression_adapters/`) instead.")
SAE_TRAINED = ("The SAE is trained in-graph on prompts encoded by your text encoder (seconds to minutes) and saved to "
               "`models/sae/{sae}.safetensors`; once you have one, an **SAE Loader** can replace **SAE Train**.")


# -- workflows --------------------------------------------------------------------------------------------------
def tour():
    g = Graph("EditLab tour")
    g.add_note(note(
        "EditLab tour: one row per method, in one graph",
        "Row 1, **SAEdit** (Flux): trains a small sparse autoencoder on the text encoder's token embeddings, finds a "
        "'smiling' direction from prompt pairs and slides it on the word *fox*, beside the plain image.\n"
        "Row 2, **DiT-VTON** try-on (Flux Fill): pose, garment mask, person | product | pose canvas, fill, exact "
        "paste-back.\nRow 3, **blendshape expressions**: the photo's 52 ARKit coefficients drawn over it (no "
        "generative model).\nRow 4, **ConceptSplit** (Flux): two concepts' value adapters trained in-graph, "
        "attached token-wise, the LODA sampler keeping them apart, and each word's attention heat-map.\nRow 5, "
        "**ChronoEdit** (Wan 2.1 I2V): a photo edited as a short video with temporal reasoning frames, the "
        "trajectory saved.\nRow 6, **World-To-Image** (Flux Kontext): the agent with a local image library, offline.\nRow 7, "
        "**layered edit** (Flux Kontext): background replacement with the product locked and a consistency report.",
        FLUX_FILES + "\n" + FILL_FILES + "\n" + CHRONO_FILES + "\n" + KONTEXT_FILES, "editlab_tour",
        ("editlab_photo.png", "editlab_product_tshirt.png", "editlab_product_bag.png", "editlab_product_bag_mask.png"),
        SAE_TRAINED.format(sae="editlab_tour_sae") + " " + SMALL))
    s_models = g.stage("models", "1 · SAEdit: Flux models", 0)
    s_prompt = g.stage("prompt", "1 · Prompt and latent", 0)
    s_sae = g.stage("sae", "1 · Train SAE, find 'smiling' direction, slide", 0)
    s_out = g.stage("out", "1 · Plain vs. slid, sampled and saved", 0)
    m = flux_loaders(g, s_models)
    prompt = "a photo of a fox in the snow"
    pos, neg = recorded_text(g, m.clip, prompt, s_prompt, 0, 0), text(g, m.clip, "", s_prompt, 0, 1,
                                                                        title="Negative prompt")
    real = REAL["saedit_flux"]
    latent = g.add("EmptySD3LatentImage", [("width", real["size"]), ("height", real["size"]), ("batch_size", 1)], {},
                   ["LATENT"], s_prompt, 0, 2)
    sae, direction = sae_and_direction(g, m, "editlab_tour_sae", s_sae)
    smile = slider(g, m, pos, sae, direction, "fox", 1.0, s_sae, 2, 0)
    for i, (cond, prefix) in enumerate(((pos, "editlab_tour/flux"), (smile, "editlab_tour/saedit_smiling_fox"))):
        k = ksample(g, m, cond, neg, latent, s_out, 0, i, steps=real["steps"], cfg=real["cfg"])
        save(g, decode(g, m, k, s_out, 1, i), prefix, s_out, 2, i)
    tryon(g, ["upper"], ["editlab_product_tshirt.png"], "editlab_tour/tryon", band=1, label="2 · ")
    s_face = g.stage("face", "3 · Face blendshapes (MediaPipe)", 2)
    photo = load_image(g, "editlab_photo.png", s_face, 0, 0, title="Face photo")
    shapes = g.add("EditLabFaceBlendshapes", [("face_index", 0), ("allow_no_face", False)],
                   {"image": (photo, 0, "IMAGE")}, ["EDITLAB_BLENDSHAPES", "IMAGE", "STRING"], s_face, 1, 0)
    save(g, shapes, "editlab_tour/blendshapes_overlay", s_face, 2, 0, slot=1)
    conceptsplit_rows(g, "flux", band=3, label="4 · ", m=m)
    with g.section("chronoedit", 4, "5 · ChronoEdit: "):
        real = REAL["chronoedit"]
        chronoedit_graph(g, "editlab_tour", True, real["steps"], real["cfg"], real["shift"], real["reasoning_steps"])
    with g.section("worldtoimage", 6, "6 · World-To-Image: "):
        s_sources = g.stage("sources", "local image library", 0)
        s_agent = g.stage("agent", "retrieve, generate, iterate", 0)
        s_out = g.stage("out", "best image, every iteration", 0)
        s_w2i_models = g.stage("models", "Flux Kontext models", 0, order=-1)
        kontext = kontext_loaders(g, s_w2i_models)
        library = g.add("EditLabImageLibrary", [("folder", "."), ("recursive", False)], {},
                        ["EDITLAB_IMAGE_SOURCE", "STRING"], s_sources, 0, 0)
        agent = worldtoimage_agent_sized(g, kontext, s_agent, W2I_PROMPT, sources=[library])
        worldtoimage_outputs(g, agent, s_out, "editlab_tour/worldtoimage")
    with g.section("layered", 7, "7 · Layered edit: "):
        layered_rows(g, "editlab_product_bag.png", "editlab_product_bag_mask.png",
                     "Change the background to a sunny beach, keep the bag in the exact same position, scale and "
                     "colours", True,
                     "editlab_tour/layered_background")
    return g


def expression_from_photo():
    g = Graph("Expression from a photo")
    g.add_note(note("Expression from a photo",
                    "Reads the 52 ARKit blendshapes of the face in the photo (overlay saved) and generates a new "
                    "face with that expression through the expression adapter on SD1.5.",
                    SD15_FILES, "expression_from_photo", ("editlab_photo.png",), EXPRESSION_ADAPTER + " " + SMALL))
    m, photo, shapes, adapter, s_face = expression_base(g)
    save(g, shapes, "expression/overlay", s_face, 1, 1, slot=1, title="Save overlay")
    s_gen = g.stage("gen", "Apply expression, sample, save", 1)
    model = apply_expression(g, m, adapter, shapes, s_gen, 0, 3)
    expression_sample(g, m, model, "expression/from_photo", s_gen)
    return g


def expression_sliders():
    g = Graph("Expression sliders")
    g.add_note(note("Expression sliders",
                    "Measures the photo's blendshapes, then edits them (a *smile* preset plus per-coefficient values "
                    "set with the node's picker and slider) and generates a face with the edited expression.",
                    SD15_FILES, "expression_sliders", ("editlab_photo.png",), EXPRESSION_ADAPTER + " " + SMALL))
    m, photo, shapes, adapter, s_face = expression_base(g)
    s_gen = g.stage("gen", "Edit blendshapes, apply, sample, save", 1)
    edited = g.add("EditLabBlendshapeEdit", [("preset", "smile"), ("values", '{"jawOpen": 0.4, "eyeWideLeft": 0.3}'),
                                             ("symmetric", True), ("intensity", 1.0)],
                   {"blendshapes": (shapes, 0, "EDITLAB_BLENDSHAPES")}, ["EDITLAB_BLENDSHAPES"], s_gen, 0, 3)
    model = apply_expression(g, m, adapter, edited, s_gen, 0, 4)
    expression_sample(g, m, model, "expression/sliders", s_gen)
    return g


def expression_reference_edit():
    g = Graph("Expression edit that keeps the person")
    g.add_note(note("Expression edit that keeps the person",
                    "Changes the photo's expression (a *surprise* preset) while the **Reference Adapter** makes "
                    "self-attention also read the photo's own features, so appearance stays.",
                    SD15_FILES, "expression_reference_edit", ("editlab_photo.png",), EXPRESSION_ADAPTER + " " + SMALL))
    m, photo, shapes, adapter, s_face = expression_base(g)
    s_ref = g.stage("ref", "Reference and edited expression", 1)
    size = REAL["sd15_expression"]["size"]
    scaled = g.add("ImageScale", [("upscale_method", "bilinear"), ("width", size), ("height", size),
                                  ("crop", "center")], {"image": (photo, 0, "IMAGE")}, ["IMAGE"], s_ref, 0, 0)
    reference = g.add("EditLabReferenceAdapter", [("strength", 0.8), ("mode", "training-free"), ("lora_scale", 0.8)],
                      {"model": m.model, "vae": m.vae, "reference": (scaled, 0, "IMAGE")}, ["MODEL"], s_ref, 0, 1)
    surprised = g.add("EditLabBlendshapeEdit", [("preset", "surprise"), ("values", "{}"), ("symmetric", True),
                                                ("intensity", 1.0)], {"blendshapes": (shapes, 0, "EDITLAB_BLENDSHAPES")},
                      ["EDITLAB_BLENDSHAPES"], s_ref, 1, 0)
    model = apply_expression(g, m, adapter, surprised, s_ref, 1, 1, model=(reference, 0, "MODEL"))
    s_gen = g.stage("gen", "Sample and save", 1)
    expression_sample(g, m, model, "expression/reference_edit", s_gen)
    s_stage2 = g.stage("stage2", "Second stage: reference LoRA (trained here; its loader is optional)", 2)
    g.add("EditLabTrainReferenceLoRA",
          [("folder", "."), ("prompt", "a photo of a face"),
           ("resolution", REAL["sd15_expression"]["train_resolution"]), ("steps", 2), ("lr", 0.0001),
           ("batch_size", 1), ("rank", 4), ("seed", 0), ("name", "tiny_reference_lora"), ("overwrite", True),
           ("gradient_checkpointing", True)],
          {"model": m.model, "clip": m.clip, "vae": m.vae, "adapter": (adapter, 0, "EDITLAB_EXPRESSION_ADAPTER")},
          ["EDITLAB_REFERENCE_LORA", "STRING"], s_stage2, 0, 0)
    g.add("EditLabReferenceLoRALoader", [("lora_name", "tiny_reference_lora.safetensors")], {},
          ["EDITLAB_REFERENCE_LORA"], s_stage2, 1, 0, mode=MUTED)
    return g


TRYON_WHAT = ("Finds the person's pose, builds the {what} mask (face and hands kept), puts person | product | pose on "
              "one canvas, lets **Flux Fill** paint the masked part and pastes it back so every pixel outside the "
              "mask is unchanged. Pose render, mask and canvas are saved too.")


def tryon_flux_fill():
    g = Graph("Try-on: a shirt with Flux Fill")
    g.add_note(note("Try-on: a shirt with Flux Fill", TRYON_WHAT.format(what="upper-body"),
                    FLUX_FILES.replace("flux1-dev", "flux1-fill-dev"), "tryon_flux_fill",
                    ("editlab_photo.png", "editlab_product_tshirt.png"), SMALL_STITCH))
    tryon(g, ["upper"], ["editlab_product_tshirt.png"], "tryon/shirt")
    return g


def tryall_bag():
    g = Graph("Try-all: a bag")
    g.add_note(note("Try-all: a bag", TRYON_WHAT.format(what="bag") + " Side-by-side layout, no pose panel.",
                    FLUX_FILES.replace("flux1-dev", "flux1-fill-dev"), "tryall_bag",
                    ("editlab_photo.png", "editlab_product_bag.png"), SMALL_STITCH))
    tryon(g, ["bag"], ["editlab_product_bag.png"], "tryon/bag", layout="side_by_side")
    return g


def tryon_outfit():
    g = Graph("Try-on: a two-garment outfit")
    g.add_note(note("Try-on: a two-garment outfit",
                    TRYON_WHAT.format(what="upper + lower (added)") + " Two products on the canvas.",
                    FLUX_FILES.replace("flux1-dev", "flux1-fill-dev"), "tryon_outfit",
                    ("editlab_photo.png", "editlab_product_tshirt.png", "editlab_product_trousers.png"),
                    SMALL_STITCH))
    tryon(g, ["upper", "lower"], ["editlab_product_tshirt.png", "editlab_product_trousers.png"], "tryon/outfit")
    return g


def saedit_flux_slider_sweep():
    g = Graph("SAEdit slider sweep (Flux)")
    g.add_note(note("SAEdit slider sweep (Flux)",
                    "One prompt, one 'smiling' direction, four strengths (-1, 0, 1, 2) on the word *man*: the four "
                    "images are saved as one batch, so the sweep reads left to right.",
                    FLUX_FILES, "saedit_flux_slider_sweep", (), SAE_TRAINED.format(sae="sweep_sae") + " " + SMALL))
    s_models = g.stage("models", "Flux models", 0)
    s_prompt = g.stage("prompt", "Prompt and latent", 0)
    s_sae = g.stage("sae", "Train SAE and find the direction", 0)
    s_sweep = g.stage("sweep", "Four strengths, sampled and saved as one batch", 1)
    m = flux_loaders(g, s_models)
    prompt = "a portrait of a man in a park"
    pos, neg = recorded_text(g, m.clip, prompt, s_prompt, 0, 0), text(g, m.clip, "", s_prompt, 0, 1,
                                                                        title="Negative prompt")
    real = REAL["saedit_flux"]
    latent = g.add("EmptySD3LatentImage", [("width", real["size"]), ("height", real["size"]), ("batch_size", 1)], {},
                   ["LATENT"], s_prompt, 0, 2)
    sae, direction = sae_and_direction(g, m, "sweep_sae", s_sae)
    images = []
    for i, strength in enumerate((-1.0, 0.0, 1.0, 2.0)):
        cond = slider(g, m, pos, sae, direction, "man", strength, s_sweep, 0, i)
        k = ksample(g, m, cond, neg, latent, s_sweep, 1, i, steps=real["steps"], cfg=real["cfg"])
        images.append(decode(g, m, k, s_sweep, 2, i))
    batch = images[0]
    for i, image in enumerate(images[1:]):
        batch = g.add("ImageBatch", [], {"image1": (batch, 0, "IMAGE"), "image2": (image, 0, "IMAGE")}, ["IMAGE"],
                      s_sweep, 3, i)
    save(g, batch, "saedit/sweep_minus1_0_1_2", s_sweep, 4, 0)
    return g


def saedit_sd35_slider():
    g = Graph("SAEdit slider on SD3.5")
    g.add_note(note("SAEdit slider on SD3.5",
                    "The same slider on Stable Diffusion 3.5: an SAE over the prompt's token embeddings, a 'smiling' "
                    "direction, strength 1.5 on the word *woman*; the plain and the slid image are saved.",
                    SD35_FILES, "saedit_sd35_slider", (), SAE_TRAINED.format(sae="sd35_sae") + " " + SMALL))
    s_models = g.stage("models", "SD3.5 model", 0)
    s_prompt = g.stage("prompt", "Prompt and latent", 0)
    s_sae = g.stage("sae", "Train SAE, find the direction, slide", 0)
    s_out = g.stage("out", "Plain vs. slid, sampled and saved", 1)
    m = sd35_loader(g, s_models)
    prompt = "a portrait of a woman in a garden"
    pos, neg = recorded_text(g, m.clip, prompt, s_prompt, 0, 0), text(g, m.clip, "", s_prompt, 0, 1,
                                                                        title="Negative prompt")
    real = REAL["sd35"]
    latent = g.add("EmptySD3LatentImage", [("width", real["size"]), ("height", real["size"]), ("batch_size", 1)], {},
                   ["LATENT"], s_prompt, 0, 2)
    sae, direction = sae_and_direction(g, m, "sd35_sae", s_sae)
    cond = slider(g, m, pos, sae, direction, "woman", 1.5, s_sae, 2, 0)
    for i, (c, prefix) in enumerate(((pos, "saedit/sd35_plain"), (cond, "saedit/sd35_smiling"))):
        k = ksample(g, m, c, neg, latent, s_out, 0, i, steps=real["steps"], cfg=real["cfg"])
        save(g, decode(g, m, k, s_out, 1, i), prefix, s_out, 2, i)
    return g


def saedit_train_sae():
    g = Graph("Train an SAE and a direction")
    g.add_note(note("Train an SAE and a direction",
                    "Trains a Matryoshka BatchTopK sparse autoencoder on your text encoder's token embeddings (your "
                    "prompts plus 1000 generated ones) and saves it to `models/sae/trained_sae.safetensors`; then "
                    "finds a 'smiling' direction from the prompt pairs and saves it to "
                    "`models/sae_directions/trained_sae_smiling.safetensors`. Use both in the slider workflows "
                    "with an **SAE Loader** and an **SAE Direction Loader**.",
                    "- `clip_l.safetensors` and `t5xxl_fp16.safetensors` in `models/text_encoders/`",
                    "saedit_train_sae", (),
                    "Only the text encoders are needed. For long runs on many prompts use `scripts/train_sae.py`."))
    s_models = g.stage("models", "Flux text encoders", 0)
    s_train = g.stage("train", "Train the SAE, then the direction", 0)
    clip = g.add("DualCLIPLoader", [("clip_name1", "clip_l.safetensors"), ("clip_name2", "t5xxl_fp16.safetensors"),
                                    ("type", "flux"), ("device", "default")], outputs=["CLIP"], stage=s_models,
                 properties=_models_property("clip_l.safetensors", "t5xxl_fp16.safetensors"))
    m = Models(None, (clip, 0, "CLIP"), None)
    sae = g.add("EditLabSAETrain",
                [("prompts", "a man in a park\na woman on a beach\na dog in the snow"), ("prompts_file", ""),
                 ("generated_prompts", 1000), ("part", "auto"), ("dict_size", 512), ("top_k", 16),
                 ("matryoshka_groups", "64,64,128,256"), ("lr", 0.001), ("batch_size", 512), ("epochs", 4),
                 ("seed", 0), ("name", "trained_sae"), ("overwrite", True), ("sparsity", "topk")],
                {"clip": m.clip}, ["EDITLAB_SAE", "STRING"], s_train, 0, 0)
    g.add("EditLabSAEDirection",
          [("pairs", "a man | a smiling man\na woman | a smiling woman\na baby | a smiling baby"),
           ("pairs_file", ""), ("part", "auto"), ("method", "svd"), ("percentile", 99.5),
           ("name", "trained_sae_smiling"), ("overwrite", True)],
          {"clip": m.clip, "sae": (sae, 0, "EDITLAB_SAE")}, ["EDITLAB_SAE_DIRECTION"], s_train, 1, 0)
    return g


def saedit_photo_edit():
    g = Graph("SAEdit on a photo (Flux inversion)")
    g.add_note(note("SAEdit on a photo (Flux inversion)",
                    "Inverts the photo's latent exactly (reversed Euler steps), then samples it back twice from the "
                    "same noise: once plain (the reconstruction) and once with the 'smiling' slider on the word "
                    "*astronaut*.",
                    FLUX_FILES, "saedit_photo_edit", ("editlab_photo.png",),
                    SAE_TRAINED.format(sae="photo_sae") + " " + SMALL))
    s_models = g.stage("models", "Flux models", 0)
    s_photo = g.stage("photo", "Photo to latent, inverted", 0)
    s_sae = g.stage("sae", "Train SAE, find the direction, slide", 1)
    s_out = g.stage("out", "Reconstructed vs. smiling, sampled from the inverted noise", 2)
    m = flux_loaders(g, s_models)
    prompt = "a photo of an astronaut"
    photo = load_image(g, "editlab_photo.png", s_photo, 0, 0, title="Photo")
    real = REAL["saedit_flux"]
    scaled = g.add("ImageScale", [("upscale_method", "bilinear"), ("width", real["size"]), ("height", real["size"]),
                                  ("crop", "center")], {"image": (photo, 0, "IMAGE")}, ["IMAGE"], s_photo, 0, 1)
    latent = g.add("VAEEncode", [], {"pixels": (scaled, 0, "IMAGE"), "vae": m.vae}, ["LATENT"], s_photo, 1, 0)
    pos = recorded_text(g, m.clip, prompt, s_photo, 1, 1)
    sigmas = g.add("BasicScheduler", [("scheduler", "simple"), ("steps", real["steps"]), ("denoise", 1.0)],
                   {"model": m.model}, ["SIGMAS"], s_photo, 2, 0)
    inverted = g.add("EditLabFlowInversion", [("iterations", 10), ("cfg", 1.0)],
                     {"model": m.model, "conditioning": (pos, 0, "CONDITIONING"),
                      "latent": (latent, 0, "LATENT"), "sigmas": (sigmas, 0, "SIGMAS")}, ["NOISE", "LATENT"],
                     s_photo, 2, 1)
    sae, direction = sae_and_direction(g, m, "photo_sae", s_sae)
    edited = slider(g, m, pos, sae, direction, "astronaut", 0.8, s_sae, 2, 0)
    sampler = g.add("KSamplerSelect", [("sampler_name", "euler")], {}, ["SAMPLER"], s_out, 0, 0)
    for i, (name, cond) in enumerate((("reconstructed", pos), ("smiling", edited))):
        guider = g.add("BasicGuider", [], {"model": m.model, "conditioning": (cond, 0, "CONDITIONING")},
                       ["GUIDER"], s_out, 1, i)
        out = g.add("SamplerCustomAdvanced", [],
                    {"noise": (inverted, 0, "NOISE"), "guider": (guider, 0, "GUIDER"),
                     "sampler": (sampler, 0, "SAMPLER"), "sigmas": (sigmas, 0, "SIGMAS"),
                     "latent_image": (latent, 0, "LATENT")}, ["LATENT", "LATENT"], s_out, 2, i)
        image = decode(g, m, out, s_out, 3, i)
        save(g, image, f"saedit/photo_{name}", s_out, 4, i)
    return g


# The authors bind each value adapter to the class noun of its concept (dog, cat), never a rare token: the words
# here are the classes of the two example images (the photo's person, the product's shirt).
CONCEPT_WORDS = ("person", "shirt")
CONCEPT_PROMPT = "a photo of a person wearing a shirt"


def _tova_templates():
    """ToVA Train's default caption templates, read from the method's source (no torch import for a script that only
    writes JSON): the shipped workflows show and send the node's own defaults."""
    tree = ast.parse((ROOT / "models" / "conceptsplit" / "train.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["DEFAULT_TEMPLATES"]:
            return "\n".join(ast.literal_eval(node.value))
    raise SystemExit("models/conceptsplit/train.py has no DEFAULT_TEMPLATES")


def tova_train(g, m, word, i, size, rank, lr, steps, name, stage):
    """ToVA Train on the input folder, captioned with the node's default templates (the authors' way)."""
    return g.add(
        "EditLabToVATrain",
        [("folder", "."), ("prompt", f"a photo of a {word}"), ("word", word), ("resolution", size),
         ("rank", rank), ("steps", steps), ("lr", lr), ("batch_size", 1), ("seed", i), ("name", name),
         ("overwrite", True), ("captions", "templates (authors)"), ("templates", _tova_templates()),
         ("gradient_checkpointing", True)],
        {"model": m.model, "clip": m.clip, "vae": m.vae}, ["EDITLAB_TOVA", "STRING"], stage, i, 0,
        title=f"ToVA Train ({word})")


# ConceptSplit per model family: (title suffix, loaders, files, empty latent node, ToVA rank and lr (the authors'
# SD / SDXL defaults; Flux has none published), sampler cfg (the authors' 7.5; Flux: 1 with its guidance), Flux
# guidance or None, image and training resolution (the model's native size)).
CONCEPTSPLIT = {
    "sd15": (" (SD1.5)", sd15_loader, SD15_FILES, "EmptyLatentImage", 32, 0.0005, 7.5, None, 512),
    "sdxl": (" (SDXL)", sdxl_loader, SDXL_FILES, "EmptyLatentImage", 16, 0.0001, 7.5, None, 1024),
    "flux": (" (Flux)", flux_loaders, FLUX_FILES, "EmptySD3LatentImage", 16, 0.0001, 1.0, 3.5, 1024),
}


def conceptsplit_rows(g, family, band=0, label="", m=None):
    """ToVA Train x2 -> ToVA Apply -> LODA sampler -> image, and the per-word attention heat-maps, saved; over three
    bands, or one (the tour's row) when given the models ``m`` another row loaded."""
    suffix, loaders, _, latent_node, rank, lr, cfg, guidance, size = CONCEPTSPLIT[family]
    real = REAL["conceptsplit"]
    bands = (band,) * 5 if m is not None else (band, band, band + 1, band + 1, band + 2)
    key = f"conceptsplit{band}_"
    if m is None:
        m = loaders(g, g.stage(key + "models", f"{label}{suffix.strip(' ()')} model"
                               + ("s" if family == "flux" else ""), band))
    s_train = g.stage(key + "train", f"{label}Train one value adapter per concept word", bands[1])
    s_apply = g.stage(key + "apply", f"{label}Attach both adapters, token-wise", bands[2])
    s_sample = g.stage(key + "sample", f"{label}LODA sampler: concepts kept apart", bands[3])
    s_maps = g.stage(key + "maps", f"{label}Where each word attends", bands[4])
    adapters = []
    for i, word in enumerate(CONCEPT_WORDS):
        adapters.append(tova_train(g, m, word, i, size, rank, lr, real["train_steps"],
                                   f"concept_{word}" if family == "sd15" else f"concept_{word}_{family}", s_train))
    tova = g.add("EditLabToVAApply", [("prompt", CONCEPT_PROMPT), ("strength", 1.0)],
                 {"model": m.model, "clip": m.clip, "adapter_1": (adapters[0], 0, "EDITLAB_TOVA"),
                  "adapter_2": (adapters[1], 0, "EDITLAB_TOVA")}, ["MODEL"], s_apply, 0, 0)
    pos = (text(g, m.clip, CONCEPT_PROMPT, s_apply, 1, 0), 0, "CONDITIONING")
    neg = text(g, m.clip, "", s_apply, 1, 1, title="Negative prompt")
    if guidance is not None:
        pos = (g.add("FluxGuidance", [("guidance", guidance)], {"conditioning": pos}, ["CONDITIONING"], s_apply, 2,
                     1), 0, "CONDITIONING")
    latent = g.add(latent_node, [("width", size), ("height", size), ("batch_size", 1)], {}, ["LATENT"], s_apply, 2,
                   0)
    base = g.add("KSamplerSelect", [("sampler_name", "euler")], {}, ["SAMPLER"], s_sample, 0, 0)
    loda = g.add("EditLabLODA", [("prompt", CONCEPT_PROMPT), ("concepts", ", ".join(CONCEPT_WORDS)),
                                 ("loda_steps", real["loda_steps"]),
                                 ("step_size", 20.0), ("threshold", 3.0), ("afg_strength", 2.0),
                                 ("map_layers", "authors"), ("afg_mode", "soft")],
                 {"sampler": (base, 0, "SAMPLER"), "clip": m.clip}, ["SAMPLER"], s_sample, 0, 1)
    sigmas = g.add("BasicScheduler", [("scheduler", "simple"), ("steps", real["steps"]), ("denoise", 1.0)],
                   {"model": (tova, 0, "MODEL")}, ["SIGMAS"], s_sample, 1, 0)
    sampled = g.add("SamplerCustom", [("add_noise", True), ("noise_seed", 42), ("cfg", cfg)],
                    {"model": (tova, 0, "MODEL"), "positive": pos, "negative": (neg, 0, "CONDITIONING"),
                     "sampler": (loda, 0, "SAMPLER"), "sigmas": (sigmas, 0, "SIGMAS"),
                     "latent_image": (latent, 0, "LATENT")},
                    ["LATENT", "LATENT"], s_sample, 1, 1)
    image = decode(g, m, sampled, s_sample, 2, 0)
    prefix = "conceptsplit/" if family == "sd15" else f"conceptsplit_{family}/"
    if label:  # the tour's row
        prefix = "editlab_tour/conceptsplit_"
    save(g, image, prefix + "two_concepts", s_sample, 2, 1)
    maps = g.add("EditLabAttentionMaps",
                 [("prompt", CONCEPT_PROMPT), ("words", ", ".join(CONCEPT_WORDS)), ("seed", 42),
                  ("steps", real["steps"]),
                  ("cfg", cfg), ("sampler_name", "euler"), ("scheduler", "simple"), ("start_step", 0),
                  ("end_step", real["steps"])],
                 {"model": (tova, 0, "MODEL"), "clip": m.clip, "positive": pos,
                  "negative": (neg, 0, "CONDITIONING"), "latent_image": (latent, 0, "LATENT")},
                 ["LATENT", "IMAGE", "MASK"], s_maps, 0, 0)
    save(g, maps, prefix + "attention_maps", s_maps, 1, 0, slot=1, title="Save attention heat-maps")


def conceptsplit_workflow(family):
    suffix, _, files, *_ = CONCEPTSPLIT[family]
    name = "conceptsplit_two_concepts" + ("" if family == "sd15" else f"_{family}")
    g = Graph("ConceptSplit: two concepts without mixing" + ("" if family == "sd15" else suffix))
    g.add_note(note(g.title,
                    "Two personalised concepts in one image. **ToVA Train** learns one value-only adapter per concept "
                    "word, the class noun as the authors bind it (*person*: the photo, *shirt*: the t-shirt), from "
                    "the example images; **ToVA Apply** attaches both, "
                    "each acting only at its word's tokens (never merged). **LODA** wraps the sampler: the first steps "
                    "push the two words' attention maps apart, then attention fixing guidance keeps them apart. "
                    "**Attention Maps** shows where each word looks."
                    + (" On Flux the adapters act on the text stream's values in the double blocks and the maps "
                       "come from the joint attention." if family == "flux" else ""),
                    files, name, ("editlab_photo.png", "editlab_product_tshirt.png"),
                    "The adapters train in-graph (500 steps at the model's resolution, batch 1) on every image in "
                    "the input folder ('.'): for real concepts give each its own folder of 4-10 photos. Sampling: "
                    "the authors' 50 steps, cfg 7.5 (Flux: cfg 1 with guidance 3.5), LODA over the first 10. "
                    + SMALL))
    conceptsplit_rows(g, family)
    s_files = g.stage("files", "Optional (unmute with Ctrl+M): adapters trained earlier, from models/tova/", 2)
    for i, word in enumerate(CONCEPT_WORDS):
        g.add("EditLabToVALoader",
              [("adapter_name", f"concept_{word}.safetensors" if family == "sd15" else
                f"concept_{word}_{family}.safetensors")], {}, ["EDITLAB_TOVA"], s_files, i, 0, mode=MUTED)
    return g


def conceptsplit_two_concepts():
    return conceptsplit_workflow("sd15")


def conceptsplit_two_concepts_sdxl():
    return conceptsplit_workflow("sdxl")


def conceptsplit_two_concepts_flux():
    return conceptsplit_workflow("flux")


# -- ChronoEdit ---------------------------------------------------------------------------------------------------
CHRONO_FILES = ("- `chrono_edit_14B_fp16.safetensors` in `models/diffusion_models/`\n"
                "- `umt5_xxl_fp8_e4m3fn_scaled.safetensors` in `models/text_encoders/`\n"
                "- `wan_2.1_vae.safetensors` in `models/vae/`\n"
                "- `clip_vision_h.safetensors` in `models/clip_vision/`")
CHRONO_EDIT = "The person is now wearing a pair of black sunglasses, keeping the face and the background unchanged."
CHRONO_SMALL = ("The edit is made at the authors' size: target_area 921600 (720x1280 pixels, the photo's aspect kept). "
                "`--tiny` scales the area and the steps down for its dry run and prints each change; without a tiny "
                "CLIP vision model it also removes the CLIP Vision nodes (their input is optional).")


def chronoedit_models(g, stage, shift, lora=False):
    """The ChronoEdit template's loaders: UNETLoader (fp8 weights), the Wan text encoder, VAE and CLIP vision, the
    distill LoRA through LoraLoaderModelOnly when asked, ModelSamplingSD3 with the flow shift."""
    unet_file = "chrono_edit_14B_fp16.safetensors"
    model = g.add("UNETLoader", [("unet_name", unet_file), ("weight_dtype", "fp8_e4m3fn")], outputs=["MODEL"],
                  stage=stage, col=0, row=0, properties=_models_property(unet_file))
    src = (model, 0, "MODEL")
    if lora:
        lora_file = "chronoedit_distill_lora.safetensors"
        src = (g.add("LoraLoaderModelOnly", [("lora_name", lora_file), ("strength_model", 1.0)], {"model": src},
                     ["MODEL"], stage, 1, 0, title="ChronoEdit distill LoRA (8 steps)",
                     properties=_models_property(lora_file)), 0, "MODEL")
    shifted = g.add("ModelSamplingSD3", [("shift", shift)], {"model": src}, ["MODEL"], stage, 1, 1 if lora else 0)
    clip = g.add("CLIPLoader", [("clip_name", "umt5_xxl_fp8_e4m3fn_scaled.safetensors"), ("type", "wan"),
                                ("device", "default")], outputs=["CLIP"], stage=stage, col=0, row=1,
                 properties=_models_property("umt5_xxl_fp8_e4m3fn_scaled.safetensors"))
    vae = g.add("VAELoader", [("vae_name", "wan_2.1_vae.safetensors")], outputs=["VAE"], stage=stage, col=0, row=2,
                properties=_models_property("wan_2.1_vae.safetensors"))
    vision = g.add("CLIPVisionLoader", [("clip_name", "clip_vision_h.safetensors")], outputs=["CLIP_VISION"],
                   stage=stage, col=0, row=3, properties=_models_property("clip_vision_h.safetensors"))
    return Models((shifted, 0, "MODEL"), (clip, 0, "CLIP"), (vae, 0, "VAE")), (vision, 0, "CLIP_VISION")


def chronoedit_graph(g, name, reasoning, steps, cfg, shift, k, lora=False):
    s_models = g.stage("models", "Wan 2.1 I2V models (ChronoEdit 14B)", 0)
    s_input = g.stage("input", "Photo and edit instruction", 0)
    s_layout = g.stage("layout", "The edit as a short video", 1)
    s_sample = g.stage("sample", "Temporal reasoning sampler" if reasoning else "8-step distilled sampling", 1)
    s_save = g.stage("save", "Edited image" + (" and reasoning trajectory" if reasoning else ""), 1)
    m, vision = chronoedit_models(g, s_models, shift, lora)
    photo = load_image(g, "editlab_photo.png", s_input, 0, 0)
    pos = text(g, m.clip, CHRONO_EDIT, s_input, 1, 0, title="Edit instruction")
    neg = text(g, m.clip, "", s_input, 1, 1, title="Negative prompt")
    encoded = g.add("CLIPVisionEncode", [("crop", "none")], {"clip_vision": vision, "image": (photo, 0, "IMAGE")},
                    ["CLIP_VISION_OUTPUT"], s_input, 0, 1)
    cond = g.add("EditLabChronoEditConditioning",
                 [("target_area", REAL["chronoedit"]["target_area"]), ("width", 0), ("height", 0),
                  ("reasoning", reasoning),
                  ("reasoning_frames", 8)],
                 {"positive": (pos, 0, "CONDITIONING"), "negative": (neg, 0, "CONDITIONING"), "vae": m.vae,
                  "image": (photo, 0, "IMAGE"), "clip_vision_output": (encoded, 0, "CLIP_VISION_OUTPUT")},
                 ["CONDITIONING", "CONDITIONING", "LATENT"], s_layout, 0, 0)
    sampled = g.add("EditLabTemporalReasoningSampler",
                    [("seed", 42), ("steps", steps), ("cfg", cfg), ("sampler_name", "uni_pc"), ("scheduler", "simple"),
                     ("reasoning_steps", k), ("pin_first_frame", True), ("without_clip_vision", False)],
                    {"model": m.model, "positive": (cond, 0, "CONDITIONING"), "negative": (cond, 1, "CONDITIONING"),
                     "latent": (cond, 2, "LATENT")}, ["LATENT", "LATENT"], s_sample, 0, 0)
    video = g.add("EditLabTrajectoryToVideo", [], {"trajectory": (sampled, 1 if reasoning else 0, "LATENT"),
                                                   "vae": m.vae}, ["IMAGE", "IMAGE"], s_save, 0, 0)
    save(g, video, f"chronoedit/{name}", s_save, 1, 0, slot=1, title="Save edited image")
    if reasoning:
        g.add("SaveAnimatedWEBP", [("filename_prefix", f"chronoedit/{name}_trajectory"), ("fps", 8.0),
                                   ("lossless", False), ("quality", 90), ("method", "default")],
              {"images": (video, 0, "IMAGE")}, [], s_save, 0, 1, title="Save reasoning trajectory (video)")
    return g


def chronoedit_reasoning_edit():
    g = Graph("ChronoEdit: an edit with temporal reasoning")
    g.add_note(note("ChronoEdit: an edit with temporal reasoning",
                    "Edits a photo as a short video: the photo is frame 0, the edit the last frame. With **reasoning** "
                    "the model also imagines 6 frames in between (8 latent frames = 29 video frames) for the first "
                    "**reasoning_steps** (k = 10 of 50): then only the photo and the edit are kept and the same "
                    "sampler (UniPC, as the authors) restarts on them at the same noise level, so any sampler works. "
                    "k = 50 keeps all frames to the end (the authors' default: slower, a sharper trajectory); "
                    "k = 0 is the plain 2-frame edit. The trajectory is saved as an animated WEBP (8 fps).",
                    CHRONO_FILES, "chronoedit_reasoning_edit", ("editlab_photo.png",),
                    "Authors' settings: 50 steps, cfg 5, shift 5 (ModelSamplingSD3), UniPC. " + CHRONO_SMALL))
    real = REAL["chronoedit"]
    return chronoedit_graph(g, "chronoedit_reasoning_edit", True, real["steps"], real["cfg"], real["shift"],
                            real["reasoning_steps"])


def chronoedit_distilled_8step():
    g = Graph("ChronoEdit: 8-step distilled edit")
    g.add_note(note("ChronoEdit: 8-step distilled edit",
                    "The fast ChronoEdit edit: the authors' distill LoRA through the stock **LoraLoaderModelOnly**, "
                    "**8 steps, cfg 1, shift 2** (ModelSamplingSD3), UniPC; no reasoning frames (with the distill "
                    "LoRA, 29 frames give black middle frames). The photo is frame 0, the edit the last frame of a "
                    "2-frame video at temporal position 7.",
                    CHRONO_FILES + "\n- `chronoedit_distill_lora.safetensors` in `models/loras/`",
                    "chronoedit_distilled_8step", ("editlab_photo.png",), CHRONO_SMALL))
    return chronoedit_graph(g, "chronoedit_distilled_8step", False, 8, 1.0, 2.0, 0, lora=True)


# -- World-To-Image ------------------------------------------------------------------------------------------------
MULTILINE.add(("EditLabWorldToImage", "prompt"))
MULTILINE.add(("EditLabVIEScore", "instruction"))
WIDE.update({"EditLabWorldToImage": 360, "EditLabLLM": 340, "EditLabWebImageSearch": 340})
W2I_PROMPT = "a person holding a leather product bag"


def worldtoimage_agent(g, m, stage, prompt, llm=None, scorer=None, sources=(), iterations=2, threshold=10.0):
    inputs = {"model": m.model, "clip": m.clip, "vae": m.vae}
    if llm:
        inputs["llm"] = (llm, 0, "EDITLAB_LLM")
    if scorer:
        inputs["scorer"] = (scorer, 0, "EDITLAB_IMAGE_SCORER")
    for i, src in enumerate(sources, 1):
        inputs[f"source_{i}"] = (src, 0, "EDITLAB_IMAGE_SOURCE")
    return g.add("EditLabWorldToImage",
                 [("prompt", prompt), ("width", REAL["kontext"]["size"]), ("height", REAL["kontext"]["size"]),
                  ("steps", REAL["kontext"]["steps"]), ("cfg", REAL["kontext"]["cfg"]),
                  ("sampler_name", "euler"), ("scheduler", "simple"), ("seed", 0), ("iterations", iterations),
                  ("threshold", threshold), ("candidates", 5), ("references", 1),
                  ("reference_mode", "reference_latents")],
                 inputs, ["IMAGE", "STRING", "STRING", "IMAGE"], stage, 0, 0)


W2I_SOCKETS = 10  # the agent's input slots, shown linked or not: model, clip, vae, llm, scorer, 3 sources, style, vision


def worldtoimage_agent_sized(g, *args, **kw):
    """The agent node, sized for all its input slots (the front end draws the unlinked optional ones too)."""
    node = worldtoimage_agent(g, *args, **kw)
    entry = g.nodes[node - 1]
    entry["size"] = node_size(entry["type"], entry["widgets"], W2I_SOCKETS, len(entry["outputs"]))
    return node


def worldtoimage_outputs(g, agent, stage, prefix):
    save(g, agent, f"{prefix}/best", stage, 0, 0, slot=0, title="Best image")
    save(g, agent, f"{prefix}/iteration", stage, 1, 0, slot=3, title="Every iteration")


def worldtoimage_local_library():
    g = Graph("World-To-Image: local image library (offline)")
    g.add_note(note("World-To-Image: local image library (offline)",
                    "An agent loop that brings reference images into generation. **Image Library** indexes a folder "
                    "of your images (captions from sidecar .txt files or file names). The **World-To-Image Agent** "
                    "generates from the prompt, then each further iteration retrieves the library image that best "
                    "matches the prompt's keywords and generates again with it as a **reference latent** on **Flux "
                    "Kontext dev** (the model trained on reference latents; ComfyUI's Kontext template's loaders, 20 "
                    "steps, cfg 1). Everything stays on this machine and a rerun gives the same history, which the "
                    "agent node shows when it has run.",
                    KONTEXT_MODEL_FILES, "worldtoimage_local_library", ("editlab_product_bag.png",),
                    "The library here is the input folder itself ('.'). No LLM and no scorer are wired, so the prompt "
                    "is not rewritten and the first iteration is kept: the **History** says what was skipped. Add an "
                    "**LLM** node (planning) and an **Image Scorer** (a vision LLM, or a CLIP vision model from "
                    "`models/clip_vision/`) to rank the iterations and stop at the threshold. " + SMALL))
    s_models = g.stage("models", "Flux Kontext models", 0)
    s_sources = g.stage("sources", "Local image library", 0)
    s_agent = g.stage("agent", "Retrieve, generate, iterate", 1)
    s_out = g.stage("out", "Best image, every iteration, history", 1)
    m = kontext_loaders(g, s_models)
    library = g.add("EditLabImageLibrary", [("folder", "."), ("recursive", False)], {},
                    ["EDITLAB_IMAGE_SOURCE", "STRING"], s_sources, 0, 0)
    agent = worldtoimage_agent_sized(g, m, s_agent, W2I_PROMPT, sources=[library])
    worldtoimage_outputs(g, agent, s_out, "worldtoimage/local")
    return g


def worldtoimage_openverse():
    g = Graph("World-To-Image: LLM + Openverse")
    g.add_note(note("World-To-Image: LLM + Openverse",
                    "The full agent: an **OpenAI-compatible LLM** (here a local Ollama at 127.0.0.1:11434 serving a "
                    "vision model; for OpenAI the server's owner declares the endpoint and its key variable in "
                    "EDITLAB_LLM_ENDPOINTS or user/editlab/llm_endpoints.json, and base_url names it, e.g. openai, "
                    "with model e.g. gpt-4o: neither the key nor its variable goes in the workflow) diagnoses each "
                    "attempt, rewrites the prompt and chooses search queries; **Web Image "
                    "Search** asks Openverse for openly licensed references (licence and source URL recorded, every "
                    "download through the guarded client); the **Image Scorer** has the same LLM judge each image; the "
                    "agent keeps the best and stops at the threshold. The agent node shows the history (JSON) when it "
                    "has run. Generation runs on **Flux Kontext dev**, the model trained on reference latents.",
                    KONTEXT_MODEL_FILES, "worldtoimage_openverse", (),
                    "Offline or without the LLM server it still runs: an unreachable search is recorded in the "
                    "**History** and the loop goes on without references; an unreachable LLM means keyword queries, "
                    "the prompt unchanged and no scores (also recorded). " + SMALL))
    s_models = g.stage("models", "Flux Kontext models", 0)
    s_llm = g.stage("llm", "LLM, judge and web search", 0)
    s_agent = g.stage("agent", "Plan, retrieve, generate, score, iterate", 1)
    s_out = g.stage("out", "Best image, every iteration, history", 1)
    m = kontext_loaders(g, s_models)
    llm = g.add("EditLabLLM", [("base_url", "http://127.0.0.1:11434/v1"), ("model", "llava"), ("api_key_env", ""),
                               ("temperature", 0.0), ("timeout", 30.0), ("max_retries", 1), ("vision", True)],
                {}, ["EDITLAB_LLM"], s_llm, 0, 0)
    scorer = g.add("EditLabImageScorer", [("judge", "vlm"), ("formula", "authors_gated"), ("vlm_aesthetic", False),
                                          ("clip_vision_name", "(none)"), ("prompt", "")],
                   {"llm": (llm, 0, "EDITLAB_LLM")}, ["EDITLAB_IMAGE_SCORER", "FLOAT", "STRING"], s_llm, 1, 0)
    web = g.add("EditLabWebImageSearch", [("service", "openverse"), ("endpoint", ""), ("allow_loopback", False),
                                          ("use_cache", True), ("timeout", 10.0), ("max_megabytes", 20.0),
                                          ("max_megapixels", 40.0)], {}, ["EDITLAB_IMAGE_SOURCE"], s_llm, 0, 1)
    agent = worldtoimage_agent_sized(g, m, s_agent, "a Zorblax desk lamp on a wooden desk", llm=llm, scorer=scorer,
                               sources=[web], iterations=3)
    worldtoimage_outputs(g, agent, s_out, "worldtoimage/openverse")
    return g



# -- layered edit (TBStar-Edit) ------------------------------------------------------------------------------------
MODEL_FILES.update({
    "flux1-dev-kontext_fp8_scaled.safetensors": (
        "diffusion_models", "https://huggingface.co/Comfy-Org/flux1-kontext-dev_ComfyUI/resolve/main/split_files/"
                            "diffusion_models/flux1-dev-kontext_fp8_scaled.safetensors"),
    "t5xxl_fp8_e4m3fn_scaled.safetensors": (
        "text_encoders", "https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/"
                         "t5xxl_fp8_e4m3fn_scaled.safetensors"),
})
KONTEXT_FILES = ("- `flux1-dev-kontext_fp8_scaled.safetensors` in `models/diffusion_models/`\n"
                 "- `clip_l.safetensors` and `t5xxl_fp8_e4m3fn_scaled.safetensors` in `models/text_encoders/`\n"
                 "- `ae.safetensors` in `models/vae/`\n"
                 "- your layered LoRAs (optional) in `models/loras/`")
KONTEXT_MODEL_FILES = KONTEXT_FILES.rsplit("\n", 1)[0]
LAYERED_LORAS = ("**Adapters**: *Layered Edit Adapters* ships with both LoRAs set to *None* (no change). Train yours "
                 "with *Layered Edit Train* (edit pairs `NAME_source.png`, `NAME_target.png`, `NAME.txt`, "
                 "`NAME_mask.png` in a folder of ComfyUI's input folder) or `scripts/train_layered.py`, then pick "
                 "`NAME_pattern_shift.safetensors` and `NAME_consistency.safetensors` there, each with its strength "
                 "and step window. Encode the instruction with the node's CLIP output: the conditioning carries the "
                 "adapters to the sampler.")
REPORT = ("*Edit Consistency Report* writes L1 / PSNR / SSIM inside and outside the product mask of the model's edit "
          "(before any Product Lock, so the inside numbers show how much the model itself changed the product; shown "
          "on the node, saved as `output/{prefix}_NNNNN_.json`) and a heat-map of what the edit touched.")


def kontext_loaders(g, stage, col=0):
    """UNETLoader + DualCLIPLoader + VAELoader with the file names of ComfyUI's Flux Kontext dev template."""
    unet_file, t5 = "flux1-dev-kontext_fp8_scaled.safetensors", "t5xxl_fp8_e4m3fn_scaled.safetensors"
    unet = g.add("UNETLoader", [("unet_name", unet_file), ("weight_dtype", "default")], outputs=["MODEL"],
                 stage=stage, col=col, row=0, properties=_models_property(unet_file))
    clip = g.add("DualCLIPLoader", [("clip_name1", "clip_l.safetensors"), ("clip_name2", t5), ("type", "flux"),
                                    ("device", "default")], outputs=["CLIP"], stage=stage, col=col, row=1,
                 properties=_models_property("clip_l.safetensors", t5))
    vae = g.add("VAELoader", [("vae_name", "ae.safetensors")], outputs=["VAE"], stage=stage, col=col, row=2,
                properties=_models_property("ae.safetensors"))
    return Models((unet, 0, "MODEL"), (clip, 0, "CLIP"), (vae, 0, "VAE"))


def _square(g, image, stage, col, row, title=None, size=REAL["kontext"]["size"]):
    return g.add("ImageScale", [("upscale_method", "bilinear"), ("width", size), ("height", size),
                                ("crop", "center")], {"image": (image, 0, "IMAGE")}, ["IMAGE"], stage, col, row, title)


def layered_edit(title, what, name, photo_file, mask_file, instruction, lock, prefix):
    g = Graph(title)
    g.add_note(note(title, what, KONTEXT_FILES, name, (photo_file, mask_file),
                    LAYERED_LORAS + " " + REPORT.format(prefix=prefix + "_report") + " " + SMALL))
    return layered_rows(g, photo_file, mask_file, instruction, lock, prefix, options=True)


def layered_rows(g, photo_file, mask_file, instruction, lock, prefix, options=False):
    """Product photo + its mask -> Layered Edit Adapters -> Flux Kontext edit (instruction + the photo as a reference
    latent) -> optional Product Lock -> saved image, consistency report and heat-map."""
    s_models = g.stage("models", "Flux Kontext models", 0)
    s_photo = g.stage("photo", "Product photo and its mask", 0)
    s_adapters = g.stage("adapters", "Layered adapters (pattern shift + consistency)", 0)
    s_edit = g.stage("edit", "Edit: instruction + the photo as a reference latent", 1)
    s_out = g.stage("out", ("Product lock, " if lock else "") + "consistency report, save", 1)
    m = kontext_loaders(g, s_models)
    photo = load_image(g, photo_file, s_photo, 0, 0, title="Product photo")
    mask_image = load_image(g, mask_file, s_photo, 0, 1, title="Product mask (white = product)")
    scaled = _square(g, photo, s_photo, 1, 0, title="Scale photo")
    scaled_mask = _square(g, mask_image, s_photo, 1, 1, title="Scale mask")
    mask = g.add("ImageToMask", [("channel", "red")], {"image": (scaled_mask, 0, "IMAGE")}, ["MASK"], s_photo, 1, 2)
    layered = g.add("EditLabLayeredAdapters",
                    [("pattern_shift_lora", "None"), ("pattern_shift_strength", 1.0), ("pattern_shift_start", 0.0),
                     ("pattern_shift_end", 1.0), ("consistency_lora", "None"), ("consistency_strength", 1.0),
                     ("consistency_start", 0.3), ("consistency_end", 1.0)],
                    {"model": m.model, "clip": m.clip}, ["MODEL", "CLIP"], s_adapters, 0, 0)
    pos = text(g, (layered, 1, "CLIP"), instruction, s_edit, 0, 0, title="Instruction")
    latent = g.add("VAEEncode", [], {"pixels": (scaled, 0, "IMAGE"), "vae": m.vae}, ["LATENT"], s_edit, 0, 1)
    guided = g.add("FluxGuidance", [("guidance", 2.5)], {"conditioning": (pos, 0, "CONDITIONING")},
                   ["CONDITIONING"], s_edit, 1, 0)
    ref = g.add("ReferenceLatent", [], {"conditioning": (guided, 0, "CONDITIONING"),
                                        "latent": (latent, 0, "LATENT")}, ["CONDITIONING"], s_edit, 1, 1)
    neg = g.add("ConditioningZeroOut", [], {"conditioning": (pos, 0, "CONDITIONING")}, ["CONDITIONING"], s_edit,
                1, 2)
    sampled = ksample(g, m, ref, neg, latent, s_edit, 2, 0, steps=REAL["kontext"]["steps"],
                      cfg=REAL["kontext"]["cfg"], model=(layered, 0, "MODEL"))
    edited = decode(g, m, sampled, s_edit, 2, 1)
    result = edited
    col = 0
    if lock:
        result = g.add("EditLabProductLock", [("feather", 3), ("colour_match", 0.0)],
                       {"original": (scaled, 0, "IMAGE"), "edited": (edited, 0, "IMAGE"), "mask": (mask, 0, "MASK")},
                       ["IMAGE"], s_out, 0, 0)
        col = 1
    save(g, result, prefix, s_out, col, 0, title="Save the edit")
    # the report measures the model's edit (before any lock): after the lock the inside of the mask is the photo
    # itself, so its inside-mask difference would be zero by construction
    report = g.add("EditLabEditConsistency", [("filename_prefix", prefix + "_report")],
                   {"original": (scaled, 0, "IMAGE"), "edited": (edited, 0, "IMAGE"), "mask": (mask, 0, "MASK")},
                   ["STRING", "IMAGE"], s_out, col + 1, 0)
    save(g, report, prefix + "_heatmap", s_out, col + 1, 1, slot=1, title="Save the change heat-map")
    if options:
        s_opt = g.stage("options", "Optional (unmute with Ctrl+M): train the adapters, VIEScore the edit", 2)
        g.add("EditLabLayeredTrain",
              [("folder", "layered_pairs"), ("stages", "both"), ("pattern_shift_lora", "None"), ("resolution", 512),
               ("rank", 16), ("steps_stage1", 1000), ("steps_stage2", 500), ("lr", 0.0001), ("product_weight", 5.0),
               ("guidance", 2.5), ("seed", 0), ("name", "layered"), ("overwrite", False),
               ("gradient_checkpointing", True)],
              {"model": m.model, "clip": m.clip, "vae": m.vae}, ["STRING", "STRING", "STRING"], s_opt, 0, 0,
              mode=MUTED)
        llm = g.add("EditLabLLM", [("base_url", "http://127.0.0.1:11434/v1"), ("model", "llava"),
                                   ("api_key_env", ""), ("temperature", 0.0), ("timeout", 30.0), ("max_retries", 1),
                                   ("vision", True)], {}, ["EDITLAB_LLM"], s_opt, 1, 0, mode=MUTED)
        g.add("EditLabVIEScore", [("instruction", instruction)],
              {"llm": (llm, 0, "EDITLAB_LLM"), "source_image": (scaled, 0, "IMAGE"),
               "edited_image": (result, 0, "IMAGE")}, ["FLOAT", "FLOAT", "FLOAT", "STRING", "STRING"], s_opt, 2, 0,
              mode=MUTED)
    return g


def layered_background_replacement():
    return layered_edit(
        "Layered edit: background replacement with product lock", "An e-commerce edit that must not touch the "
        "product: Flux Kontext replaces the background of a packshot, the layered adapters (TBStar-Edit) steer it, "
        "and **Product Lock** puts the bag's own pixels back exactly, blending only a 3 px seam band.",
        "layered_background_replacement", "editlab_product_bag.png", "editlab_product_bag_mask.png",
        "Change the background to a sunny beach, keep the bag in the exact same position, scale and colours",
        True, "layered/background")


def layered_accessory_addition():
    return layered_edit(
        "Layered edit: accessory addition", "Adds an accessory next to a product with Flux Kontext and the layered "
        "adapters; the consistency report shows how much the t-shirt itself changed (inside its mask) against "
        "the rest of the picture.", "layered_accessory_addition", "editlab_product_tshirt.png",
        "editlab_product_tshirt_mask.png",
        "Add a pair of sunglasses hanging from the collar, keep the t-shirt exactly as it is", False,
        "layered/accessory")


def layered_watermark_removal():
    return layered_edit(
        "Layered edit: watermark removal", "Removes a shop watermark that runs over the background and over the "
        "bag, so no lock here (it would keep the watermark on the product); the consistency report and heat-map "
        "show where the edit changed pixels inside and outside the product.", "layered_watermark_removal",
        "editlab_product_bag_watermarked.png", "editlab_product_bag_mask.png",
        "Remove the grey 'SAMPLE (c) SHOP' watermark text, keep everything else unchanged", False,
        "layered/watermark")


# -- composed workflows: two methods' patches on one model ---------------------------------------------------------
COMPOSED = ("Composed: every patch here is also tested alone and in pairs (the composition matrix in the README); a "
            "pair that cannot compose is refused with an error naming both nodes.")


def composed_tova_expression():
    title = "Composed: two personalised concepts with an expression (SD1.5)"
    g = Graph(title)
    g.add_note(note(title,
                    "**ToVA Apply** attaches two concepts' value adapters (*person* and *shirt*, the class nouns), "
                    "each "
                    "acting only at its word's tokens; **Apply Expression** then adds the expression adapter's "
                    "tokens, driven by the photo's blendshapes edited with a *smile* preset, to the same model; "
                    "**LODA** wraps the sampler and keeps the two concepts' attention apart. One model, two "
                    "methods' patches.",
                    SD15_FILES, "composed_tova_expression", ("editlab_photo.png", "editlab_product_tshirt.png"),
                    "Sampling uses ConceptSplit's settings (50 steps, cfg 7.5, LODA over the first 10: LODA's "
                    "schedule is defined over them); the ToVA adapters train in-graph as in the ConceptSplit "
                    "workflow (rank 32, 512 px, 500 steps) and the expression adapter at the expression authors' "
                    "512 px. " + EXPRESSION_ADAPTER + " " + COMPOSED + " " + SMALL))
    m, photo, shapes, adapter, s_face = expression_base(g)
    _, _, _, latent_node, rank, lr, cfg, _, size = CONCEPTSPLIT["sd15"]
    real = REAL["conceptsplit"]
    s_train = g.stage("train", "Train one value adapter per concept word", 1)
    s_apply = g.stage("apply", "ToVA Apply, then Apply Expression, on one model", 2)
    s_sample = g.stage("sample", "LODA sampler, save", 3)
    adapters = []
    for i, word in enumerate(CONCEPT_WORDS):
        adapters.append(tova_train(g, m, word, i, size, rank, lr, real["train_steps"], f"composed_{word}",
                                   s_train))
    tova = g.add("EditLabToVAApply", [("prompt", CONCEPT_PROMPT), ("strength", 1.0)],
                 {"model": m.model, "clip": m.clip, "adapter_1": (adapters[0], 0, "EDITLAB_TOVA"),
                  "adapter_2": (adapters[1], 0, "EDITLAB_TOVA")}, ["MODEL"], s_apply, 0, 0)
    smile = g.add("EditLabBlendshapeEdit", [("preset", "smile"), ("values", "{}"), ("symmetric", True),
                                            ("intensity", 1.0)], {"blendshapes": (shapes, 0, "EDITLAB_BLENDSHAPES")},
                  ["EDITLAB_BLENDSHAPES"], s_apply, 1, 0)
    model = apply_expression(g, m, adapter, smile, s_apply, 1, 1, model=(tova, 0, "MODEL"))
    pos = text(g, m.clip, CONCEPT_PROMPT, s_apply, 2, 0)
    neg = text(g, m.clip, "", s_apply, 2, 1, title="Negative prompt")
    latent = g.add(latent_node, [("width", size), ("height", size), ("batch_size", 1)], {}, ["LATENT"], s_apply, 2,
                   2)
    base = g.add("KSamplerSelect", [("sampler_name", "euler")], {}, ["SAMPLER"], s_sample, 0, 0)
    loda = g.add("EditLabLODA", [("prompt", CONCEPT_PROMPT), ("concepts", ", ".join(CONCEPT_WORDS)),
                                 ("loda_steps", real["loda_steps"]), ("step_size", 20.0), ("threshold", 3.0),
                                 ("afg_strength", 2.0), ("map_layers", "authors"), ("afg_mode", "soft")],
                 {"sampler": (base, 0, "SAMPLER"), "clip": m.clip}, ["SAMPLER"], s_sample, 0, 1)
    sigmas = g.add("BasicScheduler", [("scheduler", "simple"), ("steps", real["steps"]), ("denoise", 1.0)],
                   {"model": (model, 0, "MODEL")}, ["SIGMAS"], s_sample, 1, 0)
    sampled = g.add("SamplerCustom", [("add_noise", True), ("noise_seed", 42), ("cfg", cfg)],
                    {"model": (model, 0, "MODEL"), "positive": (pos, 0, "CONDITIONING"),
                     "negative": (neg, 0, "CONDITIONING"), "sampler": (loda, 0, "SAMPLER"),
                     "sigmas": (sigmas, 0, "SIGMAS"), "latent_image": (latent, 0, "LATENT")},
                    ["LATENT", "LATENT"], s_sample, 1, 1)
    save(g, decode(g, m, sampled, s_sample, 2, 0), "composed/tova_expression", s_sample, 2, 1)
    return g


def composed_slider_layered_kontext():
    title = "Composed: SAE slider + layered adapters (Flux Kontext)"
    g = Graph(title)
    g.add_note(note(title,
                    "A Flux Kontext product edit (background replacement) through the **Layered Edit Adapters**, with "
                    "an **SAE Slider** on the word *beach* of the instruction: a 'sunny' direction found from prompt "
                    "pairs. The same edit is sampled plain and slid from one seed; **Product Lock** puts the bag's "
                    "own pixels back in both.",
                    KONTEXT_FILES, "composed_slider_layered_kontext",
                    ("editlab_product_bag.png", "editlab_product_bag_mask.png"),
                    "Kontext's template settings (1024 px, 20 steps, cfg 1, FluxGuidance 2.5); the slider with the "
                    "SAEdit authors' timing. " + LAYERED_LORAS + " " + SAE_TRAINED.format(sae="composed_kontext_sae")
                    + " " + COMPOSED + " " + SMALL))
    s_models = g.stage("models", "Flux Kontext models", 0)
    s_photo = g.stage("photo", "Product photo and its mask", 0)
    s_adapters = g.stage("adapters", "Layered adapters (pattern shift + consistency)", 0)
    s_sae = g.stage("sae", "Train SAE, find the 'sunny' direction, slide the instruction", 1)
    s_edit = g.stage("edit", "Plain vs. slid edit: the photo as a reference latent, product lock, save", 2)
    m = kontext_loaders(g, s_models)
    photo = load_image(g, "editlab_product_bag.png", s_photo, 0, 0, title="Product photo")
    mask_image = load_image(g, "editlab_product_bag_mask.png", s_photo, 0, 1, title="Product mask (white = product)")
    scaled = _square(g, photo, s_photo, 1, 0, title="Scale photo")
    scaled_mask = _square(g, mask_image, s_photo, 1, 1, title="Scale mask")
    mask = g.add("ImageToMask", [("channel", "red")], {"image": (scaled_mask, 0, "IMAGE")}, ["MASK"], s_photo, 1, 2)
    layered = g.add("EditLabLayeredAdapters",
                    [("pattern_shift_lora", "None"), ("pattern_shift_strength", 1.0), ("pattern_shift_start", 0.0),
                     ("pattern_shift_end", 1.0), ("consistency_lora", "None"), ("consistency_strength", 1.0),
                     ("consistency_start", 0.3), ("consistency_end", 1.0)],
                    {"model": m.model, "clip": m.clip}, ["MODEL", "CLIP"], s_adapters, 0, 0)
    lclip = (layered, 1, "CLIP")
    lm = Models((layered, 0, "MODEL"), lclip, m.vae)
    instruction = "Change the background to a beach, keep the bag in the exact same position, scale and colours"
    pos = g.add("EditLabTextEncode", [("text", instruction)], {"clip": lclip}, ["CONDITIONING"], s_sae, 0, 1,
                "Instruction (records tokens)")
    sae, direction = sae_and_direction(g, lm, "composed_kontext_sae", s_sae,
                                       pairs="a beach | a sunny beach\na street | a sunny street\na garden | a sunny "
                                             "garden\na room | a sunny room")
    sunny = slider(g, lm, pos, sae, direction, "beach", 1.0, s_sae, 2, 0)
    latent = g.add("VAEEncode", [], {"pixels": (scaled, 0, "IMAGE"), "vae": m.vae}, ["LATENT"], s_edit, 0, 0)
    neg = g.add("ConditioningZeroOut", [], {"conditioning": (pos, 0, "CONDITIONING")}, ["CONDITIONING"], s_edit,
                0, 1)
    for i, (cond, name) in enumerate(((pos, "plain"), (sunny, "sunny"))):
        guided = g.add("FluxGuidance", [("guidance", 2.5)], {"conditioning": (cond, 0, "CONDITIONING")},
                       ["CONDITIONING"], s_edit, 1, i)
        ref = g.add("ReferenceLatent", [], {"conditioning": (guided, 0, "CONDITIONING"),
                                            "latent": (latent, 0, "LATENT")}, ["CONDITIONING"], s_edit, 2, i)
        sampled = ksample(g, lm, ref, neg, latent, s_edit, 3, i, steps=REAL["kontext"]["steps"],
                          cfg=REAL["kontext"]["cfg"])
        edited = decode(g, m, sampled, s_edit, 4, i)
        locked = g.add("EditLabProductLock", [("feather", 3), ("colour_match", 0.0)],
                       {"original": (scaled, 0, "IMAGE"), "edited": (edited, 0, "IMAGE"), "mask": (mask, 0, "MASK")},
                       ["IMAGE"], s_edit, 5, i)
        save(g, locked, f"composed/slider_layered_{name}", s_edit, 6, i, title=f"Save the {name} edit")
    return g


def composed_tryon_slider_fill():
    title = "Composed: try-on + SAE slider (Flux Fill)"
    g = Graph(title)
    g.add_note(note(title,
                    TRYON_WHAT.format(what="upper-body") + " The try-on prompt is encoded by **CLIP Text Encode "
                    "(records tokens)** and an **SAE Slider** slides an 'oversized' direction (found from prompt "
                    "pairs) on the word *shirt*: how loose the worn shirt falls.",
                    FLUX_FILES.replace("flux1-dev", "flux1-fill-dev"), "composed_tryon_slider_fill",
                    ("editlab_photo.png", "editlab_product_tshirt.png"),
                    "Flux Fill's template settings (20 steps, cfg 1, FluxGuidance 30) on a 1024-high canvas; the "
                    "slider with the SAEdit authors' timing. " + SAE_TRAINED.format(sae="composed_fill_sae") + " "
                    + COMPOSED + " " + SMALL_STITCH))

    def slid_prompt(g, m, _stage):
        s_sae = g.stage("sae", "Try-on prompt, SAE and the 'oversized' direction, slid", 1)
        pos = recorded_text(g, m.clip, "the person on the left wearing the shirt shown in the middle", s_sae, 0, 1)
        sae, direction = sae_and_direction(g, m, "composed_fill_sae", s_sae,
                                           pairs="a shirt | an oversized shirt\na t-shirt | an oversized t-shirt\n"
                                                 "a man wearing a shirt | a man wearing an oversized shirt\na woman "
                                                 "wearing a shirt | a woman wearing an oversized shirt")
        return slider(g, m, pos, sae, direction, "shirt", 1.0, s_sae, 2, 0)

    tryon(g, ["upper"], ["editlab_product_tshirt.png"], "composed/tryon_slider", edit_prompt=slid_prompt)
    return g


# The order the templates browser lists them in (the tour first), with the description its card shows; written to
# web/templates.json, which web/editlab.js reads (ComfyUI's front end would otherwise show file names). The front end
# turns '-' and '_' in descriptions into spaces: hyphens here are U+2011 and the minus sign U+2212.
DESCRIPTIONS = {
    "editlab_tour": "Every method in one graph, a row each: SAEdit slider, try\u2011on, face blendshapes, "
                    "ConceptSplit, ChronoEdit, World\u2011To\u2011Image, layered edit. Start here.",
    "saedit_flux_slider_sweep": "A 'smiling' SAE direction slid on one word at strengths \u22121, 0, 1 and 2 (Flux).",
    "saedit_sd35_slider": "The SAEdit slider on Stable Diffusion 3.5: plain and slid image side by side.",
    "saedit_train_sae": "Train a sparse autoencoder on your text encoder and save a direction from prompt pairs.",
    "saedit_photo_edit": "Edit a photo: exact Flux inversion, then the slider on the inverted noise.",
    "tryon_flux_fill": "Virtual try\u2011on of a shirt: pose, mask, person | product | pose canvas, Flux Fill.",
    "tryall_bag": "Try\u2011all with an accessory: a bag placed on the person with Flux Fill.",
    "tryon_outfit": "Two garments at once (shirt and trousers) on one canvas with Flux Fill.",
    "expression_from_photo": "Read a face's 52 ARKit blendshapes and generate a new face with that expression "
                             "(SD1.5).",
    "expression_sliders": "Edit an expression with presets and per\u2011coefficient sliders, then generate it (SD1.5).",
    "expression_reference_edit": "Change a photo's expression while a reference adapter keeps the person (SD1.5).",
    "conceptsplit_two_concepts": "Two personalised concepts in one image: token\u2011wise value adapters (ToVA), "
                                 "the LODA sampler and per\u2011word attention maps (SD1.5).",
    "conceptsplit_two_concepts_sdxl": "ConceptSplit on SDXL: two concepts' value adapters trained in\u2011graph, "
                                      "the LODA sampler and attention heat\u2011maps.",
    "conceptsplit_two_concepts_flux": "ConceptSplit on Flux: value adapters on the text stream of the double "
                                      "blocks, the LODA sampler and attention heat\u2011maps.",
    "chronoedit_reasoning_edit": "ChronoEdit: a photo edited as a short video with temporal reasoning frames "
                                 "(dropped at step k, any sampler); the trajectory saved as a video (Wan 2.1 I2V).",
    "chronoedit_distilled_8step": "ChronoEdit with the 8\u2011step distill LoRA: 8 steps, cfg 1, shift 2 "
                                  "(Wan 2.1 I2V).",
    "worldtoimage_local_library": "World\u2011To\u2011Image agent, offline: references from a local image library "
                                  "as reference latents, iterated (Flux).",
    "worldtoimage_openverse": "World\u2011To\u2011Image agent with an OpenAI\u2011compatible LLM and Openverse: "
                              "plan, retrieve, generate, score, keep the best (Flux).",
    "layered_background_replacement": "Replace a product photo's background with Flux Kontext and the layered "
                                      "adapters; Product Lock keeps the product's pixels exact.",
    "layered_accessory_addition": "Add an accessory beside a product (Flux Kontext, layered adapters) and measure "
                                  "how much the product changed.",
    "layered_watermark_removal": "Remove a watermark (Flux Kontext, layered adapters); the report shows what "
                                 "changed inside and outside the product.",
    "composed_tova_expression": "Composed: two personalised concepts (ToVA, LODA) and a smiling expression "
                                "(expression adapter) on one SD1.5 model.",
    "composed_slider_layered_kontext": "Composed: an SAE slider ('sunny') on a Flux Kontext product edit through "
                                       "the layered adapters, plain and slid, product locked.",
    "composed_tryon_slider_fill": "Composed: virtual try\u2011on with an SAE slider ('oversized') on the shirt "
                                  "(Flux Fill).",
}
WORKFLOWS = {"editlab_tour": tour, "saedit_flux_slider_sweep": saedit_flux_slider_sweep,
             "saedit_sd35_slider": saedit_sd35_slider, "saedit_train_sae": saedit_train_sae,
             "saedit_photo_edit": saedit_photo_edit, "tryon_flux_fill": tryon_flux_fill, "tryall_bag": tryall_bag,
             "tryon_outfit": tryon_outfit, "expression_from_photo": expression_from_photo,
             "expression_sliders": expression_sliders, "expression_reference_edit": expression_reference_edit,
             "conceptsplit_two_concepts": conceptsplit_two_concepts,
             "conceptsplit_two_concepts_sdxl": conceptsplit_two_concepts_sdxl,
             "conceptsplit_two_concepts_flux": conceptsplit_two_concepts_flux,
             "chronoedit_reasoning_edit": chronoedit_reasoning_edit,
             "chronoedit_distilled_8step": chronoedit_distilled_8step,
             "worldtoimage_local_library": worldtoimage_local_library,
             "worldtoimage_openverse": worldtoimage_openverse,
             "layered_background_replacement": layered_background_replacement,
             "layered_accessory_addition": layered_accessory_addition,
             "layered_watermark_removal": layered_watermark_removal,
             "composed_tova_expression": composed_tova_expression,
             "composed_slider_layered_kontext": composed_slider_layered_kontext,
             "composed_tryon_slider_fill": composed_tryon_slider_fill}


def main():
    (ROOT / "workflows" / "api").mkdir(parents=True, exist_ok=True)
    cards = []
    for name, build in WORKFLOWS.items():
        g = build()
        cards.append({"name": name, "title": g.title, "description": DESCRIPTIONS[name]})
        (ROOT / "workflows" / f"{name}.json").write_text(json.dumps(g.ui(), indent=1) + "\n")
        (ROOT / "workflows" / "api" / f"{name}.json").write_text(json.dumps(g.api(), indent=1) + "\n")
        print(f"wrote workflows/{name}.json and workflows/api/{name}.json ({len(g.nodes)} nodes)")
    (ROOT / "web" / "templates.json").write_text(json.dumps(cards, indent=1) + "\n")
    print("wrote web/templates.json (titles, descriptions and order for the templates browser)")


if __name__ == "__main__":
    main()
