"""Layered Edit Train on the tiny Flux with reference latents: each stage lowers its own loss (measured on a fixed set
of pairs, sigmas and noise before and after), the frozen stage-1 file stays bit-identical through stage 2, both saved
files load in the host's LoraLoader and change its output, the input MODEL is bit-identical afterwards
(weights and outputs), an interrupted run writes nothing, bad folders are named."""
import contextlib
import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from .test_layered_adapters import flux, layered, probe  # noqa: F401 - fixtures

pytestmark = pytest.mark.usefixtures("server_mode")  # nodes run as the server runs them

RES = 64


@pytest.fixture(scope="module")
def pairs_folder(comfy_host, tmp_path_factory):
    """Two edit pairs (background replaced around a product box) + masks, in a fresh input folder."""
    import folder_paths
    from skimage import data
    from skimage.transform import resize

    root = tmp_path_factory.mktemp("input")
    folder_paths.set_input_directory(str(root))
    folder = root / "pairs"
    folder.mkdir()
    photo = (resize(data.astronaut(), (RES, RES), anti_aliasing=True) * 255).astype(np.uint8)
    for i, (colour, text) in enumerate((((30, 140, 220), "make the background blue sky"),
                                        ((240, 200, 120), "put the product on a sandy beach"))):
        src = np.roll(photo, 9 * i, axis=1)
        mask = np.zeros((RES, RES), np.uint8)
        mask[16:48, 20:44] = 255
        tgt = src.copy()
        tgt[mask == 0] = colour
        Image.fromarray(src).save(folder / f"p{i}_source.png")
        Image.fromarray(tgt).save(folder / f"p{i}_target.png")
        Image.fromarray(mask).save(folder / f"p{i}_mask.png")
        (folder / f"p{i}.txt").write_text(text)
    (folder / "orphan_source.png").write_bytes((folder / "p0_source.png").read_bytes())  # no target: skipped
    return "pairs"


def train(layered, flux, folder, name, stages="both", pattern="None", steps=40, **kw):  # noqa: F811
    args = dict(model=flux.model, clip=flux.clip, vae=flux.vae, folder=folder, stages=stages,
                pattern_shift_lora=pattern, resolution=RES, rank=4, steps_stage1=steps, steps_stage2=2 * steps, lr=1e-2,
                product_weight=5.0, guidance=2.5, seed=0, name=name, overwrite=False)
    args.update(kw)
    return layered.EditLabLayeredTrain.execute(**args).result


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.model.state_dict().items()}


@pytest.fixture(scope="module")
def trained(layered, flux, pairs_folder):  # noqa: F811
    with torch.inference_mode():  # as the server runs nodes
        weights = snapshot(flux.model)
        _, before = probe(flux, flux.model, flux.clip)
        name1, name2, stats = train(layered, flux, pairs_folder, "tiny")
    return {"names": (name1, name2), "stats": json.loads(stats), "weights": weights, "before": before}


def test_each_stage_lowers_its_loss(trained):
    stats = trained["stats"]
    assert stats["pairs"] == ["p0", "p1"] and any("orphan" in s for s in stats["skipped"])
    # on a fixed set of (pair, sigma, noise): stage 1 from the base model (1.82 -> 0.90 when written), stage 2 on top
    # of the frozen stage 1, whose fit leaves it less to gain (0.364 -> 0.352)
    assert stats["stage1"]["loss_after"] < 0.8 * stats["stage1"]["loss_before"], stats["stage1"]
    assert stats["stage2"]["loss_after"] < 0.99 * stats["stage2"]["loss_before"], stats["stage2"]


def test_the_input_model_is_unchanged(trained, flux):  # noqa: F811
    after = snapshot(flux.model)
    assert after.keys() == trained["weights"].keys()
    assert all(torch.equal(after[k], v) for k, v in trained["weights"].items())
    _, outs = probe(flux, flux.model, flux.clip)
    assert all(torch.equal(a, b) for a, b in zip(outs, trained["before"]))


def test_saved_loras_load_in_the_stock_loader_and_change_the_output(trained, flux, layered):  # noqa: F811
    import nodes as comfy_nodes
    from safetensors import safe_open

    for name in trained["names"]:
        path = layered.lora_dir / name
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
            keys = list(f.keys())
        assert meta["editlab_stage"] in ("pattern_shift", "consistency")
        assert any(k.endswith(".lora_up.weight") for k in keys) and any(k.endswith(".alpha") for k in keys)
        m, clip = comfy_nodes.LoraLoader().load_lora(flux.model, flux.clip, name, 1.0, 1.0)
        assert len(m.patches) == sum(k.endswith(".lora_up.weight") for k in keys)  # every layer found its weight
        _, outs = probe(flux, m, flux.clip)
        assert all((a - b).abs().max() > 1e-5 for a, b in zip(outs, trained["before"]))


def test_consistency_only_keeps_the_stage1_file_bit_identical(trained, flux, layered, pairs_folder):  # noqa: F811
    name1 = trained["names"][0]
    digest = hashlib.sha256((layered.lora_dir / name1).read_bytes()).hexdigest()
    with torch.inference_mode():
        kept, name2, stats = train(layered, flux, pairs_folder, "again", stages="consistency_only", pattern=name1)
    assert kept == name1 and name2 == "again_consistency.safetensors"
    assert hashlib.sha256((layered.lora_dir / name1).read_bytes()).hexdigest() == digest
    stage2 = json.loads(stats)["stage2"]
    assert stage2["loss_after"] < stage2["loss_before"]
    assert not (layered.lora_dir / "again_pattern_shift.safetensors").exists()


def test_product_weight_reaches_what_stage_2_learns(trained, flux, layered, pairs_folder):  # noqa: F811
    """Stage 2 weights the loss inside the product's mask by product_weight (models/layered/train.py, checked against
    the weighted optimum by hand in tests/unit/test_layered_stage2_weighting.py): through the node, 1 and 20 give
    different losses on the same fixed points and different consistency LoRAs from the same seed."""
    from safetensors.torch import load_file

    runs = {}
    with torch.inference_mode():
        for w in (1.0, 20.0):
            _, name2, stats = train(layered, flux, pairs_folder, f"pw{int(w)}", stages="consistency_only",
                                    pattern=trained["names"][0], steps=4, product_weight=w)
            runs[w] = (load_file(str(layered.lora_dir / name2)), json.loads(stats)["stage2"])
    (one, s1), (twenty, s20) = runs[1.0], runs[20.0]
    assert s1["product_weight"] == 1.0 and s20["product_weight"] == 20.0
    assert abs(s1["loss_before"] - s20["loss_before"]) > 1e-6 * max(s1["loss_before"], 1e-12), (s1, s20)
    assert one.keys() == twenty.keys()
    assert any(not torch.equal(one[k], twenty[k]) for k in one if k.endswith(".lora_up.weight"))


def test_interrupted_run_writes_nothing(flux, layered, pairs_folder, monkeypatch):  # noqa: F811
    from editlab.nodes import host

    weights = snapshot(flux.model)
    calls = {"n": 0}

    class Stop(Exception):
        pass

    def stop():
        calls["n"] += 1
        if calls["n"] > 10:
            raise Stop()

    monkeypatch.setattr(host, "check_interrupted", stop)
    with pytest.raises(Stop), torch.inference_mode():
        train(layered, flux, pairs_folder, "cut")
    assert not list(layered.lora_dir.glob("cut_*"))
    assert all(torch.equal(snapshot(flux.model)[k], v) for k, v in weights.items())


def test_bad_input_is_named(flux, layered, pairs_folder, trained):  # noqa: F811
    from editlab.nodes.common import EditLabInputError

    with pytest.raises(EditLabInputError, match="folder"):
        train(layered, flux, "no_such_folder", "x")
    with pytest.raises(EditLabInputError, match="folder"):
        train(layered, flux, "../..", "x")
    with pytest.raises(EditLabInputError, match="name"):
        train(layered, flux, pairs_folder, "tiny")  # exists, overwrite off
    with pytest.raises(EditLabInputError, match="pattern_shift_lora"):
        train(layered, flux, pairs_folder, "y", stages="consistency_only")
    from editlab.models.tiny import build_tiny_models

    sd15 = build_tiny_models("sd15", 0)
    with pytest.raises(EditLabInputError, match="model"):
        layered.EditLabLayeredTrain.execute(
            model=sd15.model, clip=sd15.clip, vae=sd15.vae, folder=pairs_folder, stages="both",
            pattern_shift_lora="None", resolution=RES, rank=4, steps_stage1=1, steps_stage2=1, lr=1e-3,
            product_weight=5.0, guidance=2.5, seed=0, name="z")


@pytest.mark.parametrize("dtype", ["bf16", "fp8_e4m3fn"])
def test_half_precision_storage_trains_and_leaves_the_model(layered, pairs_folder, dtype):  # noqa: F811
    from editlab.models.tiny import build_tiny_models

    with torch.inference_mode():
        tiny = build_tiny_models("flux", 0, dtype)
        weights = snapshot(tiny.model)
        _, _, stats = train(layered, tiny, pairs_folder, f"half_{dtype}", steps=3)
    stats = json.loads(stats)
    for stage in ("stage1", "stage2"):
        assert np.isfinite(stats[stage]["loss_before"]) and np.isfinite(stats[stage]["loss_after"])
    after = snapshot(tiny.model)
    assert all(torch.equal(after[k], v) for k, v in weights.items())


@contextlib.contextmanager
def flux_lora_case(flux):  # noqa: F811
    """A training clone of the tiny Flux with LoRA layers on its blocks, loaded for training, and one Kontext-style
    call on it (a bag prompt, a reference latent, sigma 0.6): yields (base, layers, forward), ``forward(options)``
    returning the network's output under those transformer options. Released afterwards."""
    from editlab.nodes import host

    gen = torch.Generator().manual_seed(3)
    with torch.inference_mode(False):
        mp = flux.model.clone()
        layers = host.add_lora_train_layers(mp, 2, 0)
        try:
            host.load_for_training(mp)
            base = mp.model
            cond = host.encoded(flux.clip.encode_from_tokens_scheduled, flux.clip.tokenize("a photo of a bag"))
            dev = host.compute_device()
            ctx, pooled = cond[0][0].to(dev), cond[0][1]["pooled_output"].to(dev)
            x, ref = (torch.randn(1, 16, 8, 8, generator=gen).to(dev) for _ in range(2))
            sig = torch.tensor([0.6], device=dev)

            def forward(options):
                extra = base.extra_conds(cross_attn=ctx, pooled_output=pooled, guidance=2.5, reference_latents=[ref],
                                         noise=x, device=x.device)
                conds = {k: v.cond for k, v in extra.items() if hasattr(v, "cond")}
                return base.apply_model(x, sig, transformer_options={**options, "sigmas": sig}, **conds)

            yield base, layers, forward
        finally:
            host.release(mp)


@pytest.mark.parametrize("checkpoint", [False, True], ids=["plain", "checkpointed"])
def test_gradients_through_the_hosts_flux_match_finite_differences(layered, flux, checkpoint):  # noqa: F811
    """The host's Flux blocks add residuals in place; with the training forward (fresh streams per block, copies of
    the saves those adds overwrite; checkpointed or not) the LoRA gradients are right: checked against central
    differences on a double-block and a single-block layer."""
    from editlab.models.frozen import frozen_for_autograd

    with flux_lora_case(flux) as (base, layers, forward):
        loss = lambda: forward(options).pow(2).sum()  # noqa: E731
        names = [n for n in layers if "double_blocks" in n][:2] + [n for n in layers if "single_blocks" in n][:1]
        options, saves = layered.training_forward(base, checkpoint)
        with torch.enable_grad(), frozen_for_autograd(base.diffusion_model), saves:
            loss().backward()
            for name in names:
                p = layers[name].lora_down.weight
                g = float(p.grad[0, 3])
                with torch.no_grad():
                    p[0, 3] += 1e-2
                    up = float(loss())
                    p[0, 3] -= 2e-2
                    down = float(loss())
                    p[0, 3] += 1e-2
                assert g == pytest.approx((up - down) / 2e-2, rel=2e-2, abs=1e-2), name


def test_trains_on_stock_weights_moved_outside_inference_mode(layered, pairs_folder):  # noqa: F811
    """What a GPU does to a stock loader's weights: made in inference mode, then moved to the GPU by the training
    load outside it, each parameter keeps its object but gets ordinary data, and is then neither an inference tensor
    nor one with a version counter (seen on an H200: every LoRA training failed with "Inference tensors do not track
    version counter"). Here the move is a dtype round trip outside inference mode, on the CPU."""
    from editlab.models.tiny import build_tiny_models

    with torch.inference_mode():
        moved = build_tiny_models("flux", 0)
    with torch.inference_mode(False), torch.no_grad():
        moved.model.model.to(torch.float64).to(torch.float32)
    weight = moved.model.model.diffusion_model.img_in.weight
    assert not weight.is_inference()
    with pytest.raises(RuntimeError, match="version counter"):
        weight._version  # the state the GPU left it in
    weights = snapshot(moved.model)
    with torch.inference_mode():  # as the server runs nodes
        text = train(layered, moved, pairs_folder, "moved_weights", steps=2)[2]
    stats = json.loads(text)
    assert all(v == v for s in ("stage1", "stage2") for v in (stats[s]["loss_before"], stats[s]["loss_after"])), stats
    assert all(torch.equal(snapshot(moved.model)[k], v) for k, v in weights.items())
