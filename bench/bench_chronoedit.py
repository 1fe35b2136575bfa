"""ChronoEdit on the tiny Wan 2.1 I2V, measured in one run: time and peak memory of a reasoning edit (8 latent frames
for the first k steps, then 2) against the plain 2-frame edit, each printed next to the ratio the token counts
predict (latent frames x steps, summed over the steps; attention grows faster than that, so time may exceed it).

Peak memory: the CUDA allocator's peak on a GPU; on a CPU the process's resident memory sampled every millisecond
above its level before the run, in a child process whose C allocator maps every block of 64 kB or more on its own
(MALLOC_MMAP_THRESHOLD_), so freed tensors leave the resident set and it follows the live tensors. The ratios are
what carries over; the absolute numbers (a tiny model) do not.
"""
import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ (benchlib), also under python -P
from benchlib import figure, sized  # noqa: E402


def host(cpu: bool):
    from editlab.client.hostenv import comfyui_path

    sys.path.insert(0, str(comfyui_path()))
    from comfy.cli_args import args

    args.cpu = cpu


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Peak:
    """Peak memory of a block: CUDA allocator peak, or sampled resident memory above the starting level."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = self.top = _rss()
            self.running = True
            self.thread = threading.Thread(target=self._watch, daemon=True)
            self.thread.start()
        return self

    def _watch(self):
        while self.running:
            self.top = max(self.top, _rss())
            time.sleep(0.001)

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated() - self.base
        else:
            self.running = False
            self.thread.join()
            self.bytes = max(self.top - self.base, 0)


def measure(size: int, frames: int, steps: int, k: int, repeats: int, cpu: bool):
    host(cpu)
    from editlab.models.tiny import build_tiny_models
    from editlab.nodes import chronoedit, host as h

    device = h.compute_device()
    with torch.inference_mode():
        wan = build_tiny_models("wan21_i2v", 0)
        clip = wan.clip
        pos = clip.encode_from_tokens_scheduled(clip.tokenize("the cup is now red"))
        neg = clip.encode_from_tokens_scheduled(clip.tokenize(""))
        image = torch.rand((1, size, size, 3), generator=torch.Generator().manual_seed(0))
        conds = {}
        for name, reasoning in (("plain", False), ("reasoning", True)):
            conds[name] = chronoedit.EditLabChronoEditConditioning.execute(
                positive=pos, negative=neg, vae=wan.vae, image=image, target_area=size * size, width=size,
                height=size, reasoning=reasoning, reasoning_frames=frames).result
        tokens_per_frame = (size // 16) ** 2

        def run(name):
            c = conds[name]
            return chronoedit.EditLabTemporalReasoningSampler.execute(
                model=wan.model, positive=c[0], negative=c[1], latent=c[2], seed=0, steps=steps, cfg=5.0,
                sampler_name="uni_pc", scheduler="simple", reasoning_steps=k if name == "reasoning" else 0,
                without_clip_vision=True).result  # random weights, no CLIP vision model: a dry run

        for name in conds:  # warm up (model load, kernels)
            run(name)
        times, peaks = {n: [] for n in conds}, {n: [] for n in conds}
        for _ in range(repeats):  # interleaved, so drift hits both alike
            for name in conds:
                with Peak(device) as peak:
                    t = time.perf_counter()
                    run(name)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    times[name].append(time.perf_counter() - t)
                peaks[name].append(peak.bytes)
    work = {"plain": 2 * steps, "reasoning": frames * k + 2 * (steps - k)}  # latent frames x steps
    attention = (frames ** 2 * k + 4 * (steps - k)) / (4 * steps)  # frames^2 x steps: attention's share
    t = {n: statistics.median(v) for n, v in times.items()}
    m = {n: statistics.median(v) for n, v in peaks.items()}
    print(f"tiny Wan 2.1 I2V on {device}, {size}x{size} px ({tokens_per_frame} tokens a frame), uni_pc, cfg 5, "
          f"{steps} steps; reasoning: {frames} latent frames for k = {k} steps, then 2")
    print(f"  time   plain {t['plain'] * 1e3:8.1f} ms   reasoning {t['reasoning'] * 1e3:8.1f} ms   "
          f"ratio {t['reasoning'] / t['plain']:.2f}   expected from frames x steps "
          f"{work['reasoning'] / work['plain']:.2f} ({work['reasoning']} / {work['plain']}; attention alone, "
          f"frames^2 x steps: {attention:.2f})")
    mem_ratio = m["reasoning"] / m["plain"] if m["plain"] else float("nan")
    figure("time_ratio", t["reasoning"] / t["plain"], f"{t['reasoning'] / t['plain']:.2f}x",
           f"reasoning edit ({frames} frames for {k} of {steps} steps) over the plain edit, tiny Wan, {size} px")
    figure("time_ratio_expected", work["reasoning"] / work["plain"], f"{work['reasoning'] / work['plain']:.2f}x",
           "the same, expected from latent frames x steps")
    figure("peak_ratio", mem_ratio, f"{mem_ratio:.2f}x", f"peak memory of the reasoning edit over the plain edit "
                                                       f"({'CUDA allocator' if device.type == 'cuda' else 'CPU RSS'})")
    print(f"  peak   plain {m['plain'] / 2**20:8.1f} MB   reasoning {m['reasoning'] / 2**20:8.1f} MB   "
          f"ratio {mem_ratio:.2f}   expected from frames at the widest step {frames / 2:.2f} "
          f"(attention alone: {(frames / 2) ** 2:.2f})")
    return t, m, work


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=sized(256, 64), help="edit side in px (a multiple of 16)")
    parser.add_argument("--frames", type=int, default=sized(8, 4), help="latent frames with reasoning (authors: 8)")
    parser.add_argument("--steps", type=int, default=sized(10, 2))
    parser.add_argument("--k", type=int, default=sized(5, 1), help="reasoning steps before the drop")
    parser.add_argument("--repeats", type=int, default=sized(3, 1))
    parser.add_argument("--gpu", action="store_true", help="run on the GPU where there is one")
    a = parser.parse_args()
    if not a.gpu and os.environ.get("MALLOC_MMAP_THRESHOLD_") != "65536":  # see the module's docstring
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        code = subprocess.run([sys.executable, __file__, *sys.argv[1:]], env=env).returncode
        if code:  # a clean exit must not stop bench/run_all.py, which runs the benches in its own process
            sys.exit(code)
        return
    measure(a.size, a.frames, a.steps, a.k, a.repeats, cpu=not a.gpu)


if __name__ == "__main__":
    main()
