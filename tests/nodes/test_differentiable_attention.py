"""Backward through the host's attention where the host serves it with its sub-quadratic function (its default on
the CPU) in the key-chunked path it takes when free memory is short: that path exponentiates in place, which autograd
refuses, and it is what a full-size SDXL at 1024x1024 met on a 24 GB machine (LODA stopped with "exp(): functions with
out=... arguments don't support automatic differentiation", bench/real_size/device_run.py). LODA's gradient, the
UNet trainers and Layered Edit Train run such calls through the host's own PyTorch attention instead; the tiny models
are put in that state by making the host's attention see little free memory."""
import pytest
import torch

from .test_conceptsplit_loda import _loda, _run, nodes, sd15  # noqa: F401 - fixtures
from .test_layered_adapters import flux, layered  # noqa: F401 - fixtures
from .test_layered_train import flux_lora_case
from .test_training_checkpointing import _expression_grads

pytestmark = pytest.mark.usefixtures("server_mode")


@pytest.fixture
def short_memory(comfy_host, monkeypatch):
    """The host's attention module sees 1 MiB free (and nothing else does): its sub-quadratic attention chunks the
    keys, as it does at real size when memory is short."""
    import comfy.ldm.modules.attention as attention
    import comfy.model_management as mm

    if attention.optimized_attention is not attention.attention_sub_quad:
        pytest.skip("the host serves attention with another function here (not its CPU default)")

    class Short:
        def __getattr__(self, name):
            return getattr(mm, name)

        @staticmethod
        def get_free_memory(dev=None, torch_free_too=False):
            return (2**20, 2**20) if torch_free_too else 2**20

    monkeypatch.setattr(attention, "model_management", Short())


def test_the_hosts_chunked_attention_refuses_backward(short_memory):
    """The condition is real: autograd through the host's attention function in that state fails."""
    import comfy.ldm.modules.attention as attention

    with torch.inference_mode(False):
        q, k, v = (torch.randn(1, 1024, 32, requires_grad=True) for _ in range(3))
        with pytest.raises(RuntimeError, match="out=|automatic differentiation"):
            attention.optimized_attention(q, k, v, 2).sum().backward()


def test_loda_takes_its_gradient_there(short_memory, nodes, sd15):  # noqa: F811
    import comfy.samplers

    plain = comfy.samplers.sampler_object("euler")
    guided = _run(sd15.model, sd15, _loda(nodes, sd15, plain, 2), steps=3)
    assert torch.isfinite(guided).all()
    assert not torch.equal(guided, _run(sd15.model, sd15, plain, steps=3))  # the LODA steps moved the latent


def test_the_unet_trainers_train_there(short_memory, comfy_host):
    from editlab.models.tiny import build_tiny_models

    with torch.inference_mode():
        sd15 = build_tiny_models("sd15", 0)
    with torch.inference_mode(False):  # the trainer's own data, as test_training_checkpointing makes it
        grads = _expression_grads(sd15, True)
    assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_layered_training_trains_there(short_memory, layered, flux):  # noqa: F811
    from editlab.models.frozen import frozen_for_autograd

    with flux_lora_case(flux) as (base, layers, forward):
        options, saves = layered.training_forward(base, True)
        with torch.enable_grad(), frozen_for_autograd(base.diffusion_model), saves:
            forward(options).pow(2).sum().backward()
        grads = [p.grad for layer in layers.values() for p in layer.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
