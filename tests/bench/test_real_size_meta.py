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


def test_a_subset_of_workflows_runs_beside_plain_and_keeps_the_earlier_rows_marked(comfy_host):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    import live
    import run

    assert live.chosen(None) == live.ORDER
    # plain always, first; the run's order kept
    assert live.chosen(["expression_train", "slider"]) == ["plain", "slider", "expression_train"]
    with pytest.raises(ValueError, match="unknown workflows"):
        live.chosen(["slidre"])
    def row(key, peak, **more):
        return {"key": key, "label": key, "vs": "plain", "kind": "sample", "steps": 1, "peak_mib": peak,
                "extra_mib": 1, "s_per_step": 50.0, **more}

    earlier = {"date": "then", "commit": "abc", "load": [12.5], "rows": [
        row("plain", 7000), row("loda", 10000, ratio_to_plain=1.43), {"key": "slider", "error": "not run"}]}
    now = live.summarise("sd15", {"plain": row("plain", 6000), "slider": row("slider", 6300)}, 1000, 1, False, None)
    run.keep_earlier(now, earlier)
    rows = {r["key"]: r for r in now["rows"]}
    assert rows["slider"]["ratio_to_plain"] == 1.05 and "earlier_run" not in rows["slider"]  # 6300 / 6000
    # LODA was not re-run: the earlier row, with its own ratio (10000 / 7000, not / 6000) and that run's plain
    assert rows["loda"]["ratio_to_plain"] == 1.43 and rows["loda"]["earlier_run"]["plain_peak_mib"] == 7000
    assert rows["tova_train"]["error"] == "not run"  # measured in neither
    text = run.render({"machine": "m", "torch": "t", "live": {"sd15": now}})
    assert "| loda | B | 10,000 |" in text and "Run B: measured then at abc" in text and "| slider | A | 6,300 |" in text


def test_the_readme_carries_the_last_real_size_table():
    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    block = readme.split("<!-- real-size: from bench/real_size/results/real_size.md -->")[1].split(
        "<!-- /real-size -->")[0]
    table = (root / "bench" / "real_size" / "results" / "real_size.md").read_text().strip()
    assert table in block, "README's real-size block differs from bench/real_size/results/real_size.md"


def test_the_checkpointed_training_step_is_counted_through_the_packs_checkpointing(comfy_host):
    """The "fwd+bwd, checkpointed" count runs the pack's own checkpointing (every Flux block replaced, every UNet
    layer wrapped) and keeps less than the same step without; under fake tensors the saves a block's in-place adds
    would overwrite are told apart from the others by storage identity (a fake tensor's data pointer is no identity:
    with it every save in a block was copied)."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    import meta_counts
    from editlab.models import checkpointing

    with FakeTensorMode():
        a, b = torch.empty(4, 8), torch.empty(4, 8)
        assert checkpointing._storage(a) == checkpointing._storage(a.t()[1:])  # a view: the same storage
        assert checkpointing._storage(a) != checkpointing._storage(b)
    small_flux = {**meta_counts.FLUX_DEV, "hidden_size": 256, "num_heads": 4, "depth": 2, "depth_single_blocks": 2,
                  "axes_dim": [16, 24, 24]}
    case = meta_counts.Case("small Flux", "Flux", small_flux, meta_counts._flux_inputs((64, 64), t5_tokens=8), "512 px",
                            cfg_batch=1, extra={"checkpointing": "dit"})
    replaced, copies = [], []
    checkpointing.SAVE_OBSERVERS.append(lambda t, copied: copies.append(copied))
    real_patch = checkpointing.BlockTraining.patch

    def counting(self, kind, module):
        replaced.append(kind)
        return real_patch(self, kind, module)

    checkpointing.BlockTraining.patch = counting
    try:
        row = meta_counts.count(case)
    finally:
        checkpointing.BlockTraining.patch = real_patch
        checkpointing.SAVE_OBSERVERS.pop()
    assert replaced.count("double_block") == 2 and replaced.count("single_block") == 2
    assert 0 < row["fwd_bwd_ckpt_activation_peak_mib"] < row["fwd_bwd_activation_peak_mib"], row
    assert copies and 0 < sum(copies) < len(copies) / 2, (sum(copies), len(copies))
