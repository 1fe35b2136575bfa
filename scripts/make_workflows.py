"""Writes the shipped workflows from one spec each: the UI-format file (workflows/NAME.json, what ComfyUI's templates
browser opens) and its API-format twin (workflows/api/NAME.json, what /prompt takes).

The e2e tests convert every UI file with the live server's /object_info and require it to equal its twin, so a
widget order written wrongly here fails there. Run: python scripts/make_workflows.py
"""
from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEED_CONTROL = object()  # marks the front end's "control after generate" value that follows a seed widget
UPLOAD_BUTTON = object()  # marks LoadImage's upload widget value: in the UI file only

TINY_NOTE = ("Runs as shipped on EditLabTinyModels: RANDOM weights, so images are noise. For real results swap it "
             "for your checkpoint / UNet + text-encoder + VAE loaders, and the SAE Train node for an SAE Loader.")


SEED_NAMES = ("seed", "noise_seed")  # the front end adds a control widget after INT inputs with these names


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


class Graph:
    def __init__(self):
        self.nodes, self.links = [], []

    def add(self, type_, widgets=(), inputs=None, outputs=(), col=0, row=0, title=None, mode=0):
        """widgets: [(name, value)] in the node's input order (SEED_CONTROL / UPLOAD_BUTTON as the name of
        front-end-only values);
        inputs: {name: (source_node, slot, type)}; outputs: output types. Returns the node id."""
        node_id = len(self.nodes) + 1
        self.nodes.append({"id": node_id, "type": type_, "widgets": with_seed_controls(widgets), "inputs": dict(inputs or {}),
                           "outputs": list(outputs), "pos": [40 + col * 340, 40 + row * 260], "title": title,
                           "mode": mode})
        return node_id

    def ui(self) -> dict:
        links, out_links = [], {}
        for node in self.nodes:
            for slot, (name, (src, src_slot, type_)) in enumerate(node["inputs"].items()):
                link_id = len(links) + 1
                links.append([link_id, src, src_slot, node["id"], slot, type_])
                out_links.setdefault((src, src_slot), []).append(link_id)
        nodes, link_iter = [], iter(links)
        for node in self.nodes:
            ui_node = {"id": node["id"], "type": node["type"], "pos": node["pos"], "size": [300, 130], "flags": {},
                       "order": node["id"] - 1, "mode": node["mode"],
                       "inputs": [{"name": name, "type": t, "link": next(link_iter)[0]}
                                  for name, (_, _, t) in node["inputs"].items()],
                       "outputs": [{"name": t, "type": t, "links": out_links.get((node["id"], i), []),
                                    "slot_index": i} for i, t in enumerate(node["outputs"])],
                       "properties": {"Node name for S&R": node["type"]},
                       "widgets_values": [v for _, v in node["widgets"]]}
            if node["title"]:
                ui_node["title"] = node["title"]
            nodes.append(ui_node)
        return {"last_node_id": len(self.nodes), "last_link_id": len(links), "nodes": nodes, "links": links,
                "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4}

    def api(self) -> dict:
        prompt = {}
        for node in self.nodes:
            if node["type"] in ("Note", "MarkdownNote") or node["mode"] in (2, 4):
                continue
            inputs = {n: v for n, v in node["widgets"] if n not in (SEED_CONTROL, UPLOAD_BUTTON)}
            inputs.update({name: [str(src), slot] for name, (src, slot, _) in node["inputs"].items()})
            entry = {"class_type": node["type"], "inputs": inputs}
            if node["title"]:
                entry["_meta"] = {"title": node["title"]}
            prompt[str(node["id"])] = entry
        return prompt


# -- pieces ---------------------------------------------------------------------------------------------------
def tiny(g, arch="flux"):
    g.add("Note", [("text", TINY_NOTE)], row=2)
    return g.add("EditLabTinyModels", [("architecture", arch), ("seed", 0)], outputs=["MODEL", "CLIP", "VAE"])


def text(g, models, prompt, row, col=1, title=None):
    return g.add("CLIPTextEncode", [("text", prompt)], {"clip": (models, 1, "CLIP")}, ["CONDITIONING"], col, row,
                 title)


def sae_and_direction(g, models, name, row=3, part="auto",
                      pairs="a man | a smiling man\na woman | a smiling woman\na fox in the snow | "
                            "a smiling fox in the snow\na child on a beach | a smiling child on a beach"):
    sae = g.add("EditLabSAETrain",
                [("prompts", ""), ("prompts_file", ""), ("generated_prompts", 300), ("part", part),
                 ("dict_size", 256), ("top_k", 16), ("matryoshka_groups", "64,192"), ("lr", 0.001),
                 ("batch_size", 256), ("epochs", 3), ("seed", 0), ("name", name)],
                {"clip": (models, 1, "CLIP")}, ["EDITLAB_SAE", "STRING"], col=1, row=row)
    direction = g.add("EditLabSAEDirection",
                      [("pairs", pairs), ("pairs_file", ""), ("part", part), ("method", "svd"),
                       ("percentile", 99.5), ("name", "")],
                      {"clip": (models, 1, "CLIP"), "sae": (sae, 0, "EDITLAB_SAE")}, ["EDITLAB_SAE_DIRECTION"],
                      col=2, row=row)
    return sae, direction


def slider(g, models, cond, sae, direction, prompt, word, strength, col, row, part="auto"):
    return g.add("EditLabSAESlider",
                 [("prompt", prompt), ("word", word), ("strength", strength), ("schedule", "exponential"),
                  ("part", part)],
                 {"conditioning": (cond, 0, "CONDITIONING"), "clip": (models, 1, "CLIP"),
                  "sae": (sae, 0, "EDITLAB_SAE"), "direction": (direction, 0, "EDITLAB_SAE_DIRECTION")},
                 ["CONDITIONING"], col, row, title=f"SAE Slider {strength:+g}")


def ksample_save(g, models, pos, neg, latent, prefix, col, row, seed=42, steps=8):
    k = g.add("KSampler", [("seed", seed), (SEED_CONTROL, "fixed"), ("steps", steps), ("cfg", 1.0),
                           ("sampler_name", "euler"), ("scheduler", "simple"), ("denoise", 1.0)],
              {"model": (models, 0, "MODEL"), "positive": (pos, 0, "CONDITIONING"),
               "negative": (neg, 0, "CONDITIONING"), "latent_image": (latent, 0, "LATENT")}, ["LATENT"], col, row)
    image = g.add("VAEDecode", [], {"samples": (k, 0, "LATENT"), "vae": (models, 2, "VAE")}, ["IMAGE"], col + 1, row)
    if prefix:
        g.add("SaveImage", [("filename_prefix", prefix)], {"images": (image, 0, "IMAGE")}, [], col + 2, row)
    return image


def load_image(g, name, col, row):
    return g.add("LoadImage", [("image", name), (UPLOAD_BUTTON, "image")], {}, ["IMAGE", "MASK"], col, row)


def tryon(g, categories, products, prefix, row=0, col=0, layout="triptych_with_pose"):
    """Person photo -> pose -> mask(s) -> stitch with products and pose -> Flux Fill -> unstitch -> save.
    Also saves the real pose render and mask, which do not depend on the (tiny) model."""
    m = g.add("EditLabTinyModels", [("architecture", "flux_fill"), ("seed", 0)], outputs=["MODEL", "CLIP", "VAE"],
              col=col, row=row, title="Tiny Flux Fill (random weights)")
    person = load_image(g, "editlab_photo.png", col, row + 1)
    pose = g.add("EditLabPoseEstimate", [("allow_no_person", False)], {"image": (person, 0, "IMAGE")},
                 ["EDITLAB_POSE", "IMAGE", "STRING"], col + 1, row + 1)
    mask = None
    for category in categories:
        one = g.add("EditLabTryOnMask", [("category", category), ("grow", 4), ("feather", 4), ("keep_face", True),
                                         ("keep_hands", True)], {"pose": (pose, 0, "EDITLAB_POSE")}, ["MASK"],
                    col + 2, row + 1, title=f"Try-On Mask ({category})")
        mask = one if mask is None else g.add(
            "MaskComposite", [("x", 0), ("y", 0), ("operation", "add")],
            {"destination": (mask, 0, "MASK"), "source": (one, 0, "MASK")}, ["MASK"], col + 3, row + 1)
    product_inputs = {}
    for i, name in enumerate(products):
        image = load_image(g, name, col + 1, row + 2 + i)
        product_inputs["product" if i == 0 else f"product_{i + 1}"] = (image, 0, "IMAGE")
    stitched = g.add("EditLabTryOnStitch", [("layout", layout), ("height", 128)],
                     {"person": (person, 0, "IMAGE"), "mask": (mask, 0, "MASK"), **product_inputs,
                      "pose_image": (pose, 1, "IMAGE")}, ["IMAGE", "MASK", "EDITLAB_STITCH"], col + 4, row + 1)
    pos = text(g, m, "the person on the left wearing the product shown in the middle", row, col + 4)
    inpaint = g.add("InpaintModelConditioning", [("noise_mask", True)],
                    {"positive": (pos, 0, "CONDITIONING"), "negative": (pos, 0, "CONDITIONING"),
                     "vae": (m, 2, "VAE"), "pixels": (stitched, 0, "IMAGE"), "mask": (stitched, 1, "MASK")},
                    ["CONDITIONING", "CONDITIONING", "LATENT"], col + 5, row)
    k = g.add("KSampler", [("seed", 7), (SEED_CONTROL, "fixed"), ("steps", 8), ("cfg", 1.0),
                           ("sampler_name", "euler"), ("scheduler", "simple"), ("denoise", 1.0)],
              {"model": (m, 0, "MODEL"), "positive": (inpaint, 0, "CONDITIONING"),
               "negative": (inpaint, 1, "CONDITIONING"), "latent_image": (inpaint, 2, "LATENT")}, ["LATENT"],
              col + 6, row)
    decoded = g.add("VAEDecode", [], {"samples": (k, 0, "LATENT"), "vae": (m, 2, "VAE")}, ["IMAGE"], col + 7, row)
    final = g.add("EditLabTryOnUnstitch", [], {"generated": (decoded, 0, "IMAGE"),
                                               "stitch": (stitched, 2, "EDITLAB_STITCH"),
                                               "person": (person, 0, "IMAGE"), "mask": (mask, 0, "MASK")},
                  ["IMAGE"], col + 8, row)
    g.add("SaveImage", [("filename_prefix", f"{prefix}_result")], {"images": (final, 0, "IMAGE")}, [], col + 9, row)
    g.add("SaveImage", [("filename_prefix", f"{prefix}_pose")], {"images": (pose, 1, "IMAGE")}, [], col + 2,
          row + 2)
    mask_image = g.add("MaskToImage", [], {"mask": (mask, 0, "MASK")}, ["IMAGE"], col + 3, row + 2)
    g.add("SaveImage", [("filename_prefix", f"{prefix}_mask")], {"images": (mask_image, 0, "IMAGE")}, [], col + 4,
          row + 3)
    g.add("SaveImage", [("filename_prefix", f"{prefix}_canvas")], {"images": (stitched, 0, "IMAGE")}, [], col + 5,
          row + 3)


def expression_base(g, col=0, row=0):
    """Tiny SD1.5, the photo, its blendshapes (overlay saved) and an ARKit adapter trained in-graph on the input
    folder (for real use: an Expression Adapter Loader with your adapter file instead)."""
    m = g.add("EditLabTinyModels", [("architecture", "sd15"), ("seed", 0)], outputs=["MODEL", "CLIP", "VAE"],
              col=col, row=row, title="Tiny SD1.5 (random weights)")
    photo = load_image(g, "editlab_photo.png", col, row + 1)
    shapes = g.add("EditLabFaceBlendshapes", [("face_index", 0), ("allow_no_face", False)],
                   {"image": (photo, 0, "IMAGE")}, ["EDITLAB_BLENDSHAPES", "IMAGE", "STRING"], col + 1, row + 1)
    adapter = g.add("EditLabTrainExpressionAdapter",
                    [("folder", "."), ("prompt", "a photo of a face"), ("resolution", 64), ("steps", 10),
                     ("lr", 0.001), ("batch_size", 1), ("num_tokens", 2), ("seed", 0), ("name", "tiny_expression")],
                    {"model": (m, 0, "MODEL"), "clip": (m, 1, "CLIP"), "vae": (m, 2, "VAE")},
                    ["EDITLAB_EXPRESSION_ADAPTER", "STRING"], col + 1, row + 2)
    return m, photo, shapes, adapter


def expression_sample(g, m, model, prefix, col, row, prompt="a portrait photo of a person"):
    pos, neg = text(g, m, prompt, row, col), text(g, m, "", row + 1, col)
    latent = g.add("EmptyLatentImage", [("width", 64), ("height", 64), ("batch_size", 1)], {}, ["LATENT"], col,
                   row + 2)
    k = g.add("KSampler", [("seed", 3), (SEED_CONTROL, "fixed"), ("steps", 8), ("cfg", 3.0),
                           ("sampler_name", "euler"), ("scheduler", "simple"), ("denoise", 1.0)],
              {"model": (model, 0, "MODEL"), "positive": (pos, 0, "CONDITIONING"),
               "negative": (neg, 0, "CONDITIONING"), "latent_image": (latent, 0, "LATENT")}, ["LATENT"], col + 1,
              row)
    image = g.add("VAEDecode", [], {"samples": (k, 0, "LATENT"), "vae": (m, 2, "VAE")}, ["IMAGE"], col + 2, row)
    g.add("SaveImage", [("filename_prefix", prefix)], {"images": (image, 0, "IMAGE")}, [], col + 3, row)


def apply_expression(g, m, adapter, shapes, col, row, strength=1.0, model=None):
    return g.add("EditLabApplyExpression", [("strength", strength), ("start_percent", 0.0), ("end_percent", 1.0)],
                 {"model": (model or m, 0, "MODEL"), "adapter": (adapter, 0, "EDITLAB_EXPRESSION_ADAPTER"),
                  "blendshapes": (shapes, 0, "EDITLAB_BLENDSHAPES")}, ["MODEL"], col, row)


# -- workflows ------------------------------------------------------------------------------------------------
def tour():
    g = Graph()
    m = tiny(g)
    prompt = "a photo of a fox in the snow"
    pos, neg = text(g, m, prompt, 0), text(g, m, "", 1)
    latent = g.add("EmptySD3LatentImage", [("width", 64), ("height", 64), ("batch_size", 1)], {}, ["LATENT"], 1, 2)
    ksample_save(g, m, pos, neg, latent, "editlab_tour/flux", 2, 0)
    sae, direction = sae_and_direction(g, m, "editlab_tour_sae")
    smile = slider(g, m, pos, sae, direction, prompt, "fox", 1.0, 3, 3)
    ksample_save(g, m, smile, neg, latent, "editlab_tour/saedit_smiling_fox", 4, 3)
    tryon(g, ["upper"], ["editlab_product_tshirt.png"], "editlab_tour/tryon", row=6)
    photo = load_image(g, "editlab_photo.png", 0, 11)
    shapes = g.add("EditLabFaceBlendshapes", [("face_index", 0), ("allow_no_face", False)],
                   {"image": (photo, 0, "IMAGE")}, ["EDITLAB_BLENDSHAPES", "IMAGE", "STRING"], 1, 11)
    g.add("SaveImage", [("filename_prefix", "editlab_tour/blendshapes_overlay")], {"images": (shapes, 1, "IMAGE")},
          [], 2, 11)
    return g


def expression_from_photo():
    g = Graph()
    g.add("Note", [("text", TINY_NOTE)], row=5)
    m, photo, shapes, adapter = expression_base(g)
    g.add("SaveImage", [("filename_prefix", "expression/overlay")], {"images": (shapes, 1, "IMAGE")}, [], 2, 1)
    model = apply_expression(g, m, adapter, shapes, 2, 2)
    expression_sample(g, m, model, "expression/from_photo", 3, 0)
    return g


def expression_sliders():
    g = Graph()
    g.add("Note", [("text", TINY_NOTE)], row=5)
    m, photo, shapes, adapter = expression_base(g)
    edited = g.add("EditLabBlendshapeEdit", [("preset", "smile"), ("values", '{"jawOpen": 0.4, "eyeWideLeft": 0.3}'),
                                             ("symmetric", True), ("intensity", 1.0)],
                   {"blendshapes": (shapes, 0, "EDITLAB_BLENDSHAPES")}, ["EDITLAB_BLENDSHAPES"], 2, 1)
    model = apply_expression(g, m, adapter, edited, 2, 2)
    expression_sample(g, m, model, "expression/sliders", 3, 0)
    return g


def expression_reference_edit():
    g = Graph()
    g.add("Note", [("text", TINY_NOTE)], row=5)
    m, photo, shapes, adapter = expression_base(g)
    scaled = g.add("ImageScale", [("upscale_method", "bilinear"), ("width", 64), ("height", 64), ("crop", "center")],
                   {"image": (photo, 0, "IMAGE")}, ["IMAGE"], 1, 3)
    reference = g.add("EditLabReferenceAdapter", [("strength", 0.8)],
                      {"model": (m, 0, "MODEL"), "vae": (m, 2, "VAE"), "reference": (scaled, 0, "IMAGE")},
                      ["MODEL"], 2, 3)
    surprised = g.add("EditLabBlendshapeEdit", [("preset", "surprise"), ("values", "{}"), ("symmetric", True),
                                                ("intensity", 1.0)], {"blendshapes": (shapes, 0, "EDITLAB_BLENDSHAPES")},
                      ["EDITLAB_BLENDSHAPES"], 2, 1)
    model = apply_expression(g, m, adapter, surprised, 3, 3, model=reference)
    expression_sample(g, m, model, "expression/reference_edit", 4, 0)
    return g


def tryon_flux_fill():
    g = Graph()
    g.add("Note", [("text", TINY_NOTE)], row=4)
    tryon(g, ["upper"], ["editlab_product_tshirt.png"], "tryon/shirt")
    return g


def tryall_bag():
    g = Graph()
    g.add("Note", [("text", TINY_NOTE)], row=4)
    tryon(g, ["bag"], ["editlab_product_bag.png"], "tryon/bag", layout="side_by_side")
    return g


def tryon_outfit():
    g = Graph()
    g.add("Note", [("text", TINY_NOTE)], row=5)
    tryon(g, ["upper", "lower"], ["editlab_product_tshirt.png", "editlab_product_trousers.png"], "tryon/outfit")
    return g


def saedit_flux_slider_sweep():
    g = Graph()
    m = tiny(g)
    prompt = "a portrait of a man in a park"
    pos, neg = text(g, m, prompt, 0), text(g, m, "", 1)
    latent = g.add("EmptySD3LatentImage", [("width", 64), ("height", 64), ("batch_size", 1)], {}, ["LATENT"], 1, 2)
    sae, direction = sae_and_direction(g, m, "sweep_sae")
    images = []
    for i, strength in enumerate((-1.0, 0.0, 1.0, 2.0)):
        cond = slider(g, m, pos, sae, direction, prompt, "man", strength, 3, 4 + i)
        images.append(ksample_save(g, m, cond, neg, latent, None, 4, 4 + i))
    batch = images[0]
    for i, image in enumerate(images[1:]):
        batch = g.add("ImageBatch", [], {"image1": (batch, 0, "IMAGE"), "image2": (image, 0, "IMAGE")}, ["IMAGE"],
                      6, 4 + i)
    g.add("SaveImage", [("filename_prefix", "saedit/sweep_minus1_0_1_2")], {"images": (batch, 0, "IMAGE")}, [], 7, 5)
    return g


def saedit_sd35_slider():
    g = Graph()
    m = tiny(g, "sd3")
    prompt = "a portrait of a woman in a garden"
    pos, neg = text(g, m, prompt, 0), text(g, m, "", 1)
    latent = g.add("EmptySD3LatentImage", [("width", 64), ("height", 64), ("batch_size", 1)], {}, ["LATENT"], 1, 2)
    sae, direction = sae_and_direction(g, m, "sd35_sae")
    cond = slider(g, m, pos, sae, direction, prompt, "woman", 1.5, 3, 3)
    ksample_save(g, m, pos, neg, latent, "saedit/sd35_plain", 4, 0)
    ksample_save(g, m, cond, neg, latent, "saedit/sd35_smiling", 4, 3)
    return g


def saedit_train_sae():
    g = Graph()
    m = tiny(g)
    sae = g.add("EditLabSAETrain",
                [("prompts", "a man in a park\na woman on a beach\na dog in the snow"), ("prompts_file", ""),
                 ("generated_prompts", 1000), ("part", "auto"), ("dict_size", 512), ("top_k", 16),
                 ("matryoshka_groups", "64,64,128,256"), ("lr", 0.001), ("batch_size", 512), ("epochs", 4),
                 ("seed", 0), ("name", "trained_sae")],
                {"clip": (m, 1, "CLIP")}, ["EDITLAB_SAE", "STRING"], col=1, row=0)
    g.add("EditLabSAEDirection",
          [("pairs", "a man | a smiling man\na woman | a smiling woman\na baby | a smiling baby"),
           ("pairs_file", ""), ("part", "auto"), ("method", "svd"), ("percentile", 99.5),
           ("name", "trained_sae_smiling")],
          {"clip": (m, 1, "CLIP"), "sae": (sae, 0, "EDITLAB_SAE")}, ["EDITLAB_SAE_DIRECTION"], col=2, row=0)
    return g


def saedit_photo_edit():
    g = Graph()
    m = tiny(g)
    prompt = "a photo of an astronaut"
    load = g.add("LoadImage", [("image", "editlab_photo.png"), (UPLOAD_BUTTON, "image")], {}, ["IMAGE", "MASK"], 0, 3)
    scaled = g.add("ImageScale", [("upscale_method", "bilinear"), ("width", 64), ("height", 64), ("crop", "center")],
                   {"image": (load, 0, "IMAGE")}, ["IMAGE"], 0, 4)
    latent = g.add("VAEEncode", [], {"pixels": (scaled, 0, "IMAGE"), "vae": (m, 2, "VAE")}, ["LATENT"], 1, 4)
    pos = text(g, m, prompt, 0)
    sigmas = g.add("BasicScheduler", [("scheduler", "simple"), ("steps", 20), ("denoise", 1.0)],
                   {"model": (m, 0, "MODEL")}, ["SIGMAS"], 1, 5)
    inverted = g.add("EditLabFlowInversion", [("iterations", 10)],
                     {"model": (m, 0, "MODEL"), "conditioning": (pos, 0, "CONDITIONING"),
                      "latent": (latent, 0, "LATENT"), "sigmas": (sigmas, 0, "SIGMAS")}, ["NOISE", "LATENT"], 2, 4)
    sae, direction = sae_and_direction(g, m, "photo_sae", row=6)
    edited = slider(g, m, pos, sae, direction, prompt, "astronaut", 0.8, 3, 6)
    sampler = g.add("KSamplerSelect", [("sampler_name", "euler")], {}, ["SAMPLER"], 2, 5)
    for name, cond, row in (("reconstructed", pos, 3), ("smiling", edited, 6)):
        guider = g.add("BasicGuider", [], {"model": (m, 0, "MODEL"), "conditioning": (cond, 0, "CONDITIONING")},
                       ["GUIDER"], 4, row)
        out = g.add("SamplerCustomAdvanced", [],
                    {"noise": (inverted, 0, "NOISE"), "guider": (guider, 0, "GUIDER"),
                     "sampler": (sampler, 0, "SAMPLER"), "sigmas": (sigmas, 0, "SIGMAS"),
                     "latent_image": (latent, 0, "LATENT")}, ["LATENT", "LATENT"], 5, row)
        image = g.add("VAEDecode", [], {"samples": (out, 0, "LATENT"), "vae": (m, 2, "VAE")}, ["IMAGE"], 6, row)
        g.add("SaveImage", [("filename_prefix", f"saedit/photo_{name}")], {"images": (image, 0, "IMAGE")}, [],
              7, row)
    return g


WORKFLOWS = {"editlab_tour": tour, "saedit_flux_slider_sweep": saedit_flux_slider_sweep,
             "saedit_sd35_slider": saedit_sd35_slider, "saedit_train_sae": saedit_train_sae,
             "saedit_photo_edit": saedit_photo_edit, "tryon_flux_fill": tryon_flux_fill, "tryall_bag": tryall_bag,
             "tryon_outfit": tryon_outfit, "expression_from_photo": expression_from_photo,
             "expression_sliders": expression_sliders, "expression_reference_edit": expression_reference_edit}


def main():
    (ROOT / "workflows" / "api").mkdir(parents=True, exist_ok=True)
    for name, build in WORKFLOWS.items():
        g = build()
        (ROOT / "workflows" / f"{name}.json").write_text(json.dumps(g.ui(), indent=1) + "\n")
        (ROOT / "workflows" / "api" / f"{name}.json").write_text(json.dumps(g.api(), indent=1) + "\n")
        print(f"wrote workflows/{name}.json and workflows/api/{name}.json ({len(g.nodes)} nodes)")


if __name__ == "__main__":
    main()
