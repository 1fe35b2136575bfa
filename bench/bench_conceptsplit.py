"""ConceptSplit on the tiny SD1.5 and the tiny Flux, measured in one run each: ToVA's overhead over plain sampling (two adapters), and
LODA's cost as a ratio over plain sampling next to its floor (plain + forward-and-backward x LODA steps).

The ratios are what carries over; the absolute times (a CPU, a tiny model) do not.
"""
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ (benchlib), also under python -P
from benchlib import figure, sized  # noqa: E402

PROMPT = "a photo of a dog and a cat"
STEPS, LODA_STEPS, SIDE = sized((20, 10, 16), (2, 1, 8))  # SIDE: latent side


def host():
    from editlab.client.hostenv import comfyui_path

    sys.path.insert(0, str(comfyui_path()))
    from comfy.cli_args import args

    args.cpu = True


def _adapter(family, dims, token, seed):
    from editlab.models.conceptsplit.tova import ValueLoRA

    width = next(iter(dims.values()))[0]
    a = ValueLoRA(token, family, 32, width, {n: d[1] for n, d in dims.items()}, seed)
    with torch.no_grad():
        for p in a.up:
            p.normal_(generator=torch.Generator().manual_seed(seed))
    from editlab.nodes.conceptsplit import LoadedToVA

    return LoadedToVA(a.eval().requires_grad_(False), token)


def _interleaved(runs: dict, repeats: int, warm_up: bool = sized(True, False)) -> dict:
    for fn in runs.values() if warm_up else ():
        fn()
    times = {k: [] for k in runs}
    for _ in range(repeats):  # interleaved, so drift hits all alike
        for k, fn in runs.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


ARCHS = {"sd15": (4, 5.0), "flux": (16, 1.0)}  # latent channels, cfg


def measure(arch="sd15", repeats=sized(5, 1)):
    import comfy.sample
    import comfy.samplers

    from editlab.models.frozen import frozen_for_autograd
    from editlab.models.tiny import build_tiny_models
    from editlab.nodes.conceptsplit import EditLabLODA, EditLabToVAApply, _tova_layers

    channels, cfg = ARCHS[arch]
    tiny = build_tiny_models(arch, 0)
    family, _, dims = _tova_layers(tiny.model)
    pos = tiny.clip.encode_from_tokens_scheduled(tiny.clip.tokenize(PROMPT))
    neg = tiny.clip.encode_from_tokens_scheduled(tiny.clip.tokenize(""))
    tova, = EditLabToVAApply.execute(model=tiny.model, clip=tiny.clip, prompt=PROMPT, strength=1.0,
                                     adapter_1=_adapter(family, dims, "dog", 1),
                                     adapter_2=_adapter(family, dims, "cat", 2)).result
    latent = torch.zeros(1, channels, SIDE, SIDE)
    noise = comfy.sample.prepare_noise(latent, 0)
    sigmas = comfy.samplers.calculate_sigmas(tiny.model.get_model_object("model_sampling"), "simple", STEPS)
    euler = comfy.samplers.sampler_object("euler")
    loda, = EditLabLODA.execute(sampler=euler, clip=tiny.clip, prompt=PROMPT, concepts="dog, cat",
                                loda_steps=LODA_STEPS, step_size=20.0, threshold=3.0, afg_strength=2.0).result

    def sample(model, sampler):
        return lambda: comfy.sample.sample_custom(model, noise, cfg, sampler, sigmas, pos, neg, latent,
                                                  disable_pbar=True, seed=0)

    base = tiny.model.model
    rows = 2 if cfg > 1 else 1  # cond + uncond in one call under CFG; the cond row alone at cfg 1

    def forward_backward():  # one model call as the sampler makes it, with the gradient to the latent
        ctx = torch.cat([pos[0][0], neg[0][0]])[:rows]
        pooled = pos[0][1].get("pooled_output")
        mutation = torch.autograd.graph.allow_mutation_on_saved_tensors()
        with torch.inference_mode(False), torch.enable_grad(), frozen_for_autograd(base.diffusion_model), mutation:
            x = torch.randn(rows, channels, SIDE, SIDE, requires_grad=True)
            extra = base.extra_conds(cross_attn=ctx.clone(), noise=x, device=x.device,
                                     pooled_output=None if pooled is None else pooled.expand(rows, -1).clone())
            conds = {k: v.cond for k, v in extra.items() if hasattr(v, "cond")}
            out = base.apply_model(x, sigmas[:1].expand(rows), **conds)
            torch.autograd.grad(out.square().mean(), x)

    return _interleaved({"plain": sample(tiny.model, euler), "tova": sample(tova, euler),
                         "loda": sample(tiny.model, loda), "fwd_bwd": forward_backward}, repeats)


if __name__ == "__main__":
    host()
    for arch, (_, cfg) in ARCHS.items():
        t = measure(arch)
        floor = (t["plain"] + LODA_STEPS * t["fwd_bwd"]) / t["plain"]
        figure(f"tova_overhead_{arch}", t["tova"] / t["plain"], f"{t['tova'] / t['plain']:.3f}x",
               f"ToVA (two adapters) over plain sampling, tiny {arch}")
        figure(f"loda_ratio_{arch}", t["loda"] / t["plain"], f"{t['loda'] / t['plain']:.2f}x",
               f"LODA ({LODA_STEPS} steps + AFG) over plain sampling, tiny {arch}")
        figure(f"loda_floor_{arch}", floor, f"{floor:.2f}x",
               f"LODA's floor (plain + forward-and-backward x {LODA_STEPS}) over plain, tiny {arch}")
        print(f"tiny {arch}, {STEPS} euler steps, cfg {cfg:g}, {SIDE}x{SIDE} latent: plain {t['plain'] * 1000:.1f} ms")
        print(f"  ToVA (two adapters, rank 32): {t['tova'] * 1000:.1f} ms, overhead ratio "
              f"{t['tova'] / t['plain']:.3f}x")
        print(f"  LODA ({LODA_STEPS} steps + AFG): {t['loda'] * 1000:.1f} ms, ratio {t['loda'] / t['plain']:.2f}x; "
              f"floor (plain + forward-and-backward x {LODA_STEPS}) {floor:.2f}x")
