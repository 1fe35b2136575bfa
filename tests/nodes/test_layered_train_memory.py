"""Layered Edit Train at Flux size, checked on the tiny Flux (the host's classes): gradient checkpointing per block
gives the gradients of the plain forward, keeps far fewer activations for backward and copies none; the saves the
host's in-place residual adds overwrite are the only ones copied in the plain forward; the encoded pairs stay on the
CPU whatever the compute device."""
import pytest
import torch

from .test_layered_adapters import flux, layered  # noqa: F401 - fixtures
from .test_layered_train import RES, flux_lora_case, pairs_folder  # noqa: F401 - fixtures

pytestmark = pytest.mark.usefixtures("server_mode")


def _lora_forward(layered, flux, checkpoint, observe=None):  # noqa: F811
    """LoRA gradients (name -> tensors) of one loss through the host's Flux with the training forward, and what the
    forward saved for backward (tensor bytes, copied or not) when ``observe`` collects it."""
    from editlab.models.frozen import frozen_for_autograd
    from editlab.models.layered import blocks

    with flux_lora_case(flux) as (base, layers, forward):
        options, saves = layered.training_forward(base, checkpoint)
        with torch.enable_grad(), frozen_for_autograd(base.diffusion_model), saves:
            if observe is not None:
                blocks.SAVE_OBSERVERS.append(observe)
            try:
                loss = forward(options).pow(2).sum()
            finally:
                if observe is not None:
                    blocks.SAVE_OBSERVERS.remove(observe)
            loss.backward()
        grads = {name: [p.grad.clone() for p in layer.parameters() if p.requires_grad]
                 for name, layer in layers.items()}
        return grads, float(loss)


def test_checkpointed_gradients_equal_the_plain_ones(layered, flux):  # noqa: F811
    plain, loss_plain = _lora_forward(layered, flux, False)
    ckpt, loss_ckpt = _lora_forward(layered, flux, True)
    assert loss_plain == loss_ckpt
    assert plain.keys() == ckpt.keys() and len(plain) > 10
    assert any("single_blocks" in n for n in plain) and any("double_blocks" in n for n in plain)
    for name in plain:
        # every LoRA layer gets a gradient (its up matrix: the down one starts at zero gradient as up starts at 0),
        # the first block's included
        assert any(a.abs().sum() > 0 for a in plain[name]), name
        for a, b in zip(plain[name], ckpt[name]):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7, msg=name)


def _saved(layered, flux, checkpoint):  # noqa: F811
    seen = []

    def observe(t, copied):
        if t.ndim >= 3 and not isinstance(t, torch.nn.Parameter):  # activations, not weights
            seen.append((t.numel() * t.element_size(), copied))

    _lora_forward(layered, flux, checkpoint, observe)
    return sum(b for b, _ in seen), sum(b for b, c in seen if c), len(seen)


def test_checkpointing_keeps_fewer_activations_and_copies_none(layered, flux):  # noqa: F811
    plain_bytes, plain_copied, plain_n = _saved(layered, flux, False)
    ckpt_bytes, ckpt_copied, ckpt_n = _saved(layered, flux, True)
    dm = flux.model.model.diffusion_model
    blocks = len(dm.double_blocks) + len(dm.single_blocks)
    # checkpointed: each block keeps its inputs only (streams, modulation, positions), nothing from inside it
    assert ckpt_bytes < 0.25 * plain_bytes, (ckpt_bytes, plain_bytes)
    assert ckpt_n < plain_n / 4, (ckpt_n, plain_n)
    assert ckpt_copied == 0
    # plain: only the saves the in-place residual adds overwrite are copied (the LayerNorm inputs), not the rest
    assert 0 < plain_copied < 0.25 * plain_bytes, (plain_copied, plain_bytes)
    assert blocks >= 2


def test_encoded_pairs_stay_on_the_cpu(layered, flux, pairs_folder):  # noqa: F811
    """Whatever device the caller names, the pairs (target and reference latents, T5 context, pooled, weights) are
    held on the CPU; training moves one pair per step."""
    import folder_paths

    from editlab.models.layered.data import read_pairs

    pairs, _ = read_pairs(folder_paths.get_input_directory() + "/" + pairs_folder)
    with torch.inference_mode():
        data = layered.encode_pairs(flux.model, flux.clip, flux.vae, pairs, RES, torch.device("meta"))
        data = layered.weighted(data, 5.0)
    tensors = [(d["name"], k, v) for d in data for k, v in d.items() if torch.is_tensor(v)]
    assert {k for _, k, _ in tensors} >= {"target", "ref", "context", "weights"}
    assert all(v.device.type == "cpu" for _, _, v in tensors), [(n, k, v.device) for n, k, v in tensors]


def test_train_stage_moves_each_pair_to_the_device():
    """models/layered/train.train_stage with ``device``: the loss is computed there from the held pairs, which are
    not moved themselves (a float64 stand-in for the device: ``.to(torch.float64)`` is a move the denoiser can see on
    the CPU)."""
    from editlab.models.layered.train import train_stage

    seen = []
    with torch.inference_mode(False), torch.enable_grad():
        p = torch.zeros(1, 2, 2, 2, requires_grad=True)
        pairs = [{"target": torch.randn(1, 2, 2, 2), "weights": torch.ones(1, 1, 2, 2)}]

        def denoise(x, sigma, pair):
            seen.append((x.dtype, pair["target"].dtype))
            return p.to(x.dtype).expand_as(x)

        stats = train_stage([p], pairs, denoise,
                            lambda s, n, x0: s.view(-1, 1, 1, 1) * n + (1 - s.view(-1, 1, 1, 1)) * x0,
                            lambda q: 1 - q, steps=2, lr=1e-2, seed=0, eval_points=1, device=torch.float64)
    assert stats["steps"] == 2 and len(seen) == 4
    assert all(x == torch.float64 for x, _ in seen)  # computed on the 'device'
    assert all(t == torch.float32 for _, t in seen) and pairs[0]["target"].dtype == torch.float32  # held as it was
