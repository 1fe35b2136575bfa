"""DiT-VTON on this CPU: pose + mask time per 1024 px photo, and peak memory at 768x1024 of the try-on graph with
the product as reference tokens (tiny Flux, Kontext-style: ComfyUI's Flux Fill takes no reference latents) against
the plain Fill graph (tiny Flux Fill), and against the same Flux graph without references, as ratios.

Each memory case runs in its own process (peak RSS from getrusage), so one case's peak cannot hide another's.
The tiny model's weights are small, so the ratio shows what the extra reference tokens cost in activations.
"""
import json
import resource
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if "editlab" not in sys.modules:
    pkg = types.ModuleType("editlab")
    pkg.__path__ = [str(ROOT)]
    sys.modules["editlab"] = pkg


def pose_and_mask_seconds(repeats=5):
    import numpy as np
    from PIL import Image
    from skimage import data

    from editlab.models.tryon.mask import tryon_mask
    from editlab.models.tryon.pose import estimate_pose

    photo = np.asarray(Image.fromarray(data.astronaut()).resize((1024, 1024), Image.LANCZOS))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        pose = estimate_pose(photo)
        tryon_mask(pose, "upper", grow=8, feather=8)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def graph_peak(case: str) -> int:
    """Run in a fresh process: 'fill' (tiny Flux Fill inpainting), 'flux' (tiny Flux on the same latent) or
    'flux_refs' (the same with the product as reference tokens); 768x1024; return peak RSS in bytes."""
    from editlab.client.hostenv import comfyui_path

    sys.path.insert(0, str(comfyui_path()))
    from comfy.cli_args import args

    args.cpu = True
    import comfy.sample
    import torch
    from nodes import InpaintModelConditioning

    from editlab.models.tiny import build_tiny_models
    from editlab.nodes.tryon import EditLabReferenceTokens

    fill = build_tiny_models("flux_fill" if case == "fill" else "flux", 0)
    canvas = torch.rand(1, 1024, 768, 3, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 1024, 768)
    mask[:, 200:800, 150:600] = 1
    cond = fill.clip.encode_from_tokens_scheduled(fill.clip.tokenize("the person wearing the jacket"))
    if case == "flux_refs":
        product = torch.rand(1, 1024, 768, 3, generator=torch.Generator().manual_seed(1))
        cond, = EditLabReferenceTokens.execute(conditioning=cond, vae=fill.vae, image=product, method="offset",
                                               max_size=1024).result
    if case == "fill":
        pos, neg, latent = InpaintModelConditioning().encode(cond, cond, canvas, fill.vae, mask, True)
    else:
        pos, neg, latent = cond, cond, {"samples": fill.vae.encode(canvas)}
    with torch.no_grad():
        comfy.sample.sample(fill.model, comfy.sample.prepare_noise(latent["samples"], 0), 2, 1.0, "euler", "simple",
                            pos, neg, latent["samples"], noise_mask=latent.get("noise_mask"), disable_pbar=True)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _peak_in_subprocess(case: str) -> int:
    code = (f"import runpy, json; m = runpy.run_path({str(Path(__file__))!r}); "
            f"print('PEAK', m['graph_peak']({case!r}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1200)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return int(done.stdout.split("PEAK")[-1].split()[0])


if __name__ == "__main__":
    seconds = pose_and_mask_seconds()
    print(f"pose + 'upper' mask on a 1024x1024 photo (MediaPipe, CPU): {seconds * 1000:.0f} ms per image")
    fill, flux, refs = (_peak_in_subprocess(c) for c in ("fill", "flux", "flux_refs"))
    mib = 2**20
    print(f"peak RSS at 768x1024: plain Fill graph {fill / mib:.0f} MiB; try-on with the product as reference tokens "
          f"{refs / mib:.0f} MiB: ratio {refs / fill:.2f}x (same Flux graph without references {flux / mib:.0f} MiB: "
          f"reference tokens cost {refs / flux:.2f}x)")
    print(json.dumps({"pose_mask_ms": seconds * 1000, "fill_peak_mib": fill / mib, "flux_peak_mib": flux / mib,
                      "flux_refs_peak_mib": refs / mib, "refs_over_fill": refs / fill, "refs_over_flux": refs / flux}))
