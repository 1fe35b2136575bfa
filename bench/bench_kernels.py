"""Fused kernels against the baselines a user would pick, each row measured from a clean state, forward and backward
separately (medians of ``RUNS`` = 10 timed runs on a GPU, CUDA events, ms).

  python bench/bench_kernels.py            (or: make bench, which runs every bench/)

Rows (issue 26), at the issue's sizes:
- SAE training step, width 4096 -> 65,536 latents, k 300 per token (BatchTopK), 4096 tokens, float32 parameters as
  the trainer keeps them: ``SparseAutoencoder.training_losses`` in eager torch (dense, ``EDITLAB_KERNELS=reference``),
  the same losses through a sparse torch step (torch's GEMM, then ``F.embedding_bag`` and ``index_add_`` in the
  backward, as EleutherAI sparsify's FusedEncoder computes them: ``kernels.sae.ops.sparse_torch_*``), through the
  Triton kernels, and sparsify's own encoder + decoder when ``import sparsify`` works (TopK per row, its own loss);
- the sparse decoder alone: ``F.embedding_bag``, the Triton kernels, sparsify's ``triton_decode``;
- attention, 4,096 image + 512 text tokens, 24 heads, head dim 128, bfloat16, 8 chosen text keys: SDPA alone
  (torch's default backend: cuDNN on recent GPUs; and its FlashAttention backend), SDPA with its log-sum-exp
  (``aten._scaled_dot_product_cudnn_attention`` / ``_flash_attention``; on the CPU its CPU flash kernel) plus the
  (N_q x S) product for the maps, the kernel with maps (one pass; and as two passes, the maps after the attention,
  to show what folding them in gains; the Flux map tap, Attention Maps and LODA's gradient pass run this one pass),
  what the Flux map tap ran before it (the host's SDPA + ``key_probabilities``, a second call), AFG through the
  host's dense-mask attention (a (B, 1, N, N) mask) and through the kernel's bias; and SDPA + a materialised float32
  softmax, forward only. LODA's backward is the kernel-with-maps row's backward (the output's and the maps'
  gradients together) against SDPA's.
A row that cannot run here (sparsify not installed, an op this torch lacks, a path that is forward-only) is printed
with its reason, never dropped.

Clean measurement (``measure``): before each row and each timed run the row group's gradients are freed (and the
garbage collector run before each memory reading); the peak is read from one run started with the peak statistics reset, above what is allocated
at that point (the same inputs are alive for every row of a group, outputs of earlier rows are gone), so the order
of the rows does not change a row's figures (tests/bench/test_bench_kernels_clean.py). The backward's figures are
of the backward alone (the forward runs untimed before each, its saved tensors counted in the base). On a GPU the
memory is the caching allocator's (``max_memory_allocated``) and L2 is flushed before each timed run; on the CPU a
dispatch mode counts the bytes of the storages the ops create and frees them as the storages die (``CpuMeter``).

First, correctness at those sizes on the GPU (``check_rows``; appended to out/bench/kernels_check.csv; the script
exits non-zero if one is above its tolerance). Rows are appended to out/bench/kernels.csv with the device, torch and
Triton versions. Without a CUDA GPU the script runs every row at toy sizes on the CPU through the torch references
(``dry_run``: the measuring code, not the kernels) and exits 0. The smoke run (benchlib) on a GPU: the same checks and
rows through the Triton kernels at small sizes (``SMALL``), nothing appended to the CSV files.
"""
from __future__ import annotations

import contextlib
import csv
import gc
import math
import os
import statistics
import sys
import time
import weakref
from pathlib import Path
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ (benchlib), also under python -P
from benchlib import ROOT, SMOKE, figure, note  # noqa: E402

from editlab.kernels.attention import attention, key_probabilities  # noqa: E402
from editlab.kernels.sae import decode, encode  # noqa: E402
from editlab.kernels.sae.ops import sparse_torch_decode, sparse_torch_encode  # noqa: E402
from editlab.models.saedit.sae import SAEConfig, SparseAutoencoder  # noqa: E402

OUT = ROOT / "out" / "bench" / "kernels.csv"
SMALL = {"attention": dict(img=256, txt=77, heads=2, dim=64, n_keys=3), "sae": dict(n=256, d=128, m=2048, k=16)}
TOY = {"attention": dict(img=64, txt=13, heads=2, dim=64, n_keys=3, dtype=torch.float32),
       "sae": dict(n=64, d=32, m=256, k=4)}
CHECK = ROOT / "out" / "bench" / "kernels_check.csv"  # correctness at the same sizes, on the same device
RUNS, WARMUP = 10, 2
DRY_RUNS = 3  # the CPU dry run checks the code, not the figures: fewer runs on a shared CPU


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


# -- measuring -----------------------------------------------------------------------------------------------------

class CudaMeter:
    """Peak of the CUDA caching allocator above what is allocated at ``start``; CUDA-event timing."""

    def start(self):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        self.base = torch.cuda.memory_allocated()

    def peak_mib(self) -> float:
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - self.base) / 2 ** 20

    def time_ms(self, fn) -> float:
        self._flush = getattr(self, "_flush", None)
        if self._flush is None:
            self._flush = torch.empty(256 * 2 ** 20, dtype=torch.int8, device="cuda")
        self._flush.zero_()  # L2 cold for every run, as triton.testing.do_bench
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return begin.elapsed_time(end)


class CpuMeter(TorchDispatchMode):
    """The CPU's stand-in for the allocator statistics (``max_memory_allocated`` minus what is allocated at
    ``start``): the bytes of every storage an op creates, counted until the storage dies (a weak reference per
    storage), less the bytes of the storages alive at ``start`` (those Python reaches: tensors and their gradients)
    that die meanwhile; the peak of that sum."""

    generation = 0

    def start(self):
        CpuMeter.generation += 1
        self.live, self.now, self.peak = {}, 0, 0
        for obj in gc.get_objects():
            if issubclass(type(obj), torch.Tensor):  # type(): no __class__ lookup (lazy modules warn on it)
                self._watch(obj, before=True)
                if obj.is_leaf and obj.requires_grad and obj.grad is not None:
                    self._watch(obj.grad, before=True)
        self.__enter__()

    def peak_mib(self) -> float:
        self.__exit__(None, None, None)
        CpuMeter.generation += 1
        self.live = {}
        return self.peak / 2 ** 20

    def _watch(self, t, before=False):
        if t.device.type != "cpu" or t.is_sparse or t.is_meta:
            return
        storage = t.untyped_storage()
        key = id(storage)
        if key in self.live or not storage.nbytes():
            return
        self.live[key] = storage.nbytes()
        if not before:
            self.now += storage.nbytes()
            self.peak = max(self.peak, self.now)
        weakref.finalize(storage, self._freed, key, CpuMeter.generation)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor):
                self._watch(t)
        return out

    def _freed(self, key, generation):
        if generation == CpuMeter.generation:
            self.now -= self.live.pop(key, 0)

    def time_ms(self, fn) -> float:
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1000


def meter_for(device) -> CudaMeter | CpuMeter:
    return CudaMeter() if torch.device(device).type == "cuda" else CpuMeter()


class Row(NamedTuple):
    """One implementation in a group: ``forward()`` returns what ``backward(out)`` differentiates (None: the row
    has no backward; ``why_not`` says why), or ``skip`` names why the row cannot run at all."""
    case: str
    impl: str
    forward: Callable | None
    backward: Callable | None = None
    why_not: str = ""
    skip: str = ""


class Group(NamedTuple):
    rows: list[Row]
    clean: Callable  # frees the group's gradients (and whatever a row left behind)


class Result(NamedTuple):
    case: str
    impl: str
    phase: str  # "fwd" or "bwd"
    ms: float  # median, nan when not run
    mib: float  # peak above the start of the phase, nan when not run
    runs: int
    status: str  # "ok" or "not run: <reason>"


def _collect(clean, full=True):
    """``clean()`` the group; ``full``: also the garbage collector and the CUDA cache (before a memory reading;
    between timed runs the references are dropped by count, and a collection costs ~0.5 s on a large heap)."""
    clean()
    if full:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def measure(row: Row, clean: Callable, meter, runs: int = RUNS, warmup: int = WARMUP) -> list[Result]:
    """The forward and (if any) the backward of ``row``, each from a clean state: peak from one run, then the median
    of ``runs`` timed runs (after ``warmup``)."""
    if row.skip:
        return [Result(row.case, row.impl, phase, math.nan, math.nan, 0, f"not run: {row.skip}")
                for phase in ("fwd", "bwd")]
    results = []
    _collect(clean)
    meter.start()
    out = row.forward()
    mib = meter.peak_mib()
    del out
    times = []
    for i in range(warmup + runs):
        _collect(clean, full=False)
        ms = meter.time_ms(row.forward)
        times.append(ms) if i >= warmup else None
    results.append(Result(row.case, row.impl, "fwd", statistics.median(times), mib, len(times), "ok"))
    if row.backward is None:
        results.append(Result(row.case, row.impl, "bwd", math.nan, math.nan, 0, f"not run: {row.why_not}"))
        _collect(clean, full=False)
        return results
    _collect(clean)
    out = row.forward()
    meter.start()
    row.backward(out)
    mib = meter.peak_mib()
    del out
    times = []
    for i in range(warmup + runs):
        _collect(clean, full=False)
        out = row.forward()
        ms = meter.time_ms(lambda: row.backward(out))
        del out
        times.append(ms) if i >= warmup else None
    _collect(clean, full=False)
    results.append(Result(row.case, row.impl, "bwd", statistics.median(times), mib, len(times), "ok"))
    return results


def measure_group(group: Group, device, order=None, **kw) -> list[Result]:
    """Every row of ``group`` (in ``order``, a list of row indices, when given)."""
    meter = meter_for(device)
    rows = group.rows if order is None else [group.rows[i] for i in order]
    return [r for row in rows for r in measure(row, group.clean, meter, **kw)]


def _freer(*tensors):
    def clean():
        for t in tensors:
            t.grad = None
    return clean


# -- the rows ------------------------------------------------------------------------------------------------------

def _sparsify(what: str):
    """sparsify's ``what`` (``fused_encoder`` / ``triton_decode``), or the reason it cannot be used here."""
    try:
        if what == "fused_encoder":
            from sparsify.fused_encoder import fused_encoder as fn
        else:
            from sparsify.utils import triton_decode as fn
        return fn, ""
    except Exception as e:  # not installed, or another API
        return None, f"sparsify's {what} unavailable: {type(e).__name__}: {e}"


def sae_group(n=4096, d=4096, m=65536, k=300, device="cuda", kernels="triton") -> Group:
    """The training step's rows: forward = the losses, backward = ``loss.backward()``."""
    dev = torch.device(device)
    sae = SparseAutoencoder(SAEConfig(act_size=d, dict_size=m, top_k=k, n_batches_to_dead=10 ** 9)).to(dev)
    sae.reset_parameters(torch.Generator().manual_seed(0))
    sae.train()
    x = torch.randn(n, d, device=dev, generator=torch.Generator(device=dev).manual_seed(1))
    case = f"sae_step n{n} d{d} m{m} k{k} fp32"

    def losses(mode):
        def fwd():
            with forced(mode):
                return sae.training_losses(x)["loss"]
        return fwd

    def sparse_torch():
        import editlab.kernels.sae as sae_kernels

        saved = sae_kernels.encode, sae_kernels.decode
        sae_kernels.encode, sae_kernels.decode = sparse_torch_encode, sparse_torch_decode
        try:
            return sae._sparse_training_losses(x)["loss"]
        finally:
            sae_kernels.encode, sae_kernels.decode = saved

    def backward(loss):
        loss.backward()

    rows = [Row(case, "eager torch (dense)", losses("reference"), backward),
            Row(case, "sparse torch (embedding_bag + index_add_)", sparse_torch, backward),
            Row(case, "triton kernels", losses(kernels), backward)]
    fused, why = _sparsify("fused_encoder")
    dec, why_dec = _sparsify("triton_decode")
    if fused is None or dec is None:
        rows.append(Row(case, "sparsify FusedEncoder + triton_decode (TopK)", None, skip=why or why_dec))
    else:
        W_t = sae.W_enc.detach().t().contiguous().requires_grad_(True)  # sparsify's encoder layout (m, d)

        def sparsify_step():
            top = fused(x - sae.b_dec, W_t, sae.b_enc, k, "topk")
            recon = dec(top.top_indices, top.top_acts, sae.W_dec.mT) + sae.b_dec
            return (recon - x).pow(2).sum(-1).mean()

        rows.append(Row(case, "sparsify FusedEncoder + triton_decode (TopK)", sparsify_step, backward))
        return Group(rows, _freer(*sae.parameters(), W_t))
    return Group(rows, _freer(*sae.parameters()))


def decoder_group(n=4096, d=4096, m=65536, k=300, device="cuda", kernels="triton") -> Group:
    dev = torch.device(device)
    g = torch.Generator(device=dev).manual_seed(0)
    W_dec = torch.randn(m, d, device=dev, generator=g).requires_grad_(True)
    values = torch.rand(n, k, device=dev, generator=g).requires_grad_(True)
    indices = torch.randint(0, m, (n, k), device=dev, generator=g)
    grad = torch.randn(n, d, device=dev, generator=g)
    case = f"sae_decode n{n} d{d} m{m} k{k} fp32"

    def ours():
        with forced(kernels):
            return decode(values, indices, W_dec)

    def backward(out):
        out.backward(grad)

    rows = [Row(case, "embedding_bag (eager)",
                lambda: F.embedding_bag(indices, W_dec, per_sample_weights=values, mode="sum"), backward),
            Row(case, "triton kernels", ours, backward)]
    dec, why = _sparsify("triton_decode")
    rows.append(Row(case, "sparsify triton_decode", None, skip=why) if dec is None else
                Row(case, "sparsify triton_decode", lambda: dec(indices, values, W_dec.mT), backward))
    return Group(rows, _freer(W_dec, values))


def _sdpa_with_lse(q, k, v):
    """(out, lse (B, H, N) float32) from torch's fused attention: cuDNN, else flash, on a GPU; the CPU flash kernel
    on the CPU."""
    if q.is_cuda:
        try:
            res = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, False, False)
        except Exception:
            res = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v)
    else:
        res = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)
    out, lse = res[0], res[1]
    return out, lse.reshape(q.shape[:3]).float()


def attention_group(img=4096, txt=512, heads=24, dim=128, n_keys=8, dtype=torch.bfloat16, device="cuda",
                    kernels="triton") -> Group:
    dev = torch.device(device)
    n = img + txt
    g = torch.Generator(device=dev).manual_seed(0)
    q, k, v = (torch.randn(1, heads, n, dim, device=dev, dtype=dtype, generator=g).requires_grad_(True)
               for _ in range(3))
    keys = torch.arange(1, 1 + n_keys)  # text first, as in Flux's joint sequence; on the host (no device read)
    keys_dev = keys.to(dev)
    bias = torch.full((1, 1, n, n_keys), -2.0, device=dev, dtype=torch.float32)
    w_out = torch.randn(1, heads, n, dim, device=dev, dtype=dtype, generator=g)
    w_probs = torch.randn(1, heads, n, n_keys, device=dev, generator=g)
    case = f"attention n{img}+{txt} h{heads} d{dim} {str(dtype).split('.')[-1]} keys{n_keys}"
    scale = dim ** -0.5

    def out_backward(out):
        out.backward(w_out)

    def maps_backward(res):
        torch.autograd.backward([res.out, res.probs], [w_out, w_probs])

    def sdpa_flash():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v)

    def lse_product():
        out, lse = _sdpa_with_lse(q, k, v)
        logits = (q @ k[:, :, keys_dev].transpose(-1, -2)).float() * scale
        return out, torch.exp(logits - lse[..., None])

    def tap_before():
        out = F.scaled_dot_product_attention(q, k, v)
        with forced(kernels):
            return out, key_probabilities(q, k, keys).probs

    def afg_dense():
        dense = torch.zeros(1, 1, n, n, device=dev, dtype=dtype)
        dense[..., keys_dev] = bias.to(dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=dense)

    def kernel(*args, fn=attention):
        def run():
            with forced(kernels):
                return fn(*args)
        return run

    def two_passes():  # the maps by a separate (Nq x S) pass after the attention pass (before the fold)
        from editlab.kernels.attention import triton_attention

        folded, triton_attention.FOLD_MAPS = triton_attention.FOLD_MAPS, False
        try:
            with forced(kernels):
                return attention(q, k, v, keys)
        finally:
            triton_attention.FOLD_MAPS = folded

    def materialised():
        out = F.scaled_dot_product_attention(q, k, v)
        probs = (q.float() @ k.float().transpose(-1, -2) * scale).softmax(-1)[..., keys_dev]
        return out, probs

    inference = "inference-only path (no gradient wanted)"
    rows = [Row(case, "sdpa alone (default backend)", lambda: F.scaled_dot_product_attention(q, k, v), out_backward),
            Row(case, "sdpa alone (flash backend)", sdpa_flash, out_backward),
            Row(case, "sdpa with lse + (Nq x S) product", lse_product, None,
                "torch's fused attention ops give no gradient through their log-sum-exp"),
            Row(case, "kernel: out+lse+maps", kernel(q, k, v, keys), maps_backward),
            Row(case, "kernel: out+lse+maps (two passes)", two_passes, maps_backward),
            Row(case, "kernel: out+lse (no maps)", kernel(q, k, v), lambda r: r.out.backward(w_out)),
            Row(case, "the tap before: sdpa + key_probabilities", tap_before, None, inference),
            Row(case, "afg: host dense-mask sdpa", afg_dense, out_backward),
            Row(case, "afg: kernel with bias", kernel(q, k, v, keys, bias), lambda r: r.out.backward(w_out)),
            Row(case, "sdpa + materialised fp32 probs", materialised, None,
                "an N x N float32 softmax: the forward alone is the point")]
    return Group(rows, _freer(q, k, v))


def all_groups(sizes: dict | None = None, device="cuda", kernels="triton") -> list[Group]:
    sizes = sizes or {"sae": {}, "attention": {}}
    return [sae_group(**sizes["sae"], device=device, kernels=kernels),
            decoder_group(**sizes["sae"], device=device, kernels=kernels),
            attention_group(**sizes["attention"], device=device, kernels=kernels)]


def run_groups(groups, device, **kw) -> list[Result]:
    results = []
    for group in groups:
        results += measure_group(group, device, **kw)
        del group
        gc.collect()
    return results


def show(results):
    for r in results:
        figure_text = f"{r.ms:9.3f} ms {r.mib:9.1f} MiB ({r.runs} runs)" if r.status == "ok" else r.status
        print(f"{r.case:46s} {r.impl:46s} {r.phase}  {figure_text}")


def _lookup(results, case_prefix, impl, phase):
    for r in results:
        if r.case.startswith(case_prefix) and r.impl == impl and r.phase == phase and r.status == "ok":
            return r
    return None


RATIOS = [  # (figure key, case prefix, ours, baseline, phase(s), label)
    ("sae_step_vs_eager", "sae_step", "triton kernels", "eager torch (dense)", ("fwd", "bwd"),
     "SAE training step (fwd + bwd) through the kernels over eager torch"),
    ("sae_step_vs_sparse_torch", "sae_step", "triton kernels", "sparse torch (embedding_bag + index_add_)",
     ("fwd", "bwd"), "SAE training step (fwd + bwd) through the kernels over the sparse torch step"),
    ("decoder_vs_embedding_bag", "sae_decode", "triton kernels", "embedding_bag (eager)", ("fwd", "bwd"),
     "sparse decoder fwd + bwd over embedding_bag"),
    ("maps_vs_sdpa_default", "attention", "kernel: out+lse+maps", "sdpa alone (default backend)", ("fwd",),
     "attention + maps over SDPA alone (default backend)"),
    ("maps_vs_lse_product", "attention", "kernel: out+lse+maps", "sdpa with lse + (Nq x S) product", ("fwd",),
     "attention + maps over SDPA with its LSE + the (Nq x S) product"),
    ("afg_vs_dense_mask", "attention", "afg: kernel with bias", "afg: host dense-mask sdpa", ("fwd",),
     "AFG forward through the kernel over the host's dense-mask attention"),
    ("loda_bwd_vs_sdpa_bwd", "attention", "kernel: out+lse+maps", "sdpa alone (default backend)",
     ("bwd",), "LODA's backward (the block's attention with maps, one pass) over SDPA's backward"),
]


def ratios(results) -> list[tuple[str, float, str]]:
    """(key, speed ratio baseline / ours, label) for each headline pair both of whose rows ran."""
    found = []
    for key, prefix, ours, base, phases, label in RATIOS:
        mine = [_lookup(results, prefix, ours, p) for p in phases]
        theirs = [_lookup(results, prefix, base, p) for p in phases]
        if all(mine) and all(theirs):
            found.append((key, sum(r.ms for r in theirs) / sum(r.ms for r in mine), label))
    return found


def record(results):
    """The headline ratios as bench figures (benchlib)."""
    for key, ratio, label in ratios(results):
        figure(key, ratio, f"{ratio:.2f}x", label)


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
    """Every row at toy sizes on the CPU through the torch references (the measuring code, not the kernels), and
    the correctness checks likewise; what runs without a GPU."""
    results = run_groups(all_groups(TOY, device="cpu", kernels="reference"), "cpu", runs=DRY_RUNS, warmup=1)
    show(results)
    ran = [r for r in results if r.status == "ok"]
    assert ran and all(r.runs == DRY_RUNS and r.ms >= 0 and r.mib >= 0 for r in ran), ran
    checks = check_rows(**{k: v for k, v in TOY["attention"].items() if k != "dtype"}, **TOY["sae"], device="cpu",
                        kernels="reference")
    assert checks and all(err <= tol for _, _, err, tol in checks), checks
    return results


def gpu_smoke():
    """On a GPU in the smoke run: the checks and the rows through the Triton kernels at small sizes."""
    checks = check_rows(**SMALL["attention"], **SMALL["sae"])
    for case, what, err, tol in checks:
        print(f"check {case:44s} {what:46s} {err:.2e} (tolerance {tol:.0e}) {'ok' if err <= tol else 'FAILED'}")
    results = run_groups(all_groups(SMALL), "cuda")
    show(results)
    record(results)
    failed = [c for c in checks if not c[2] <= c[3]]
    if failed:
        raise SystemExit(f"{len(failed)} correctness checks above tolerance: {failed}")
    return results


def main():
    if not torch.cuda.is_available():
        t = time.monotonic()
        dry_run()
        note("needs a CUDA GPU: none here, so it ran its dry run on the CPU (every row's measuring code through the "
             "torch references at toy sizes) and measured nothing")
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
    torch.cuda.empty_cache()
    results = run_groups(all_groups(), "cuda")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    new = not OUT.exists()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    with open(OUT, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(["time", "device", "torch", "triton", "case", "impl", "phase", "median_ms", "peak_mib", "runs",
                        "status"])
        for r in results:
            w.writerow([stamp, device, torch.__version__, triton.__version__, r.case, r.impl, r.phase,
                        f"{r.ms:.4f}", f"{r.mib:.1f}", r.runs, r.status])
    print(f"device: {device}; torch {torch.__version__}, triton {triton.__version__}")
    show(results)
    for key, ratio, label in ratios(results):
        print(f"{key:28s} {ratio:6.2f}x  {label}")
    print(f"appended to {OUT} and {CHECK}")
    record(results)
    if failed:
        raise SystemExit(f"{len(failed)} correctness checks above tolerance: {failed}")
    return results


if __name__ == "__main__":
    main()
