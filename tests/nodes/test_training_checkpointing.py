"""Gradient checkpointing in the shared trainer (models/checkpointing.py through models/training.py) on the tiny
SD1.5 (the host's UNet classes): the trainers' gradients with it equal those without (the expression adapter and the
reference LoRA, whose attention patches keep per-call state), the forward keeps a measured fraction of the activations
for backward, and after training every module of the network is as the host built it (its class's own forward)."""
import pytest
import torch

TOL = 1e-5


@pytest.fixture(scope="module")
def sd15(comfy_host):
    from editlab.models.tiny import build_tiny_models

    with torch.inference_mode():  # as the stock loaders give them: inference-tensor weights
        return build_tiny_models("sd15", 0)


@pytest.fixture(scope="module")
def sd15_plain(comfy_host):
    from editlab.models.tiny import build_tiny_models

    return build_tiny_models("sd15", 0)  # ordinary weights: a bare forward with autograd, outside the trainer


def _context(models, prompt="a photo of a face"):
    cond = models.clip.encode_from_tokens_scheduled(models.clip.tokenize(prompt))
    return cond[0][0], cond[0][1].get("pooled_output")


def _first_step_grads(params):
    """on_step collecting the gradients of the first step (on_step runs after the optimiser step, before the next
    zero_grad)."""
    got = []

    def on_step(step, steps, loss):
        if step == 1:
            got.extend(p.grad.detach().clone() for p in params)
    return got, on_step


def _own_forwards(net):
    """Modules whose forward is not their class's own (an instance attribute or a wrapper)."""
    return [name for name, m in net.named_modules()
            if "forward" in m.__dict__ or getattr(m.forward, "__func__", None) is not type(m).forward]


def _expression_grads(sd15, checkpointing):
    from editlab.models.expression.adapter import random_adapter
    from editlab.models.expression.patch import cross_attention_layers
    from editlab.models.expression.train import train_unet_adapter

    base = sd15.model.model
    layers = cross_attention_layers(base.diffusion_model)
    context, pooled = _context(sd15)
    adapter = random_adapter(52, 32, [a.to_q.weight.shape[0] for _, a in layers], 2, seed=0).train()
    params = [p for p in adapter.parameters() if p.requires_grad]
    got, on_step = _first_step_grads(params)
    gen = torch.Generator().manual_seed(1)
    latents, values = torch.randn(2, 4, 8, 8, generator=gen), torch.rand(2, 52, generator=gen)
    train_unet_adapter(base, adapter, layers, context, pooled, latents, values, 64, 1, 1e-3, 2, 0,
                       torch.device("cpu"), on_step=on_step, gradient_checkpointing=checkpointing)
    return got


def _reference_grads(sd15, checkpointing):
    from editlab.models.expression.adapter import random_adapter
    from editlab.models.expression.patch import cross_attention_layers, transformer_blocks
    from editlab.models.expression.reference import train_reference_lora
    from editlab.models.expression.reference_lora import ReferenceLoRA

    base = sd15.model.model
    net = base.diffusion_model
    adapter = random_adapter(52, 32, [a.to_q.weight.shape[0] for _, a in cross_attention_layers(net)], 2, seed=3)
    lora = ReferenceLoRA([(key, tb.attn1) for key, tb in transformer_blocks(net)], rank=2, seed=0)
    with torch.no_grad():  # a LoRA whose up weights start at zero would give the down weights no gradient
        for p in lora.lora_parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.1)
    params = list(lora.lora_parameters())
    got, on_step = _first_step_grads(params)
    gen = torch.Generator().manual_seed(0)
    latents, references = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    context, pooled = _context(sd15)
    train_reference_lora(base, adapter, lora, context, pooled, latents, references, torch.rand(2, 52, generator=gen),
                         64, steps=1, lr=1e-3, batch_size=2, seed=0, device=torch.device("cpu"), on_step=on_step,
                         gradient_checkpointing=checkpointing)
    return got


@pytest.mark.parametrize("trainer", [_expression_grads, _reference_grads], ids=["expression", "reference_lora"])
def test_checkpointed_gradients_equal_the_plain_ones_and_the_network_is_restored(sd15, trainer):
    net = sd15.model.model.diffusion_model
    assert _own_forwards(net) == []
    modules = [(n, type(m)) for n, m in net.named_modules()]
    stored = {k: v.clone() for k, v in net.state_dict().items()}
    plain = trainer(sd15, False)
    ckpt = trainer(sd15, True)
    assert len(plain) == len(ckpt) > 0
    assert any(float(g.abs().max()) > 0 for g in plain)
    for a, b in zip(plain, ckpt):
        assert torch.allclose(a, b, rtol=TOL, atol=TOL), float((a - b).abs().max())
    # exactly as before: no wrapper or instance forward left, the same modules, the same weights
    assert _own_forwards(net) == []
    assert [(n, type(m)) for n, m in net.named_modules()] == modules
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in stored.items())


def _saved_bytes(sd15, checkpointing):
    """Bytes (distinct storages) autograd saves for backward in one training forward through the tiny UNet with the
    expression adapter trainable."""
    from editlab.models.checkpointing import unet_checkpointing, unet_layers
    from editlab.models.expression.adapter import random_adapter
    from editlab.models.expression.patch import ExpressionAttentionPatch, cross_attention_layers
    from editlab.models.frozen import frozen_for_autograd
    from editlab.models.training import raw_predictor

    base = sd15.model.model
    net = base.diffusion_model
    layers = cross_attention_layers(net)
    adapter = random_adapter(52, 32, [a.to_q.weight.shape[0] for _, a in layers], 2, seed=0).train()
    patch = ExpressionAttentionPatch(adapter, torch.rand(2, 52), 1.0, layers, float("inf"), 0.0)
    patch.training = True  # as train_adapter sets it
    context, pooled = _context(sd15)
    predict = raw_predictor(base, context, pooled, 64, torch.device("cpu"),
                            {"patches": {"attn2_patch": [patch.input_hook], "attn2_output_patch": [patch.output_hook]},
                             "cond_or_uncond": [0]})
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode(False), torch.enable_grad(), frozen_for_autograd(net), \
            unet_checkpointing(net, checkpointing) as wrapped:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = predict(x, base.model_sampling.sigmas[500:501].expand(2))
    assert out.requires_grad
    assert wrapped == (len(unet_layers(net)) if checkpointing else 0) and len(unet_layers(net)) > 5
    return sum(storages.values())


def test_checkpointing_drops_the_saved_activations(sd15_plain):
    plain, ckpt = _saved_bytes(sd15_plain, False), _saved_bytes(sd15_plain, True)
    print(f"saved for backward: plain {plain} B, checkpointed {ckpt} B, factor {plain / max(ckpt, 1):.1f}")
    assert ckpt * 4 < plain, (plain, ckpt)


def _flux_tova_grads(nodes, flux, folder, checkpointing, monkeypatch):
    """The first step's gradients of ToVA Train on the tiny Flux (the text stream's values in the double blocks), the
    node run as the server runs it; the shared trainer's on_step reads them."""
    from editlab.models.conceptsplit import train as tova_train

    got = []
    original = getattr(tova_train.train_tova, "original", tova_train.train_tova)

    def train_tova(base, adapter, *args, on_step=None, **kwargs):
        params = [p for p in adapter.parameters() if p.requires_grad]

        def grab(step, steps, loss):
            if step == 1:
                got.extend(p.grad.detach().clone() for p in params)
        return original(base, adapter, *args, on_step=grab, **kwargs)

    train_tova.original = original
    monkeypatch.setattr(tova_train, "train_tova", train_tova)  # the node imports it from there at each call
    with torch.inference_mode():
        nodes.EditLabToVATrain.execute(model=flux.model, clip=flux.clip, vae=flux.vae, folder=folder,
                                       prompt="a photo of a cat", word="cat", resolution=64, rank=2, steps=1, lr=1e-3,
                                       batch_size=2, seed=0, name=f"flux_ckpt_{checkpointing}", overwrite=True,
                                       gradient_checkpointing=checkpointing)
    return got


def test_flux_tova_training_checkpoints_each_block_with_the_same_gradients(comfy_host, tmp_path, monkeypatch):
    """ToVA Train on Flux runs every double and single block under the block checkpointing Layered Edit Train uses
    (the host's block replacement): the same first-step gradients as without, the blocks actually replaced, and the
    network as the host built it afterwards."""
    import folder_paths
    from PIL import Image
    from skimage import data

    from editlab.models import checkpointing
    from editlab.models.tiny import build_tiny_models
    from editlab.nodes import conceptsplit

    folder_paths.folder_names_and_paths[conceptsplit.TOVA_FOLDER] = ([str(tmp_path)], {".safetensors"})
    monkeypatch.setattr(conceptsplit, "tova_dir", tmp_path, raising=False)
    (tmp_path / "input" / "cat").mkdir(parents=True)
    Image.fromarray(data.chelsea()).save(tmp_path / "input" / "cat" / "a.png")
    Image.fromarray(data.chelsea()[:, ::-1].copy()).save(tmp_path / "input" / "cat" / "b.png")
    old = folder_paths.get_input_directory()
    folder_paths.set_input_directory(str(tmp_path / "input"))
    with torch.inference_mode():
        flux = build_tiny_models("flux", 0)
    net = flux.model.model.diffusion_model
    stored = {k: v.clone() for k, v in net.state_dict().items()}
    blocks = []
    run = checkpointing.BlockTraining._run
    monkeypatch.setattr(checkpointing.BlockTraining, "_run",
                        lambda self, *a: blocks.append(self.checkpoint) or run(self, *a))
    try:
        plain = _flux_tova_grads(conceptsplit, flux, "cat", False, monkeypatch)
        assert blocks == []
        ckpt = _flux_tova_grads(conceptsplit, flux, "cat", True, monkeypatch)
    finally:
        folder_paths.set_input_directory(old)
    n_blocks = len(net.double_blocks) + len(net.single_blocks)
    assert blocks and all(blocks) and len(blocks) % n_blocks == 0, (len(blocks), n_blocks)
    assert len(plain) == len(ckpt) > 0 and any(float(g.abs().max()) > 0 for g in plain)
    for a, b in zip(plain, ckpt):
        assert torch.allclose(a, b, rtol=TOL, atol=TOL), float((a - b).abs().max())
    assert _own_forwards(net) == []
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in stored.items())
