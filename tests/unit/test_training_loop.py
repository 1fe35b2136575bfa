"""The shared training loop (models/training.py::train_adapter), on a stand-in network and objective: the network never
sees more rows than the training batch, the fixed before/after evaluation included (eight points at once held four
times plain sampling's activations on a full-size SD1.5 at 512 px, bench/real_size/device_run.py), and the reported
losses are the mean over the fixed points computed here in one batch, outside the loop."""
from __future__ import annotations

import pytest
import torch

from editlab.models.training import train_adapter


class Objective:
    """Stand-in for HostObjective: sigmas drawn from the generator, x_t = x0 + sigma * noise, target noise."""

    def draw_sigmas(self, n, generator):
        return torch.rand(n, generator=generator) + 0.5

    def loss(self, predict, x0, noise, sigma):
        x_t = x0 + sigma[:, None, None, None] * noise
        return (predict(x_t, sigma) - noise).pow(2).mean()


class Patch:
    values = None
    training = False


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_the_network_never_runs_on_more_rows_than_the_batch(batch_size):
    torch.manual_seed(0)
    adapter = torch.nn.Linear(4, 4)
    latents = torch.randn(5, 4, 2, 2, generator=torch.Generator().manual_seed(1))
    values = torch.zeros(5, 1)
    seen = []

    def predict(x, sigma):
        seen.append(x.shape[0])
        return adapter(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    with torch.no_grad():
        frozen = [p.clone() for p in adapter.parameters()]
    stats = train_adapter(adapter, Patch(), latents, values, predict, Objective(), steps=2, lr=1e-2,
                          batch_size=batch_size, seed=3)
    assert seen and max(seen) <= batch_size, seen

    # the "before" loss, by hand: the same eight fixed points (drawn first from the seed, as documented), in one batch
    gen = torch.Generator().manual_seed(3)
    sig = torch.rand(8, generator=gen) + 0.5
    noise = torch.randn((8,) + tuple(latents.shape[1:]), generator=gen)
    x0 = latents[torch.arange(8) % 5]
    x_t = x0 + sig[:, None, None, None] * noise
    layer = torch.nn.Linear(4, 4)
    with torch.no_grad():
        layer.weight.copy_(frozen[0])
        layer.bias.copy_(frozen[1])
        want = float((layer(x_t.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) - noise).pow(2).mean())
    assert stats["loss_before"] == pytest.approx(want, rel=1e-6)
