"""SAEdit on the tiny Flux: slider overhead over plain sampling, and SAE training throughput at T5-XXL width.

Both measured in this run on this machine; the ratio is what carries over, the absolute times do not.
"""
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ (benchlib), also under python -P
from benchlib import figure, sized  # noqa: E402


def host():
    from editlab.client.hostenv import comfyui_path

    sys.path.insert(0, str(comfyui_path()))
    from comfy.cli_args import args

    args.cpu = True


def slider_overhead(cfg: float, steps=20, repeats=15):
    """(plain s, slid s, model calls plain, model calls slid) at ``cfg``: the slider is conditioning the host
    schedules (timestep ranges), so under CFG it batches with the negative as the plain prompt does."""
    import comfy.sample

    from editlab.models.saedit.sae import SAEConfig, SparseAutoencoder
    from editlab.models.tiny import build_tiny_models
    from editlab.nodes.saedit import EditLabSAESlider, EditLabTextEncode, LoadedDirection, LoadedSAE

    tiny = build_tiny_models("flux", 0)
    sae = SparseAutoencoder(SAEConfig(act_size=32, dict_size=1024, top_k=16))
    sae.reset_parameters(torch.Generator().manual_seed(0))
    direction = torch.zeros(1024)
    direction[:8] = 1 / 8 ** 0.5
    prompt = "a portrait of a man in a park"
    cond, = EditLabTextEncode.execute(clip=tiny.clip, text=prompt).result
    neg = tiny.clip.encode_from_tokens_scheduled(tiny.clip.tokenize("blurry"))
    edited, = EditLabSAESlider.execute(conditioning=cond, clip=tiny.clip, sae=LoadedSAE(sae, "bench", "t5"),
                                       direction=LoadedDirection(direction, None, None, [], "bench"), prompt="",
                                       word="man", strength=1.0, schedule="exponential", part="auto").result
    latent = torch.zeros(1, 16, 16, 16)
    noise = comfy.sample.prepare_noise(latent, 0)
    calls = []
    dm = tiny.model.model.diffusion_model
    dm.register_forward_pre_hook(lambda m, a: calls.append(1))

    def run(positive):
        t = time.perf_counter()
        comfy.sample.sample(tiny.model, noise, steps, cfg, "euler", "simple", positive, neg, latent,
                            disable_pbar=True)
        return time.perf_counter() - t

    counted = []
    for positive in (cond, edited):  # warm up, and count the model calls of one run each
        calls.clear()
        run(positive)
        counted.append(len(calls))
    plain, slid = [], []
    for _ in range(repeats):  # interleaved, so drift hits both alike
        plain.append(run(cond))
        slid.append(run(edited))
    return statistics.median(plain), statistics.median(slid), counted[0], counted[1]


def training_throughput(width=4096, dict_size=16384, top_k=64, tokens=8192, batch=2048):
    from editlab.models.saedit.sae import SAEConfig
    from editlab.models.saedit.train import TrainConfig, train_sae

    data = torch.randn(tokens, width, generator=torch.Generator().manual_seed(0))
    t = time.perf_counter()
    train_sae(data, SAEConfig(act_size=width, dict_size=dict_size, top_k=top_k),
              TrainConfig(batch_size=batch, epochs=1))
    return tokens / (time.perf_counter() - t)


if __name__ == "__main__":
    host()
    steps, repeats = sized(20, 3), sized(15, 2)
    for cfg in (1.0, 3.5):
        plain, slid, n_plain, n_slid = slider_overhead(cfg, steps, repeats)
        ratio = figure(f"overhead_cfg{cfg:g}", slid / plain, f"{slid / plain:.2f}x",
                       f"SAE slider over plain sampling, tiny Flux, cfg {cfg:g} (target <= 1.10x)")
        figure(f"model_calls_cfg{cfg:g}", n_slid / n_plain, f"{n_slid} vs {n_plain}",
               f"model calls with the slider vs plain, cfg {cfg:g}, {steps} steps")
        print(f"tiny Flux, {steps} euler steps, cfg {cfg:g}, 16x16 latent: plain {plain * 1000:.1f} ms "
              f"({n_plain} model calls), with SAE slider {slid * 1000:.1f} ms ({n_slid} calls): overhead ratio "
              f"{ratio:.3f}x (target <= 1.10x)")
    width, dict_size = sized((4096, 16384), (256, 1024))
    tps = training_throughput(width, dict_size, top_k=sized(64, 16), tokens=sized(8192, 1024), batch=sized(2048, 512))
    figure("sae_train_tokens_per_s", tps, f"{tps:.0f} tokens/s",
           f"SAE training at width {width} -> {dict_size} latents, torch on this CPU")
    print(f"SAE training at width {width} (-> {dict_size} latents, k={sized(64, 16)}; T5-XXL's at full size), "
          f"torch on this CPU: {tps:.0f} tokens/s")
