"""The real-size harness's meta-device counter (bench/real_size/meta_counts.py): it counts exactly the bytes alive,
and the networks it builds from the host's classes have the published parameter counts."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "real_size"))

MiB = 2**20


def test_live_bytes_is_the_peak_of_what_is_alive(comfy_host):
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    import meta_counts

    with FakeTensorMode():
        x = torch.randn(256, 1024)  # 1 MiB of float32, there before: not counted
        meter = meta_counts.LiveBytes()
        meter.known([x])
        with meter:
            a = x * 2  # 1 MiB
            b = a + 1  # 2 MiB alive
            del a  # 1 MiB
            view = b.t()  # a view: no new storage
            c = view.sum()  # 4 bytes
            assert meter.current == MiB + 4
            del b, view, c
    assert meter.peak == 2 * MiB
    assert meter.current == 0


def test_out_of_place_adds_keep_the_value_and_give_the_gradient(comfy_host):
    import torch

    import meta_counts

    x = torch.randn(3, 4, requires_grad=True)
    with meta_counts._OutOfPlaceAdds():
        z = x.exp()  # exp saves its output for backward
        z += 3 * x  # in place, the host's residual pattern: refused by backward without the mode
        z.sum().backward()
    torch.testing.assert_close(x.grad, x.detach().exp() + 3)


@pytest.mark.parametrize("name,published", [("SD1.5", 859_520_964), ("SDXL", 2_567_463_684)])
def test_the_networks_have_the_published_parameter_counts(comfy_host, name, published):
    import torch

    import meta_counts

    case, = [c for c in meta_counts.CASES if c.name == name]
    with torch.device("meta"):
        net = meta_counts._host_config(case, torch.bfloat16).get_model({}).diffusion_model
    assert sum(p.numel() for p in net.parameters()) == published
