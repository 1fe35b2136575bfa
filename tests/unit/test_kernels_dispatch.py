"""The kernel dispatcher (EDITLAB_KERNELS) and the ComfyUI attention override factory, on the CPU (no interpreter:
on CPU tensors the dispatcher picks the torch references; test_kernels_attention.py covers the Triton path)."""
import pytest
import torch
import torch.nn.functional as F

from editlab.kernels import dispatch
from editlab.kernels.attention import AttentionOutput
from editlab.kernels.attention.comfy import MapRequest, token_map_override
from editlab.kernels.sae import decode, encode


def test_mode_values(monkeypatch):
    monkeypatch.delenv("EDITLAB_KERNELS", raising=False)
    assert dispatch.mode() == "auto"
    monkeypatch.setenv("EDITLAB_KERNELS", " Reference ")
    assert dispatch.mode() == "reference"
    monkeypatch.setenv("EDITLAB_KERNELS", "fast")
    with pytest.raises(ValueError, match="EDITLAB_KERNELS must be one of auto, reference, triton; got 'fast'"):
        dispatch.mode()


def test_cpu_tensors_and_forced_reference_take_the_reference(monkeypatch):
    monkeypatch.delenv("EDITLAB_KERNELS", raising=False)
    x = torch.randn(5, 8)
    assert not dispatch.use_triton(x)
    monkeypatch.setenv("EDITLAB_KERNELS", "reference")
    assert not dispatch.use_triton(x)
    if dispatch.triton_available():
        monkeypatch.setenv("EDITLAB_KERNELS", "triton")
        assert dispatch.use_triton(x)


def test_reference_sae_path_is_plain_math(monkeypatch):
    monkeypatch.setenv("EDITLAB_KERNELS", "reference")
    g = torch.Generator().manual_seed(0)
    x, W_enc, W_dec, b_dec = torch.randn(6, 8, generator=g), torch.randn(8, 20, generator=g), \
        torch.randn(20, 8, generator=g), torch.randn(8, generator=g)
    values, indices = encode(x, W_enc, b_dec, k=3)
    pre = torch.relu((x - b_dec) @ W_enc)
    assert torch.equal(values, pre.topk(3, dim=-1).values)
    codes = torch.zeros_like(pre).scatter_(1, indices, values)
    assert torch.allclose(decode(values, indices, W_dec, b_dec), codes @ W_dec + b_dec, atol=1e-5)


def host_attention(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False,
                   **kwargs):
    """ComfyUI's attention contract (attention_pytorch), restated with SDPA."""
    if not skip_reshape:
        b, n, inner = q.shape
        q, k, v = (t.view(b, -1, heads, inner // heads).transpose(1, 2) for t in (q, k, v))
    if mask is not None and mask.ndim == 3:
        mask = mask.unsqueeze(1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out if skip_output_reshape else out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)


def test_override_leaves_calls_nobody_asked_about_untouched():
    seen = []
    override = token_map_override(lambda q, k, v, options: None)
    q = torch.randn(2, 10, 32)
    sentinel = object()

    def func(*args, **kwargs):
        seen.append((args, kwargs))
        return sentinel

    opts = {"block_type": "double"}
    assert override(func, q, q, q, 4, transformer_options=opts, _inside_attn_wrapper=True) is sentinel
    (args, kwargs), = seen
    assert all(a is q for a in args[:3]) and args[3] == 4
    assert kwargs == {"transformer_options": opts, "_inside_attn_wrapper": True}  # passed on as they came
    assert kwargs["transformer_options"] is opts


@pytest.mark.parametrize("skip_reshape", [False, True])
@pytest.mark.parametrize("skip_output_reshape", [False, True])
def test_override_returns_the_host_layout_and_hands_over_the_maps(skip_reshape, skip_output_reshape):
    g = torch.Generator().manual_seed(1)
    B, H, N, D = 2, 3, 77, 16
    q, k, v = (torch.randn(B, H, N, D, generator=g) for _ in range(3))
    args = (q, k, v) if skip_reshape else tuple(t.transpose(1, 2).reshape(B, N, H * D) for t in (q, k, v))
    keys = torch.tensor([1, 5, 76])
    bias = -3 * torch.rand(B, 1, N, 3, generator=g)
    got = []

    def request(qh, kh, vh, options):
        assert qh.shape == (B, H, N, D) and options["block_index"] == 0
        return MapRequest(keys, bias, got.append)

    override = token_map_override(request)
    out = override(host_attention, *args, H, skip_reshape=skip_reshape, skip_output_reshape=skip_output_reshape,
                   transformer_options={"block_index": 0})
    dense = torch.zeros(B, 1, N, N)
    dense[..., keys] = bias
    want = host_attention(*args, H, mask=dense, skip_reshape=skip_reshape, skip_output_reshape=skip_output_reshape)
    assert out.shape == want.shape and torch.allclose(out, want, atol=1e-5)
    (result,) = got
    assert isinstance(result, AttentionOutput)
    logits = q @ k.transpose(-1, -2) / D ** 0.5 + dense
    assert torch.allclose(result.probs, logits.softmax(-1)[..., keys], atol=1e-6)


def test_override_chains_to_the_previous_override_and_respects_a_host_mask():
    g = torch.Generator().manual_seed(2)
    B, H, N, D = 1, 2, 9, 8
    q, k, v = (torch.randn(B, H, N, D, generator=g) for _ in range(3))
    calls = []

    def previous(func, q, k, v, *rest, **kwargs):  # another pack's override: doubles v, then calls func
        calls.append(func)
        return func(q, k, 2 * v, *rest, **kwargs)

    got = []
    override = token_map_override(lambda *a: MapRequest(torch.tensor([0, 3]), None, got.append), previous)
    mask = torch.zeros(B, N, N)
    mask[..., 4] = float("-inf")  # the host hides key 4
    out = override(host_attention, q, k, v, H, mask=mask, skip_reshape=True, skip_output_reshape=True)
    assert len(calls) == 1 and calls[0] is not host_attention
    want = host_attention(q, k, 2 * v, H, mask=mask, skip_reshape=True, skip_output_reshape=True)
    assert torch.allclose(out, want, atol=1e-5)
    logits = q @ k.transpose(-1, -2) / D ** 0.5 + mask[:, None]
    assert torch.allclose(got[0].probs, logits.softmax(-1)[..., [0, 3]], atol=1e-6)


def test_sae_training_on_the_cpu_keeps_the_dense_path(monkeypatch):
    from editlab.models.saedit.sae import SAEConfig, SparseAutoencoder

    monkeypatch.delenv("EDITLAB_KERNELS", raising=False)

    def not_here(self, x):
        raise AssertionError("the sparse kernels ran on CPU tensors")

    monkeypatch.setattr(SparseAutoencoder, "_sparse_training_losses", not_here)
    sae = SparseAutoencoder(SAEConfig(act_size=8, dict_size=32, top_k=2))
    sae.reset_parameters(torch.Generator().manual_seed(0))
    assert torch.isfinite(sae.training_losses(torch.randn(5, 8))["loss"])


def test_the_kernel_benchmark_runs_its_code_without_a_gpu():
    """bench/bench_kernels.py's own code at toy sizes on the CPU (what it does when no GPU is at hand)."""
    import runpy
    from pathlib import Path

    bench = runpy.run_path(str(Path(__file__).resolve().parents[2] / "bench" / "bench_kernels.py"))
    results = bench["dry_run"]()
    impls = {r.impl for r in results}
    assert {"eager torch (dense)", "sparse torch (embedding_bag + index_add_)", "triton kernels",
            "sdpa with lse + (Nq x S) product", "afg: host dense-mask sdpa",
            "the tap before: sdpa + key_probabilities"} <= impls
    assert all(r.status == "ok" or r.status.startswith("not run: ") for r in results)
    assert {r.phase for r in results} == {"fwd", "bwd"} and len(results) == 2 * len({(r.case, r.impl)
                                                                                      for r in results})


class _Boom(Exception):
    pass


def _kernel_tried(monkeypatch, ops_module, fn_name, behaviour):
    """Make the dispatcher try the kernel on CPU tensors (auto mode) with ``behaviour`` standing in for it."""
    monkeypatch.delenv("EDITLAB_KERNELS", raising=False)
    monkeypatch.setattr(dispatch, "unavailable_reason", lambda *t: None)
    monkeypatch.setattr(dispatch, "_logged", set())
    calls = []

    def stand_in(*args):
        calls.append(args)
        return behaviour(*args)

    target = getattr(ops_module, fn_name)
    monkeypatch.setattr(target, "apply", stand_in)
    return calls


@pytest.mark.parametrize("error", [TypeError("bad argument"), IndexError("kernel bug"), _Boom("anything"),
                                   torch.OutOfMemoryError("CUDA out of memory")], ids=lambda e: type(e).__name__)
def test_errors_other_than_kernel_unavailable_are_raised_not_replaced(monkeypatch, error):
    """A programming error, and an out-of-memory error (the reference would build larger intermediates), surface
    where they happened: the reference is not called."""
    from editlab.kernels.attention import ops as attn_ops
    from editlab.kernels.attention import reference
    from editlab.kernels.sae import ops as sae_ops

    def fails(*args):
        raise error

    monkeypatch.setattr(reference, "attention", lambda *a, **k: pytest.fail("the reference ran"))
    _kernel_tried(monkeypatch, attn_ops, "_TritonAttention", fails)
    q = torch.randn(1, 2, 5, 16)
    with pytest.raises(type(error)):
        attn_ops.attention(q, q, q, torch.tensor([1, 2]))
    _kernel_tried(monkeypatch, sae_ops, "SAEEncode", fails)
    with pytest.raises(type(error)):
        encode(torch.randn(4, 8), torch.randn(8, 16), torch.zeros(8), k=3)


def test_kernel_unavailable_falls_back_for_that_call_only_logged_once_per_reason(monkeypatch, caplog):
    """A call the kernel cannot serve (head dim 320 > 256) takes the reference; the next call that it can serve
    tries the kernel again (nothing is disabled for the process); the reason is logged once."""
    from editlab.kernels.attention import ops as attn_ops

    sentinel = (torch.zeros(1), torch.zeros(1), None)
    calls = _kernel_tried(monkeypatch, attn_ops, "_TritonAttention", lambda *a: sentinel)
    if not dispatch.triton_available():
        pytest.skip("the kernel's own checks import Triton")
    g = torch.Generator().manual_seed(0)
    wide = torch.randn(1, 2, 6, 320, generator=g)
    narrow = torch.randn(1, 2, 6, 64, generator=g)
    with caplog.at_level("INFO", logger="editlab.kernels.dispatch"):
        for _ in range(2):
            got = attn_ops.attention(wide, wide, wide)
            want = torch.softmax(wide.double() @ wide.double().transpose(-1, -2) / 320 ** 0.5, -1) @ wide.double()
            assert torch.allclose(got.out.double(), want, atol=1e-5)
            assert attn_ops.attention(narrow, narrow, narrow).out is sentinel[0]  # the kernel, per call
    assert len(calls) == 2  # the two narrow calls; the wide ones never reached the kernel
    lines = [r.getMessage() for r in caplog.records if "cannot serve" in r.getMessage()]
    assert len(lines) == 1 and "head dim 320 is above the kernel's 256" in lines[0], lines


def test_sae_kernel_unavailable_per_call(monkeypatch, caplog):
    from editlab.kernels.sae import ops as sae_ops

    calls = _kernel_tried(monkeypatch, sae_ops, "SAEEncode",
                          lambda *a: (_ for _ in ()).throw(dispatch.KernelUnavailable("no room here")))
    x, W_enc, b_dec = torch.randn(4, 8), torch.randn(8, 16), torch.zeros(8)
    want = torch.relu(x @ W_enc).topk(3, dim=-1)
    with caplog.at_level("INFO", logger="editlab.kernels.dispatch"):
        for _ in range(2):
            values, indices = encode(x, W_enc, b_dec, k=3)
            assert torch.equal(values, want.values) and torch.equal(indices, want.indices)
    assert len(calls) == 2  # tried at every call
    assert sum("no room here" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(dispatch.KernelUnavailable, match="float64"):  # forced: the caller sees the condition
        monkeypatch.setenv("EDITLAB_KERNELS", "triton")
        monkeypatch.setattr(sae_ops.SAEEncode, "apply", lambda *a: pytest.fail("ran"))
        encode(x.double(), W_enc.double(), b_dec.double(), k=3)


def test_triton_out_of_resources_counts_as_unavailable(monkeypatch):
    """Triton's launch error for a tiling this GPU cannot hold (shared memory, registers) is the named condition."""
    triton = pytest.importorskip("triton")
    from triton.runtime.errors import OutOfResources

    from editlab.kernels.sae import ops as sae_ops

    def fails(*args):
        raise OutOfResources(300000, 232448, "shared memory")

    _kernel_tried(monkeypatch, sae_ops, "SAEEncode", fails)
    x, W_enc, b_dec = torch.randn(4, 8), torch.randn(8, 16), torch.zeros(8)
    assert torch.equal(encode(x, W_enc, b_dec, k=3)[0], torch.relu(x @ W_enc).topk(3, dim=-1).values)
    monkeypatch.setenv("EDITLAB_KERNELS", "triton")
    with pytest.raises(dispatch.KernelUnavailable, match="OutOfResources"):
        encode(x, W_enc, b_dec, k=3)
