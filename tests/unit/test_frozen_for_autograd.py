"""``frozen_for_autograd`` (models/expression/train.py), which every LoRA / adapter training in the pack wraps the
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

from editlab.models.expression.train import frozen_for_autograd


def network(state: str) -> nn.Module:
    def build():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 3))
        net.register_buffer("scale", torch.full((3,), 0.5))
        return net

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
