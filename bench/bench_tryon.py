"""DiT-VTON on this CPU: pose + mask time per 1024 px photo, and peak memory at 768x1024 of the try-on graph with
the product as reference tokens (tiny Flux, Kontext-style: ComfyUI's Flux Fill takes no reference latents) against
the plain Fill graph (tiny Flux Fill), and against the same Flux graph without references, as ratios. The smoke run
(benchlib): a 256 px photo and a 96x128 canvas.

Each memory case runs in its own process (peak RSS from getrusage), so one case's peak cannot hide another's.
The tiny model's weights are small, so the ratio shows what the extra reference tokens cost in activations.
"""
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ (benchlib), also under python -P
from benchlib import SMOKE, figure, sized  # noqa: E402

PHOTO = sized(1024, 256)  # px a side of the pose + mask photo
WIDTH, HEIGHT = sized((768, 1024), (96, 128))  # the try-on canvas


def pose_and_mask_seconds(repeats=sized(5, 1)):
    import numpy as np
    from PIL import Image
    from skimage import data

    from editlab.models.tryon.mask import tryon_mask
    from editlab.models.tryon.pose import estimate_pose

    photo = np.asarray(Image.fromarray(data.astronaut()).resize((PHOTO, PHOTO), Image.LANCZOS))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        pose = estimate_pose(photo)
        tryon_mask(pose, "upper", grow=8, feather=8)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def graph_peak(case: str) -> int:
    """Run in a fresh process: 'fill' (tiny Flux Fill inpainting), 'flux' (tiny Flux on the same latent) or
    'flux_refs' (the same with the product as reference tokens); WIDTH x HEIGHT; return peak RSS in bytes."""
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
    canvas = torch.rand(1, HEIGHT, WIDTH, 3, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, HEIGHT, WIDTH)
    mask[:, HEIGHT // 5:HEIGHT * 4 // 5, WIDTH // 5:WIDTH * 4 // 5] = 1
    cond = fill.clip.encode_from_tokens_scheduled(fill.clip.tokenize("the person wearing the jacket"))
    if case == "flux_refs":
        product = torch.rand(1, HEIGHT, WIDTH, 3, generator=torch.Generator().manual_seed(1))
        cond, = EditLabReferenceTokens.execute(conditioning=cond, vae=fill.vae, image=product, method="offset",
                                               max_size=max(WIDTH, HEIGHT)).result
    if case == "fill":
        pos, neg, latent = InpaintModelConditioning().encode(cond, cond, canvas, fill.vae, mask, True)
    else:
        pos, neg, latent = cond, cond, {"samples": fill.vae.encode(canvas)}
    with torch.no_grad():
        comfy.sample.sample(fill.model, comfy.sample.prepare_noise(latent["samples"], 0), 2, 1.0, "euler", "simple",
                            pos, neg, latent["samples"], noise_mask=latent.get("noise_mask"), disable_pbar=True)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _peaks_in_subprocess(cases) -> list[int]:
    """graph_peak of each case in a child process: one child per case at full size; one child for all at the smoke
    size (the path is the same, the figure is not one to read)."""
    code = (f"import runpy; m = runpy.run_path({str(Path(__file__))!r}); "
            f"[print('PEAK', case, m['graph_peak'](case), flush=True) for case in {list(cases)!r}]")
    # -P: the working directory (the repo root, under make bench) stays off sys.path, as for the bench itself
    done = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=1200)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    peaks = dict(line.split()[1:3] for line in done.stdout.splitlines() if line.startswith("PEAK "))
    return [int(peaks[case]) for case in cases]


if __name__ == "__main__":
    seconds = pose_and_mask_seconds()
    figure("pose_mask_ms", seconds * 1000, f"{seconds * 1000:.0f} ms",
           f"pose + 'upper' mask per {PHOTO}x{PHOTO} photo (MediaPipe, CPU)")
    print(f"pose + 'upper' mask on a {PHOTO}x{PHOTO} photo (MediaPipe, CPU): {seconds * 1000:.0f} ms per image")
    cases = ("fill", "flux", "flux_refs")
    fill, flux, refs = _peaks_in_subprocess(cases) if SMOKE else [_peaks_in_subprocess([c])[0] for c in cases]
    mib = 2**20
    figure("refs_over_fill", refs / fill, f"{refs / fill:.3f}x",
           f"peak RSS of the try-on graph with reference tokens over the plain Fill graph, {WIDTH}x{HEIGHT}")
    figure("refs_over_flux", refs / flux, f"{refs / flux:.3f}x",
           "the same over the same Flux graph without references")
    print(f"peak RSS at {WIDTH}x{HEIGHT}: plain Fill graph {fill / mib:.0f} MiB; try-on with the product as reference "
          f"tokens {refs / mib:.0f} MiB: ratio {refs / fill:.2f}x (same Flux graph without references "
          f"{flux / mib:.0f} MiB: reference tokens cost {refs / flux:.2f}x)")
    print(json.dumps({"pose_mask_ms": seconds * 1000, "fill_peak_mib": fill / mib, "flux_peak_mib": flux / mib,
                      "flux_refs_peak_mib": refs / mib, "refs_over_fill": refs / fill, "refs_over_flux": refs / flux}))
