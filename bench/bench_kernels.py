"""Fused kernels against their torch baselines, on a CUDA GPU (``triton.testing.do_bench``, medians in ms).

  python bench/bench_kernels.py            (or: make bench, which runs every bench/)

SAE training step (encode + decode, forward + backward), width 4096 -> 65,536 latents, k 300 per token, 4096
tokens, float32 parameters as the trainer keeps them: ``SparseAutoencoder.training_losses`` through the kernels
against the same call in eager torch (``EDITLAB_KERNELS=reference``); speed ratio and peak memory of each. The
sparse decoder alone against ``F.embedding_bag`` and, when installed, EleutherAI sparsify's Triton decoder.
Attention with token maps, 4,096 image + 512 text tokens, 24 heads, head dim 128, bfloat16, 8 chosen text keys:
- ``F.scaled_dot_product_attention`` alone (the anchor: its FlashAttention-2 backend; the default backend too),
- the kernel: output + log-sum-exp + probabilities on the chosen keys (and the same with a bias on them),
- materialising the probabilities: SDPA plus softmax(q k^T) in float32 to read the chosen columns (what the maps
  cost without the kernel);
with the extra memory each needs over SDPA's output. Targets (issue 14): SAE step >= 1.5x eager with lower peak
memory; maps >= 0.8x SDPA alone and >= 3x faster than materialising, O(N) extra memory.

First, correctness at those sizes on the GPU (``check_rows``: errors against SDPA, float32 softmax and eager torch,
with tolerances; appended to out/bench/kernels_check.csv; the script exits non-zero if one is above its tolerance).
Rows are appended to out/bench/kernels.csv with the device, torch and Triton versions. Without a CUDA GPU the
script says so, runs its own code at toy sizes on the CPU through the torch references (``dry_run``), and exits 0.
The smoke run (benchlib) on a GPU: the same checks and rows through the Triton kernels at small sizes (``SMALL``),
nothing appended to the CSV files; without a GPU, the dry run as at full size.
"""
from __future__ import annotations

import contextlib
import csv
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ (benchlib), also under python -P
from benchlib import ROOT, SMOKE, figure, note  # noqa: E402

from editlab.kernels.attention import attention  # noqa: E402
from editlab.kernels.sae import decode, encode  # noqa: E402
from editlab.models.saedit.sae import SAEConfig, SparseAutoencoder  # noqa: E402

OUT = ROOT / "out" / "bench" / "kernels.csv"
SMALL = {"attention": dict(img=256, txt=77, heads=2, dim=64, n_keys=3), "sae": dict(n=256, d=128, m=2048, k=16)}
CHECK = ROOT / "out" / "bench" / "kernels_check.csv"  # correctness at the same sizes, on the same device


class forced:
    """EDITLAB_KERNELS set for a block."""

    def __init__(self, mode):
        self.mode = mode

    def __enter__(self):
        self.old = os.environ.get("EDITLAB_KERNELS")
        os.environ["EDITLAB_KERNELS"] = self.mode

    def __exit__(self, *exc):
        if self.old is None:
            os.environ.pop("EDITLAB_KERNELS", None)
        else:
            os.environ["EDITLAB_KERNELS"] = self.old


def measure(fn):
    """(median ms, peak MiB above what was allocated before) of ``fn``."""
    from triton.testing import do_bench

    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    return float(do_bench(fn, warmup=25, rep=200, return_mode="median")), peak


def cpu_measure(fn):
    """The dry run's stand-in for ``measure`` (no GPU): wall time of one call, no memory figure."""
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1000, 0.0


def sae_rows(n=4096, d=4096, m=65536, k=300, device="cuda", timer=measure, kernels="triton"):
    dev = torch.device(device)
    sae = SparseAutoencoder(SAEConfig(act_size=d, dict_size=m, top_k=k, n_batches_to_dead=10 ** 9)).to(dev)
    sae.reset_parameters(torch.Generator().manual_seed(0))
    sae.train()
    x = torch.randn(n, d, device=dev)

    def step():
        for p in sae.parameters():
            p.grad = None
        sae.training_losses(x)["loss"].backward()

    rows = {}
    for mode in ("reference", kernels):
        with forced(mode):
            rows[mode] = timer(step)
    (eager_ms, eager_mib), (k_ms, k_mib) = rows["reference"], rows[kernels]
    case = f"sae_step n{n} d{d} m{m} k{k} fp32"
    return [(case, "eager torch", eager_ms, eager_mib, 1.0),
            (case, "triton kernels", k_ms, k_mib, eager_ms / k_ms)]


def decoder_rows(n=4096, d=4096, m=65536, k=300, device="cuda", timer=measure, kernels="triton"):
    """The sparse decoder alone, forward + backward: ours, torch's embedding_bag, and EleutherAI sparsify's Triton
    decoder when it is installed (``pip install eai-sparsify``; its API has moved between versions: skipped if it
    does not fit)."""
    import torch.nn.functional as F

    dev = torch.device(device)
    g = torch.Generator(device=dev).manual_seed(0)
    W_dec = torch.randn(m, d, device=dev, generator=g).requires_grad_(True)
    values = torch.rand(n, k, device=dev, generator=g).requires_grad_(True)
    indices = torch.randint(0, m, (n, k), device=dev, generator=g)
    grad = torch.randn(n, d, device=dev, generator=g)
    impls = {"embedding_bag (eager)": lambda: F.embedding_bag(indices, W_dec, per_sample_weights=values, mode="sum")}

    def ours():
        with forced(kernels):
            return decode(values, indices, W_dec)

    impls["triton kernels"] = ours
    try:
        from sparsify.utils import triton_decode

        impls["sparsify triton_decode"] = lambda: triton_decode(indices, values, W_dec)
    except Exception as e:  # not installed, or another API
        print(f"sparsify's decoder not measured: {type(e).__name__}: {e}")
    case = f"sae_decode fwd+bwd n{n} d{d} m{m} k{k} fp32"
    rows, base = [], None
    for name, fn in impls.items():
        def step(fn=fn):
            values.grad = W_dec.grad = None
            fn().backward(grad)
        try:
            ms, mib = timer(step)
        except Exception as e:
            print(f"{name} failed: {type(e).__name__}: {e}")
            continue
        base = base or ms
        rows.append((case, name, ms, mib, base / ms))
    return rows


def attention_rows(img=4096, txt=512, heads=24, dim=128, n_keys=8, dtype=torch.bfloat16, device="cuda",
                   timer=measure, kernels="triton"):
    dev = torch.device(device)
    n = img + txt
    g = torch.Generator(device=dev).manual_seed(0)
    q, k, v = (torch.randn(1, heads, n, dim, device=dev, dtype=dtype, generator=g) for _ in range(3))
    keys = torch.arange(1, 1 + n_keys, device=dev)  # text first, as in Flux's joint sequence
    bias = torch.full((1, 1, n, n_keys), -2.0, device=dev, dtype=torch.float32)

    def sdpa():  # the anchor: SDPA's FlashAttention-2 backend
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION) if q.is_cuda else contextlib.nullcontext():
            return F.scaled_dot_product_attention(q, k, v)

    def sdpa_default():  # whatever torch picks on this GPU (cuDNN attention on recent ones)
        return F.scaled_dot_product_attention(q, k, v)

    def plain():
        return attention(q, k, v)

    def maps():
        return attention(q, k, v, keys)

    def maps_bias():
        return attention(q, k, v, keys, bias)

    def materialised():
        out = F.scaled_dot_product_attention(q, k, v)
        probs = (q.float() @ k.float().transpose(-1, -2) * dim ** -0.5).softmax(-1)[..., keys]
        return out, probs

    with forced(kernels):
        sdpa_ms, sdpa_mib = timer(sdpa)
        case = f"attention n{img}+{txt} h{heads} d{dim} {str(dtype).split('.')[-1]} keys{n_keys}"
        rows = [(case, "sdpa alone (flash backend)", sdpa_ms, sdpa_mib, 1.0)]
        for name, fn in (("kernel: out+lse+maps", maps), ("kernel: out+lse+maps+bias", maps_bias),
                         ("sdpa + materialised probs", materialised), ("kernel: out+lse (no maps)", plain),
                         ("sdpa alone (default backend)", sdpa_default)):
            ms, mib = timer(fn)
            rows.append((case, name, ms, mib, sdpa_ms / ms))
    kernel_ms = rows[1][2]
    rows.append((case, "materialised / kernel (speed-up)", rows[3][2], rows[3][3], rows[3][2] / kernel_ms))
    return rows


def _rel(got, want) -> float:
    """max |got - want| / max |want|, in float64."""
    got, want = got.detach().double(), want.detach().double()
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))


def check_rows(img=4096, txt=512, heads=24, dim=128, n_keys=8, n=4096, d=4096, m=65536, k=300, device="cuda",
               kernels="triton"):
    """Correctness at the bench's sizes, on the device: each row (case, what, error, tolerance). The kernels against
    what they replace: SDPA's output (float32 math on the same bf16 inputs), softmax columns and log-sum-exp from a
    float32 q k^T, SDPA with the bias as a dense mask, gradients against SDPA's; the SAE training step's loss and
    gradients against eager torch on the same parameters, and the TopK codes' agreement."""
    dev = torch.device(device)
    rows = []
    g = torch.Generator(device=dev).manual_seed(1)
    N = img + txt
    case = f"attention n{img}+{txt} h{heads} d{dim} bfloat16 keys{n_keys}"
    for dtype, tol in ((torch.bfloat16, 2e-2), (torch.float16, 3e-3)):
        name = str(dtype).split(".")[-1]
        q, k_, v = (torch.randn(1, heads, N, dim, device=dev, dtype=dtype, generator=g) for _ in range(3))
        keys = torch.arange(1, 1 + n_keys, device=dev)
        with forced(kernels):
            got = attention(q, k_, v, keys)
        want = F.scaled_dot_product_attention(q.float(), k_.float(), v.float())
        rows.append((case.replace("bfloat16", name), "out vs sdpa (fp32 math)", _rel(got.out, want), tol))
        lse_err = probs_err = 0.0
        for h in range(heads):  # one head at a time: the dense reference is N x N
            logits = q[0, h].float() @ k_[0, h].float().T * dim ** -0.5
            lse_err = max(lse_err, _rel(got.lse[0, h], logits.logsumexp(-1)))
            probs_err = max(probs_err, _rel(got.probs[0, h], logits.softmax(-1)[:, keys]))
        rows.append((case.replace("bfloat16", name), "lse vs fp32 logsumexp", lse_err, 1e-4))
        rows.append((case.replace("bfloat16", name), "maps vs fp32 softmax columns", probs_err, 1e-3))
        bias = -4 * torch.rand(1, 1, N, n_keys, device=dev, generator=g)
        dense = torch.zeros(1, 1, N, N, device=dev).index_copy_(-1, keys, bias)
        with forced(kernels):
            biased = attention(q, k_, v, keys, bias)
        want_b = F.scaled_dot_product_attention(q.float(), k_.float(), v.float(), attn_mask=dense)
        rows.append((case.replace("bfloat16", name), "out with bias vs sdpa + dense mask", _rel(biased.out, want_b),
                     tol))
        del dense, want_b
    # gradients through the output (no maps), bf16, against SDPA's backward in float32
    q, k_, v = (torch.randn(1, heads, N, dim, device=dev, dtype=torch.bfloat16, generator=g).requires_grad_(True)
                for _ in range(3))
    w = torch.randn(1, heads, N, dim, device=dev, generator=g)
    with forced(kernels):
        (attention(q, k_, v, keys).out.float() * w).sum().backward()
    leaves = [t.detach().float().requires_grad_(True) for t in (q, k_, v)]
    (F.scaled_dot_product_attention(*leaves) * w).sum().backward()
    for name, t, leaf in zip("qkv", (q, k_, v), leaves):
        rows.append((case, f"grad {name} vs sdpa backward (fp32)", _rel(t.grad, leaf.grad), 5e-2))
    del q, k_, v, w, leaves
    torch.cuda.empty_cache() if dev.type == "cuda" else None

    # the SAE training step at the trainer's size, kernels against eager torch on the same parameters and tokens
    case = f"sae_step n{n} d{d} m{m} k{k} fp32"
    x = torch.randn(n, d, device=dev, generator=g)
    sae = SparseAutoencoder(SAEConfig(act_size=d, dict_size=m, top_k=k, n_batches_to_dead=10 ** 9)).to(dev)
    sae.reset_parameters(torch.Generator().manual_seed(0))
    sae.train()
    state = {key: t.clone() for key, t in sae.state_dict().items()}
    results = {}
    for mode in ("reference", kernels):
        sae.load_state_dict(state)
        for p_ in sae.parameters():
            p_.grad = None
        with forced(mode):
            stats = sae.training_losses(x)
            stats["loss"].backward()
            codes = encode(x, sae.W_enc, sae.b_dec, sae.b_enc if sae.config.encoder_bias else None, k=k)
        results[mode] = (float(stats["loss"].detach()), {name: p_.grad.clone() for name, p_ in sae.named_parameters()
                                                 if p_.grad is not None}, codes)
    (loss_r, grads_r, codes_r), (loss_t, grads_t, codes_t) = results["reference"], results[kernels]
    rows.append((case, "loss vs eager", abs(loss_t - loss_r) / abs(loss_r), 1e-4))
    for name in grads_r:
        rows.append((case, f"grad {name} vs eager", _rel(grads_t[name], grads_r[name]), 1e-3))
    same = (codes_t[1].sort(-1).values == codes_r[1].sort(-1).values).float().mean()
    rows.append((case, "TopK indices differing from eager (fraction)", 1 - float(same), 1e-3))
    return rows


def dry_run():
    """The bench's code on the CPU at toy sizes, through the torch references (what runs without a GPU)."""
    rows = sae_rows(n=64, d=32, m=256, k=4, device="cpu", timer=cpu_measure, kernels="reference")
    rows += decoder_rows(n=64, d=32, m=256, k=4, device="cpu", timer=cpu_measure, kernels="reference")[:2]
    rows += attention_rows(img=64, txt=13, heads=2, dim=64, n_keys=3, dtype=torch.float32, device="cpu",
                           timer=cpu_measure, kernels="reference")
    assert len(rows) == 2 + 2 + 7 and all(r[2] >= 0 and math.isfinite(r[4]) for r in rows), rows
    checks = check_rows(img=64, txt=13, heads=2, dim=64, n_keys=3, n=64, d=32, m=256, k=4, device="cpu",
                        kernels="reference")
    assert checks and all(err <= tol for _, _, err, tol in checks), checks
    return rows


def gpu_smoke():
    """On a GPU in the smoke run: the checks and the rows through the Triton kernels at small sizes."""
    checks = check_rows(**SMALL["attention"], **SMALL["sae"])
    for case, what, err, tol in checks:
        print(f"check {case:44s} {what:46s} {err:.2e} (tolerance {tol:.0e}) {'ok' if err <= tol else 'FAILED'}")
    rows = sae_rows(**SMALL["sae"]) + decoder_rows(**SMALL["sae"]) + attention_rows(**SMALL["attention"])
    for case, impl, ms, mib, ratio in rows:
        print(f"{case:48s} {impl:36s} {ms:9.3f} ms {mib:9.1f} MiB  x{ratio:.2f}")
    record(rows)
    failed = [c for c in checks if not c[2] <= c[3]]
    if failed:
        raise SystemExit(f"{len(failed)} correctness checks above tolerance: {failed}")
    return rows


def record(rows):
    """The headline ratios as bench figures (benchlib): each kernel's speed over its baseline."""
    wanted = {"triton kernels": ("sae_step_speedup", "SAE training step through the kernels over eager torch"),
              "kernel: out+lse+maps": ("maps_vs_sdpa", "attention + maps over SDPA alone (flash backend)"),
              "materialised / kernel (speed-up)": ("maps_vs_materialised", "attention + maps over materialising")}
    for case, impl, ms, mib, ratio in rows:
        if case.startswith("sae_decode") and impl == "triton kernels":
            figure("decoder_vs_embedding_bag", ratio, f"{ratio:.2f}x",
                   f"sparse decoder fwd + bwd over embedding_bag, {case}")
        elif impl in wanted and not case.startswith("sae_decode"):
            key, label = wanted[impl]
            figure(key, ratio, f"{ratio:.2f}x", f"{label}, {case}")


def main():
    if not torch.cuda.is_available():
        t = time.monotonic()
        dry_run()
        note("needs a CUDA GPU: none here, so it ran its dry run on the CPU (the bench's code through the torch "
             "references at toy sizes) and measured nothing")
        print(f"bench_kernels: needs a CUDA GPU (none here); a dry run of its code on the CPU passed in "
              f"{time.monotonic() - t:.2f} s. Run `python bench/bench_kernels.py` on a GPU machine.")
        return []
    if SMOKE:
        return gpu_smoke()
    import triton

    device = torch.cuda.get_device_name()
    checks = check_rows()
    failed = [c for c in checks if not c[2] <= c[3]]
    CHECK.parent.mkdir(parents=True, exist_ok=True)
    with open(CHECK, "a", newline="") as f:
        w = csv.writer(f)
        if f.tell() == 0:
            w.writerow(["time", "device", "torch", "triton", "case", "check", "error", "tolerance", "ok"])
        for case, what, err, tol in checks:
            w.writerow([time.strftime("%Y-%m-%dT%H:%M:%S"), device, torch.__version__, triton.__version__, case, what,
                        f"{err:.3e}", f"{tol:.0e}", err <= tol])
    for case, what, err, tol in checks:
        print(f"check {case:44s} {what:46s} {err:.2e} (tolerance {tol:.0e}) {'ok' if err <= tol else 'FAILED'}")
    rows = sae_rows() + decoder_rows() + attention_rows()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    new = not OUT.exists()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    with open(OUT, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(["time", "device", "torch", "triton", "case", "impl", "median_ms", "peak_mib",
                        "speed_vs_baseline"])
        for case, impl, ms, mib, ratio in rows:
            w.writerow([stamp, device, torch.__version__, triton.__version__, case, impl, f"{ms:.4f}", f"{mib:.1f}",
                        f"{ratio:.3f}"])
    print(f"device: {device}; torch {torch.__version__}, triton {triton.__version__}")
    for case, impl, ms, mib, ratio in rows:
        print(f"{case:48s} {impl:36s} {ms:9.3f} ms {mib:9.1f} MiB  x{ratio:.2f}")
    print(f"appended to {OUT} and {CHECK}")
    record(rows)
    if failed:
        raise SystemExit(f"{len(failed)} correctness checks above tolerance: {failed}")
    return rows


if __name__ == "__main__":
    main()
