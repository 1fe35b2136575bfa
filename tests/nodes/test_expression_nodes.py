"""Expression nodes: blendshapes from a real face, and the adapter in the authors' layout on the tiny SD1.5."""
import json

import numpy as np
import pytest
import torch
from skimage import data


@pytest.fixture(scope="module")
def nodes(comfy_host, tmp_path_factory):
    import folder_paths

    from editlab.nodes import expression

    folder = tmp_path_factory.mktemp("expression_adapters")
    folder_paths.folder_names_and_paths[expression.ADAPTER_FOLDER] = ([str(folder)], {".safetensors", ".bin", ".pt"})
    expression.adapter_dir = folder
    return expression


@pytest.fixture(scope="module")
def sd15(comfy_host):
    from editlab.models.tiny import build_tiny_models

    return build_tiny_models("sd15", 0)


from expression_files import CONTEXT, DIFFUSERS_CROSS_ATTENTION, FLAME, TOKENS, diffusers_ip_adapter  # noqa: E402,F401


@pytest.fixture(scope="module")
def authors_file(nodes, sd15):
    """The authors' exp_adapter.bin layout (FLAME-55), sized for the tiny SD1.5, pickled as torch.save writes it."""
    data, _ = diffusers_ip_adapter()
    torch.save(data, nodes.adapter_dir / "exp_adapter.bin")
    return "exp_adapter.bin"


def _patch_of(model):
    """The expression patch Apply Expression installed on ``model`` (its attn2 output hook's owner)."""
    return model.model_options["transformer_options"]["patches"]["attn2_output_patch"][-1].owner


def test_authors_layout_maps_each_key_to_its_unet_layer(nodes, sd15, authors_file):
    data, by_name = diffusers_ip_adapter()
    adapter, = nodes.EditLabExpressionAdapterLoader.execute(adapter_name=authors_file).result
    model, = nodes.EditLabApplyExpression.execute(model=sd15.model, adapter=adapter, blendshapes=_flame(nodes),
                                                  strength=1.0, start_percent=0.0, end_percent=1.0).result
    patch = _patch_of(model)
    net = adapter.adapter
    assert sorted(patch.layers) == sorted((block, 0) for _, block, _ in DIFFUSERS_CROSS_ATTENTION)
    for name, block, _ in DIFFUSERS_CROSS_ATTENTION:
        i, attn = patch.layers[(block, 0)]
        k, v = by_name[name]
        assert torch.equal(net.to_k_ip[i].weight, k) and torch.equal(net.to_v_ip[i].weight, v), (name, block)
        assert net.to_k_ip[i].weight.shape[0] == attn.to_q.weight.shape[0]
    # the projection: tokens = LayerNorm(proj(x) as (tokens, width)), as diffusers' ImageProjection computes them
    x = torch.from_numpy(_flame(nodes).values)[None]
    proj = data["image_proj"]
    rows = (x @ proj["proj.weight"].T + proj["proj.bias"]).reshape(1, TOKENS, CONTEXT)
    by_hand = torch.nn.functional.layer_norm(rows, (CONTEXT,), proj["norm.weight"], proj["norm.bias"])
    assert torch.allclose(net.tokens(x), by_hand, atol=1e-6)


def test_face_blendshapes_node_on_a_real_photo(nodes):
    image = torch.from_numpy(data.astronaut()).float()[None] / 255
    shapes, overlay, text = nodes.EditLabFaceBlendshapes.execute(image=image, face_index=0,
                                                                 allow_no_face=False).result
    info = json.loads(text)
    assert info["values"]["mouthSmileLeft"] > 0.5 and info["faces"] == 1
    assert overlay.shape == image.shape and not torch.equal(overlay, image)
    from editlab.nodes.common import EditLabInputError

    with pytest.raises(EditLabInputError, match="input 'face_index': expected a face index below the 1 face"):
        nodes.EditLabFaceBlendshapes.execute(image=image, face_index=1, allow_no_face=False)
    coffee = torch.from_numpy(data.coffee()).float()[None] / 255
    with pytest.raises(EditLabInputError, match="input 'image'.*none was found"):
        nodes.EditLabFaceBlendshapes.execute(image=coffee, face_index=0, allow_no_face=False)
    neutral, _, _ = nodes.EditLabFaceBlendshapes.execute(image=coffee, face_index=0, allow_no_face=True).result
    assert not neutral.values.any()


def _flame(nodes, jaw=0.3):
    return nodes.EditLabFLAMEExpression.execute(expression="1.0, -0.5, 2", eyelid_left=0.2, eyelid_right=0.2,
                                                jaw_open=jaw, jaw_yaw=0.0, jaw_roll=0.0).result[0]


def _run(model, cond, uncond, cfg=3.0, record=None):
    import comfy.sample

    latent = torch.zeros(1, 4, 8, 8)
    if record is not None:
        model = model.clone()
        model.set_model_attn2_output_patch(record)
    return comfy.sample.sample(model, comfy.sample.prepare_noise(latent, 5), 3, cfg, "euler", "simple", cond,
                               uncond, latent, disable_pbar=True)


@pytest.fixture(scope="module")
def conds(sd15):
    clip = sd15.clip
    return (clip.encode_from_tokens_scheduled(clip.tokenize("a portrait of a woman")),
            clip.encode_from_tokens_scheduled(clip.tokenize("")))


def test_authors_layout_loads_and_strength_zero_runs_the_patch_and_is_the_base_model(nodes, sd15, authors_file,
                                                                                     conds):
    adapter, = nodes.EditLabExpressionAdapterLoader.execute(adapter_name=authors_file).result
    assert adapter.input == "flame55" and adapter.format == "authors" and adapter.adapter.layers == 7
    same, = nodes.EditLabApplyExpression.execute(model=sd15.model, adapter=adapter, blendshapes=_flame(nodes),
                                                 strength=0.0, start_percent=0.0, end_percent=1.0).result
    net, calls = adapter.adapter, []
    attention = net.attention
    net.attention = lambda *a: calls.append(a[0]) or attention(*a)  # the adapter's decoupled attention, counted
    try:
        out = _run(same, *conds)
    finally:
        del net.attention
    # 3 steps, cond and uncond in one batch: every layer's decoupled attention ran each step, and added nothing
    assert sorted(set(calls)) == list(range(7)) and len(calls) == 3 * 7
    assert torch.equal(out, _run(sd15.model, *conds))
    moved, = nodes.EditLabApplyExpression.execute(model=sd15.model, adapter=adapter, blendshapes=_flame(nodes),
                                                  strength=1.0, start_percent=0.0, end_percent=1.0).result
    assert not torch.equal(_run(moved, *conds), _run(sd15.model, *conds))


def _first_layer_outputs(nodes, sd15, adapter, shapes, strength, conds):
    """The first cross-attention layer's output (cond and uncond rows) at the first step."""
    seen = {}

    def record(out, extra):
        if extra.get("block") == ("input", 1) and "first" not in seen:
            seen["first"] = (out.clone(), list(extra["cond_or_uncond"]))
        return out

    model, = nodes.EditLabApplyExpression.execute(model=sd15.model, adapter=adapter, blendshapes=shapes,
                                                  strength=strength, start_percent=0.0, end_percent=1.0).result
    _run(model, *conds, record=record)
    out, order = seen["first"]
    chunks = out.chunk(len(order))
    return {("cond" if c == 0 else "uncond"): chunk for c, chunk in zip(order, chunks)}


def test_cross_attention_moves_monotonically_and_uncond_ignores_the_expression(nodes, sd15, authors_file, conds):
    adapter, = nodes.EditLabExpressionAdapterLoader.execute(adapter_name=authors_file).result
    base = _first_layer_outputs(nodes, sd15, adapter, _flame(nodes), 1e-9, conds)
    moves = []
    for s in (0.25, 0.5, 1.0, 2.0):
        out = _first_layer_outputs(nodes, sd15, adapter, _flame(nodes), s, conds)
        moves.append(float((out["cond"] - base["cond"]).norm()))
    assert moves == sorted(moves) and moves[0] > 0
    a = _first_layer_outputs(nodes, sd15, adapter, _flame(nodes, jaw=0.4), 1.0, conds)
    b = _first_layer_outputs(nodes, sd15, adapter, _flame(nodes, jaw=-0.4), 1.0, conds)
    assert not torch.equal(a["cond"], b["cond"])
    assert torch.equal(a["uncond"], b["uncond"]), "the unconditional branch sees zeros, whatever the expression"


def test_bad_inputs(nodes, sd15, authors_file):
    from editlab.nodes.common import EditLabInputError

    adapter, = nodes.EditLabExpressionAdapterLoader.execute(adapter_name=authors_file).result
    arkit, = nodes.EditLabBlendshapeEdit.execute(preset="smile", values="{}", symmetric=True, intensity=1.0).result
    with pytest.raises(EditLabInputError, match="input 'blendshapes': expected 55-d blendshapes.*got '52-d"):
        nodes.EditLabApplyExpression.execute(model=sd15.model, adapter=adapter, blendshapes=arkit, strength=1.0,
                                             start_percent=0.0, end_percent=1.0)
    (nodes.adapter_dir / "corrupt.bin").write_bytes(b"not a pickle at all")
    with pytest.raises(EditLabInputError, match="input 'adapter_name': expected an expression adapter file"):
        nodes.EditLabExpressionAdapterLoader.execute(adapter_name="corrupt.bin")
    torch.save({"weights": torch.zeros(2)}, nodes.adapter_dir / "other.bin")
    with pytest.raises(EditLabInputError, match="'image_proj' and 'ip_adapter'"):
        nodes.EditLabExpressionAdapterLoader.execute(adapter_name="other.bin")
    with pytest.raises(EditLabInputError, match="input 'values'"):
        nodes.EditLabBlendshapeEdit.execute(preset="smile", values="{bad json", symmetric=True, intensity=1.0)
    from editlab.models.tiny import build_tiny_models

    sdxl = build_tiny_models("sdxl", 0)
    # the tiny SDXL has as many layers as the tiny SD1.5, but a 64-wide text context
    with pytest.raises(EditLabInputError, match="input 'adapter': expected tokens as wide as this model's text"):
        nodes.EditLabApplyExpression.execute(model=sdxl.model, adapter=adapter, blendshapes=_flame(nodes),
                                             strength=1.0, start_percent=0.0, end_percent=1.0)


def test_reference_adapter_zero_is_base_and_pulls_towards_the_reference(nodes, sd15, conds):
    base_a = _run(sd15.model, *conds)  # seed 5: the image that becomes the reference
    reference = sd15.vae.decode(base_a)
    ref_latent = sd15.vae.encode(reference)
    same, = nodes.EditLabReferenceAdapter.execute(model=sd15.model, vae=sd15.vae, reference=reference,
                                                  strength=0.0).result
    assert same is not sd15.model  # strength 0 runs the patched path, and equals the base model
    import comfy.sample

    latent = torch.zeros(1, 4, 8, 8)

    def run(model, seed):
        return comfy.sample.sample(model, comfy.sample.prepare_noise(latent, seed), 3, 3.0, "euler", "simple",
                                   *conds, latent, disable_pbar=True)

    assert torch.equal(run(same, 2), run(sd15.model, 2))

    half, = nodes.EditLabReferenceAdapter.execute(model=sd15.model, vae=sd15.vae, reference=reference,
                                                  strength=0.5).result
    full, = nodes.EditLabReferenceAdapter.execute(model=sd15.model, vae=sd15.vae, reference=reference,
                                                  strength=1.0).result
    for seed in (2, 3, 4):  # other images move towards the reference, more with more strength
        plain = float((run(sd15.model, seed) - ref_latent).norm())
        d_half, d_full = (float((run(m, seed) - ref_latent).norm()) for m in (half, full))
        assert d_full < d_half < plain, (seed, plain, d_half, d_full)


def test_training_lowers_the_loss_and_the_file_reads_back_identically(nodes, conds, tmp_path):
    import os

    import folder_paths
    import matplotlib
    from PIL import Image

    faces = tmp_path / "input" / "faces"
    faces.mkdir(parents=True)
    astronaut = Image.fromarray(data.astronaut())
    grace = Image.open(os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")).convert("RGB")
    astronaut.save(faces / "a.png")
    wide = Image.new("RGB", (1100, 512))  # a wide photo: trained on the face's square, not squashed whole
    wide.paste(astronaut.transpose(Image.FLIP_LEFT_RIGHT), (500, 0))
    wide.save(faces / "b.png")
    grace.save(faces / "c.png")
    Image.fromarray(data.coffee()).save(faces / "no_face.png")
    old = folder_paths.get_input_directory()
    folder_paths.set_input_directory(str(tmp_path / "input"))
    from editlab.models.tiny import build_tiny_models

    with torch.inference_mode():  # as the server runs every node, the model's loader included
        sd15 = build_tiny_models("sd15", 0)
    try:
        with torch.inference_mode():
            adapter, text = nodes.EditLabTrainExpressionAdapter.execute(
                model=sd15.model, clip=sd15.clip, vae=sd15.vae, folder="faces", prompt="a photo of a face",
                resolution=64, steps=40, lr=3e-3, batch_size=2, num_tokens=2, seed=0, name="trained").result
        from editlab.nodes.common import EditLabInputError

        with pytest.raises(EditLabInputError, match="input 'folder'"):
            nodes.EditLabTrainExpressionAdapter.execute(
                model=sd15.model, clip=sd15.clip, vae=sd15.vae, folder="../..", prompt="x", resolution=64, steps=1,
                lr=1e-3, batch_size=1, num_tokens=1, seed=0, name="never")
    finally:
        folder_paths.set_input_directory(old)
    stats = json.loads(text)
    assert stats["images"] == 3 and stats["skipped"] == ["no_face.png"]
    x0, y0, side = stats["crops"]["b.png"]
    assert 500 <= x0 and x0 + side <= 1012 and side < 512  # the square round the face, inside the pasted photo
    assert stats["loss_after"] < stats["loss_before"], stats
    loaded, = nodes.EditLabExpressionAdapterLoader.execute(adapter_name="trained.safetensors").result
    assert loaded.input == "arkit52"
    smile, = nodes.EditLabBlendshapeEdit.execute(preset="smile", values="{}", symmetric=True, intensity=1.0).result
    outs = []
    for a in (adapter, loaded):
        m, = nodes.EditLabApplyExpression.execute(model=sd15.model, adapter=a, blendshapes=smile, strength=1.0,
                                                  start_percent=0.0, end_percent=1.0).result
        outs.append(_run(m, *conds))
    assert torch.equal(outs[0], outs[1])


def _sample(model, conds, seed=2):
    import comfy.sample

    latent = torch.zeros(1, 4, 8, 8)
    return comfy.sample.sample(model, comfy.sample.prepare_noise(latent, seed), 3, 3.0, "euler", "simple", *conds,
                               latent, disable_pbar=True)


def test_stage_two_trains_the_reference_lora_only_and_the_file_reads_back(nodes, conds, tmp_path):
    """The paper's second stage: the LoRA's loss goes down; the expression adapter (frozen) and the shared MODEL
    stay bit-identical; the saved LoRA, loaded back, gives the same images as the trained one; 'trained LoRA' differs
    from the training-free mode, which stays the default."""
    import folder_paths
    from PIL import Image

    from editlab.models.expression.adapter import LoadedAdapter, random_adapter
    from editlab.models.expression.patch import cross_attention_layers
    from editlab.models.tiny import build_tiny_models

    faces = tmp_path / "input" / "faces"
    faces.mkdir(parents=True)
    Image.fromarray(data.astronaut()).save(faces / "a.png")
    Image.fromarray(_rgb_grace()).save(faces / "b.png")
    old = folder_paths.get_input_directory()
    folder_paths.set_input_directory(str(tmp_path / "input"))
    folder = tmp_path / "loras"
    folder_paths.folder_names_and_paths[nodes.REFERENCE_LORA_FOLDER] = ([str(folder)], {".safetensors"})
    with torch.inference_mode():  # as the server runs every node
        sd15 = build_tiny_models("sd15", 0)
        dims = [a.to_q.weight.shape[0] for _, a in cross_attention_layers(sd15.model.model.diffusion_model)]
    with torch.inference_mode(False):
        stage1 = LoadedAdapter(random_adapter(52, 32, dims, 2, seed=3), "stage1", "arkit52", "editlab")
    adapter_before = {k: v.clone() for k, v in stage1.adapter.state_dict().items()}
    params = {k: v.clone() for k, v in sd15.model.model.state_dict().items()}
    flags = {k: (p.requires_grad, p.is_inference()) for k, p in sd15.model.model.named_parameters()}
    plain = _sample(sd15.model, conds)
    try:
        with torch.inference_mode():
            lora, text = nodes.EditLabTrainReferenceLoRA.execute(
                model=sd15.model, clip=sd15.clip, vae=sd15.vae, adapter=stage1, folder="faces",
                prompt="a photo of a face", resolution=64, steps=30, lr=5e-3, batch_size=2, rank=4, seed=0,
                name="ref_lora").result
    finally:
        folder_paths.set_input_directory(old)
    stats = json.loads(text)
    assert stats["loss_after"] < stats["loss_before"], stats
    assert all(torch.equal(v, stage1.adapter.state_dict()[k]) for k, v in adapter_before.items())
    after = sd15.model.model.state_dict()
    assert all(torch.equal(params[k], after[k]) for k in params)
    assert {k: (p.requires_grad, p.is_inference()) for k, p in sd15.model.model.named_parameters()} == flags
    assert torch.equal(_sample(sd15.model, conds), plain)
    assert any(v.abs().sum() > 0 for k, v in lora.tensors.items() if "lora_B" in k)  # it learnt something

    loaded, = nodes.EditLabReferenceLoRALoader.execute(lora_name="ref_lora.safetensors").result
    reference = torch.from_numpy(data.astronaut()[::8, ::8].copy()).float()[None] / 255
    outs = {}
    for label, kw in (("trained", dict(mode="trained LoRA", lora=lora)),
                      ("loaded", dict(mode="trained LoRA", lora=loaded)), ("free", {})):
        with torch.inference_mode():  # as the server runs nodes
            m, = nodes.EditLabReferenceAdapter.execute(model=sd15.model, vae=sd15.vae, reference=reference,
                                                       strength=1.0, **kw).result
            outs[label] = _sample(m, conds)
    assert torch.equal(outs["trained"], outs["loaded"])
    assert not torch.equal(outs["trained"], outs["free"])
    from editlab.nodes.common import EditLabInputError

    with pytest.raises(EditLabInputError, match="input 'lora': expected a reference LoRA connected"):
        nodes.EditLabReferenceAdapter.execute(model=sd15.model, vae=sd15.vae, reference=reference, strength=1.0,
                                              mode="trained LoRA")


def _rgb_grace():
    import os

    import matplotlib
    from PIL import Image

    with Image.open(os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")) as im:
        return np.asarray(im.convert("RGB"))


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp8_e4m3fn"])
def test_trained_reference_lora_on_half_precision_and_fp8_weights(nodes, dtype):
    """The LoRA keeps float32 whatever the UNet's storage, acts (the image moves from the training-free mode) and
    leaves the stored weights as they were."""
    from editlab.models.expression.patch import transformer_blocks
    from editlab.models.expression.reference_lora import ReferenceLoRA, ReferenceLoRAWeights
    from editlab.models.tiny import build_tiny_models

    models = build_tiny_models("sd15", 0, dtype)
    blocks = transformer_blocks(models.model.model.diffusion_model)
    lora = ReferenceLoRA([(key, tb.attn1) for key, tb in blocks], rank=2, seed=0)
    assert all(p.dtype == torch.float32 for p in lora.lora_parameters())
    gen = torch.Generator().manual_seed(1)
    state = {k: (torch.randn(v.shape, generator=gen) * 0.5 if "lora_B" in k else v) for k, v in lora.state().items()}
    weights = ReferenceLoRAWeights(state, 2, 2.0, "synthetic")
    clip = models.clip
    conds = (clip.encode_from_tokens_scheduled(clip.tokenize("a face")),
             clip.encode_from_tokens_scheduled(clip.tokenize("")))
    stored = {k: v.clone() for k, v in models.model.model.diffusion_model.state_dict().items()}
    reference = torch.from_numpy(data.astronaut()[::8, ::8].copy()).float()[None] / 255
    outs = {}
    with torch.inference_mode():
        for label, kw in (("free", {}), ("trained", dict(mode="trained LoRA", lora=weights))):
            m, = nodes.EditLabReferenceAdapter.execute(model=models.model, vae=models.vae, reference=reference,
                                                       strength=1.0, **kw).result
            outs[label] = _sample(m, conds)
    assert torch.isfinite(outs["trained"]).all() and not torch.equal(outs["trained"], outs["free"])
    after = models.model.model.diffusion_model.state_dict()
    assert all(torch.equal(stored[k].float(), after[k].float()) and stored[k].dtype == after[k].dtype for k in stored)


def test_the_adapters_host_model_lives_as_long_as_the_adapter(nodes, sd15, authors_file, conds):
    """The host (``comfy.model_management``) keeps weak references to what it loaded and counts a module whose
    wrapper died while the module lives on as a leak: every later model load then runs a full garbage collection
    (``cleanup_models_gc``). A loader's cached output outlives each Apply Expression's MODEL, so the adapter's wrapper
    must live with the adapter: after two applied models were sampled and dropped, the host finds no leak."""
    import gc

    import comfy.model_management as mm

    adapter, = nodes.EditLabExpressionAdapterLoader.execute(adapter_name=authors_file).result
    for strength in (0.5, 1.0):
        moved, = nodes.EditLabApplyExpression.execute(model=sd15.model, adapter=adapter, blendshapes=_flame(nodes),
                                                      strength=strength, start_percent=0.0, end_percent=1.0).result
        _run(moved, *conds)
        del moved
    gc.collect()
    loaded = [m for m in mm.current_loaded_models if m.real_model() is adapter.adapter]
    assert loaded, "sampling loads the adapter as a host model"
    assert not [m for m in mm.current_loaded_models if m.is_dead()], "the host would see a leaked model"


def test_a_trained_adapter_is_freed_with_its_outputs(nodes, tmp_path):
    """Training runs with gradient checkpointing, whose recomputations keep each layer's transformer options; those
    hold the layer's activations (the patches' kept inputs), so the saved graph and the options formed a cycle
    Python's collector cannot see: after training, the graph, the training patch and the adapter stayed alive for
    good, and the host took the adapter for a leaked model (a full garbage collection at every later model load).
    Here the adapter trained by the node, applied and sampled, is freed once nothing holds the outputs."""
    import gc
    import weakref

    import comfy.model_management as mm
    import folder_paths
    from PIL import Image

    from editlab.models.tiny import build_tiny_models

    faces = tmp_path / "input" / "faces"
    faces.mkdir(parents=True)
    Image.fromarray(data.astronaut()).save(faces / "a.png")
    old = folder_paths.get_input_directory()
    folder_paths.set_input_directory(str(tmp_path / "input"))
    try:
        with torch.inference_mode():  # as the server runs every node
            sd15 = build_tiny_models("sd15", 0)
            adapter, _ = nodes.EditLabTrainExpressionAdapter.execute(
                model=sd15.model, clip=sd15.clip, vae=sd15.vae, folder="faces", prompt="a photo of a face",
                resolution=64, steps=2, lr=3e-3, batch_size=2, num_tokens=2, seed=0, name="freed",
                gradient_checkpointing=True).result
            smile, = nodes.EditLabBlendshapeEdit.execute(preset="smile", values="{}", symmetric=True,
                                                         intensity=1.0).result
            moved, = nodes.EditLabApplyExpression.execute(model=sd15.model, adapter=adapter, blendshapes=smile,
                                                          strength=1.0, start_percent=0.0, end_percent=1.0).result
            clip = sd15.clip
            _run(moved, clip.encode_from_tokens_scheduled(clip.tokenize("a face")),
                 clip.encode_from_tokens_scheduled(clip.tokenize("")))
    finally:
        folder_paths.set_input_directory(old)
    net = weakref.ref(adapter.adapter)
    del adapter, moved
    gc.collect()
    assert net() is None, "the trained adapter outlived every output that held it"
    assert not [m for m in mm.current_loaded_models if m.is_dead()], "the host would see a leaked model"
