"""SAE kernels (kernels/sae) under Triton's CPU interpreter against plain torch math written here, in float64.

Each test forces the Triton path (``EDITLAB_KERNELS=triton``); the file runs in a child process with
``TRITON_INTERPRET=1`` (see kernel_interpreter.py) unless this process already imported Triton that way. Shapes
are small and odd on purpose (lengths 1, 77, 333; widths that are no power of two); tolerances are per dtype,
relative to the largest reference entry.
"""
import pytest
import torch

from editlab.tests.unit.kernel_interpreter import keep_only_the_child_runner

pytest.importorskip("triton")

from editlab.kernels.sae import decode, encode  # noqa: E402

TOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}
SHAPES = [(1, 16, 64, 4), (77, 40, 333, 7), (333, 24, 100, 1)]  # (n, d, m, k)


@pytest.fixture(autouse=True)
def forced_triton(monkeypatch):
    monkeypatch.setenv("EDITLAB_KERNELS", "triton")


def close(got, want, dtype, what):
    got, want = got.detach().double(), want.detach().double()
    err = float((got - want).abs().max() / want.abs().max().clamp_min(1e-6))
    assert err <= TOL[dtype], f"{what}: relative error {err:.2e} above {TOL[dtype]:.0e} ({dtype})"


def problem(n, d, m, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    W_enc = torch.randn(d, m, generator=g) / d ** 0.5
    W_dec = torch.randn(m, d, generator=g) / d ** 0.5
    b_dec = torch.randn(d, generator=g) * 0.1
    b_enc = torch.randn(m, generator=g) * 0.1
    return [t.to(dtype).requires_grad_(True) for t in (x, W_enc, b_enc, b_dec, W_dec)]


def dense_pre(x, W_enc, b_enc, b_dec):
    """relu((x - b_dec) @ W_enc + b_enc) in float64."""
    return torch.relu((x.double() - b_dec.double()) @ W_enc.double() + b_enc.double())


def as_set(values, indices):
    return {(i, int(j)) for i in range(indices.shape[0]) for j, v in zip(indices[i], values[i]) if v > 0}


CASES = [(*s, torch.float32) for s in SHAPES] + [(*SHAPES[1], dt) for dt in (torch.float16, torch.bfloat16)]


@pytest.mark.parametrize("n,d,m,k,dtype", CASES, ids=lambda v: str(v).replace("torch.", ""))
def test_topk_per_row_forward_and_backward(n, d, m, k, dtype):
    x, W_enc, b_enc, b_dec, W_dec = problem(n, d, m, dtype)
    values, indices = encode(x, W_enc, b_dec, b_enc, k=k)
    pre = dense_pre(x, W_enc, b_enc, b_dec)
    want_v, want_i = pre.topk(k, dim=-1)
    if dtype == torch.float32:  # same set as torch.topk (no near-ties in float32 at these sizes)
        assert as_set(values, indices) == as_set(want_v, want_i)
    else:  # low precision: every kept entry is within rounding of the k-th largest, or above it
        kth = want_v[:, -1:]
        picked = pre.gather(1, indices)
        assert bool((picked >= kth - 4 * TOL[dtype] * pre.abs().max()).all())
    close(values, pre.gather(1, indices), dtype, "values")

    # decode + backward against dense float64 math on the kernel's chosen entries
    out = decode(values, indices, W_dec, b_dec)
    g = torch.Generator().manual_seed(1)
    w_out = torch.randn(out.shape, generator=g)
    (out.float() * w_out).sum().backward()
    got = [t.grad.clone() for t in (x, W_enc, b_enc, b_dec, W_dec)]

    leaves = [t.detach().double().requires_grad_(True) for t in (x, W_enc, b_enc, b_dec, W_dec)]
    pre64 = dense_pre(*leaves[:4])
    keep = torch.zeros_like(pre64, dtype=torch.bool).scatter_(1, indices, True)
    codes = pre64 * keep
    recon = codes @ leaves[4] + leaves[3]
    close(out, recon, dtype, "decode")
    (recon * w_out.double()).sum().backward()
    for name, a, leaf in zip(("x", "W_enc", "b_enc", "b_dec", "W_dec"), got, leaves):
        close(a, leaf.grad, dtype, f"grad {name}")


@pytest.mark.parametrize("n,d,m,k", SHAPES[1:], ids=lambda s: str(s))
def test_batch_topk_keeps_the_k_times_n_largest_of_the_batch(n, d, m, k):
    x, W_enc, b_enc, b_dec, W_dec = problem(n, d, m, torch.float32, seed=2)
    values, indices = encode(x, W_enc, b_dec, b_enc, k=k, batch=True)
    pre = dense_pre(x, W_enc, b_enc, b_dec)
    flat_v, flat_i = pre.reshape(-1).topk(k * n)
    want = {(int(i) // m, int(i) % m) for i, v in zip(flat_i, flat_v) if v > 0}
    assert as_set(values, indices) == want
    assert values.shape[1] == max(sum(1 for r, _ in want if r == i) for i in range(n))  # padded to the fullest row
    close(values, pre.gather(1, indices) * (values > 0), torch.float32, "values")

    out = decode(values, indices, W_dec, b_dec)
    out.square().sum().backward()
    leaves = [t.detach().double().requires_grad_(True) for t in (x, W_enc, b_enc, b_dec, W_dec)]
    pre64 = dense_pre(*leaves[:4])
    keep = torch.zeros(n * m, dtype=torch.bool).scatter_(0, flat_i, True).reshape(n, m)
    ((pre64 * keep) @ leaves[4] + leaves[3]).square().sum().backward()
    for name, t, leaf in zip(("x", "W_enc", "b_enc", "b_dec", "W_dec"), (x, W_enc, b_enc, b_dec, W_dec), leaves):
        close(t.grad, leaf.grad, torch.float32, f"grad {name}")


def test_threshold_keeps_every_entry_above_it_per_token():
    x, W_enc, b_enc, b_dec, _ = problem(77, 40, 333, torch.float32, seed=3)
    pre = dense_pre(x, W_enc, b_enc, b_dec)
    threshold = float(pre.detach().quantile(0.97))
    values, indices = encode(x, W_enc, b_dec, b_enc, threshold=threshold)
    want = {(i, j) for i, j in (pre > threshold).nonzero().tolist()}
    assert as_set(values, indices) == want
    # each token's code depends on that token only: the first row alone gives the same set
    v1, i1 = encode(x[:1], W_enc, b_dec, b_enc, threshold=threshold)
    assert as_set(v1, i1) == {(0, j) for r, j in want if r == 0}


def test_encode_keeps_no_dense_activations_for_the_backward():
    x, W_enc, b_enc, b_dec, W_dec = problem(77, 40, 333, torch.float32)
    saved = []

    def pack(t):
        saved.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        values, indices = encode(x, W_enc, b_dec, b_enc, k=7)
        decode(values, indices, W_dec, b_dec)
    assert saved and all(torch.Size(s).numel() < 77 * 333 for s in saved), saved


@pytest.mark.parametrize("rule", [dict(k=7), dict(k=7, batch=True), dict(threshold=0.5)], ids=str)
def test_float32_gemm_branch_selects_the_same_codes(monkeypatch, rule):
    """On CUDA float32 without TF32 the encoder's GEMM is torch's (cuBLAS); same codes as the Triton GEMM."""
    from editlab.kernels.sae import ops

    x, W_enc, b_enc, b_dec, _ = problem(77, 40, 333, torch.float32, seed=5)
    triton_codes = encode(x, W_enc, b_dec, b_enc, **rule)
    monkeypatch.setattr(ops, "_cublas_float32", lambda x: True)
    torch_codes = encode(x, W_enc, b_dec, b_enc, **rule)
    assert as_set(*torch_codes) == as_set(*triton_codes)
    pre = dense_pre(x, W_enc, b_enc, b_dec)
    close(torch_codes[0], pre.gather(1, torch_codes[1]) * (torch_codes[0] > 0), torch.float32, "values")


def test_the_autotuned_encoder_launch_with_each_config(monkeypatch):
    """The GPU's launch path of the encoder GEMM, one config at a time (the interpreter cannot time them)."""
    from editlab.kernels.sae import triton_encode as te

    x, W_enc, b_enc, b_dec, _ = problem(77, 40, 333, torch.float16, seed=6)
    want = dense_pre(x, W_enc, b_enc, b_dec)
    monkeypatch.setattr(te, "_autotuned", lambda t: True)
    for cfg in te._ENCODE_CONFIGS:
        monkeypatch.setattr(te, "_encode_tuned", te._tuned([cfg]))
        close(te.pre_activations(x, W_enc, b_dec, b_enc), want, torch.float16, f"activations with {cfg}")


def test_encode_needs_one_selection_rule():
    x, W_enc, b_enc, b_dec, _ = problem(4, 16, 32, torch.float32)
    with pytest.raises(ValueError, match="exactly one"):
        encode(x, W_enc, b_dec, k=2, threshold=0.1)
    with pytest.raises(ValueError, match="exactly one"):
        encode(x, W_enc, b_dec)


def test_sae_training_step_through_the_kernels_matches_the_dense_step(monkeypatch):
    """SparseAutoencoder.training_losses (Matryoshka groups, dead latents' auxiliary loss) through the kernels gives
    the dense path's losses, statistics, threshold and gradients."""
    from editlab.models.saedit.sae import SAEConfig, SparseAutoencoder

    config = SAEConfig(act_size=24, dict_size=96, top_k=5, group_sizes=[16, 32, 48], aux_k=8, n_batches_to_dead=1)
    x = torch.randn(77, 24, generator=torch.Generator().manual_seed(4))
    results = {}
    for mode in ("reference", "triton"):
        monkeypatch.setenv("EDITLAB_KERNELS", mode)
        sae = SparseAutoencoder(config)
        sae.reset_parameters(torch.Generator().manual_seed(0))
        with torch.no_grad():
            sae.b_dec.copy_(x.mean(0))
            sae.steps_since_fired[::3] = 5  # some latents dead: the auxiliary loss is on
        stats = sae.training_losses(x)
        stats["loss"].backward()
        results[mode] = (stats, sae)
    (ref, sae_ref), (got, sae_k) = results["reference"], results["triton"]
    assert float(ref["aux_loss"]) > 0
    for key in ref:
        assert torch.allclose(got[key], ref[key], rtol=1e-5, atol=1e-6), key
    assert torch.allclose(sae_k.threshold, sae_ref.threshold, rtol=1e-6)
    assert torch.equal(sae_k.steps_since_fired, sae_ref.steps_since_fired)
    for (name, p), q in zip(sae_k.named_parameters(), sae_ref.parameters()):
        if q.grad is None:
            assert p.grad is None or not p.grad.any(), name
        else:
            assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6), name


keep_only_the_child_runner(globals(), __file__)
