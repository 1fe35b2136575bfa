"""``frozen_for_autograd`` (models/frozen.py), which every LoRA / adapter training in the pack wraps the
host's network in: gradients flow through the frozen network to the trained part, whatever state the network's
tensors are in, and the network is left with its own tensor objects and flags.

The three states a ComfyUI model's weights can be in: ordinary tensors; inference tensors (made by a stock loader
under the server's inference mode); and parameters made in inference mode whose data was later replaced outside it,
as when the model is moved to a GPU by a training load outside inference mode (neither flagged as inference nor
carrying a version counter: on an H200 this state failed every LoRA training before the function handled it). The
move is played here by a dtype round trip outside inference mode, on the CPU."""
import pytest
import torch
from torch import nn

from editlab.models.frozen import frozen_for_autograd


def network(state: str) -> nn.Module:
    def build():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 3))
        net.register_buffer("scale", torch.full((3,), 0.5))
        return net

    return in_state(build, state)


def in_state(build, state: str) -> nn.Module:
    """``build()`` made in one of the three states."""
    if state == "ordinary":
        return build()
    with torch.inference_mode():
        net = build()
    if state == "moved":
        with torch.no_grad():
            net.to(torch.float64).to(torch.float32)
    return net


def loss(net, adapter, x):
    return (net(adapter(x)) * net.scale).square().sum()


@pytest.mark.parametrize("state", ["ordinary", "inference", "moved"])
def test_gradients_reach_the_adapter_and_the_network_is_left_as_it_was(state):
    net = network(state)
    before = [(p, p.requires_grad, p.detach().clone()) for p in net.parameters()]
    buffer = net.scale
    adapter = nn.Linear(4, 4)
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    with frozen_for_autograd(net):
        loss(net, adapter, x).backward()
    assert adapter.weight.grad is not None and adapter.weight.grad.abs().sum() > 0
    after = list(net.parameters())
    assert len(after) == len(before)
    for q, (p, flag, value) in zip(after, before):
        assert q is p and q.requires_grad == flag and q.grad is None
        assert torch.equal(q.detach(), value)
    assert net.scale is buffer
    # the same gradient as through an ordinary copy of the network
    plain = network("ordinary")
    reference = nn.Linear(4, 4)
    reference.load_state_dict(adapter.state_dict())
    loss(plain, reference, x).backward()
    assert torch.allclose(adapter.weight.grad, reference.weight.grad)


def test_the_moved_state_is_what_breaks_autograd_without_it():
    net = network("moved")
    weight = net[0].weight
    assert not weight.is_inference()
    with pytest.raises(RuntimeError, match="version counter"):
        weight._version
    with pytest.raises(RuntimeError, match="[Ii]nference tensors"):
        loss(net, nn.Linear(4, 4), torch.randn(2, 4)).backward()


def conv_network(state: str) -> nn.Module:
    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.SiLU(),
                             nn.Conv2d(8, 4, 3, stride=2, padding=1, groups=2), nn.Flatten(), nn.Linear(64, 5))

    return in_state(build, state)


@pytest.mark.parametrize("state", ["inference", "moved"])
def test_no_linear_or_convolution_weight_is_copied(state):
    """The weights are nearly all of a diffusion model's bytes: inside the block the layers still hold the very
    storage they had (an inference tensor is read again in backward instead of being saved), and the gradient is the
    one an ordinary network gives."""
    net = conv_network(state)
    heavy = [m for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    storage = [m.weight.data.data_ptr() for m in heavy]
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    adapter = nn.Conv2d(3, 3, 1)
    with frozen_for_autograd(net):
        assert [m.weight.data_ptr() for m in heavy] == storage
        net(adapter(x)).square().sum().backward()
    plain, reference = conv_network("ordinary"), nn.Conv2d(3, 3, 1)
    reference.load_state_dict(adapter.state_dict())
    plain(reference(x)).square().sum().backward()
    assert torch.allclose(adapter.weight.grad, reference.weight.grad, atol=1e-5)
    assert torch.allclose(adapter.bias.grad, reference.bias.grad, atol=1e-5)


def test_gradient_to_the_input_itself_as_lodas_step_takes_it():
    net = conv_network("inference")
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    with torch.enable_grad(), frozen_for_autograd(net):
        grad, = torch.autograd.grad(net(x).square().sum(), x)
    x2 = x.detach().clone().requires_grad_(True)
    ref, = torch.autograd.grad(conv_network("ordinary")(x2).square().sum(), x2)
    assert torch.allclose(grad, ref, atol=1e-5)


def test_a_linear_output_added_to_in_place_as_flux_does():
    """Flux's blocks add to a linear's output in place (``x += ...``) on 3-D tokens: the routed linear must return
    an ordinary tensor there, with the ordinary gradient."""
    with torch.inference_mode():
        torch.manual_seed(3)
        lin = nn.Linear(6, 6)
    x = torch.randn(2, 5, 6, requires_grad=True)
    with torch.enable_grad(), frozen_for_autograd(lin):
        y = lin(x)
        y += 1.0
        grad, = torch.autograd.grad(y.square().sum(), x)
    plain = nn.Linear(6, 6)
    plain.load_state_dict({k: v.clone() for k, v in lin.state_dict().items()})
    x2 = x.detach().clone().requires_grad_(True)
    ref, = torch.autograd.grad((plain(x2) + 1.0).square().sum(), x2)
    assert torch.allclose(grad, ref, atol=1e-6)
