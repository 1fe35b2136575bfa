"""Attention with token maps (kernels/attention) under Triton's CPU interpreter, against
``F.scaled_dot_product_attention`` and plain softmax math written here.

The file runs in a child process with ``TRITON_INTERPRET=1`` (see kernel_interpreter.py). Lengths 1, 77 (a CLIP
context), 333 (77 text + 256 image tokens, a joint sequence) and cross-attention (queries != keys), head dims 64 and
128, float32 / float16 / bfloat16 with per-dtype tolerances (relative to the largest reference entry).
"""
import pytest
import torch
import torch.nn.functional as F

from editlab.tests.unit.kernel_interpreter import keep_only_the_child_runner

pytest.importorskip("triton")

from editlab.kernels.attention import attention, key_probabilities  # noqa: E402

TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
LSE_TOL = {torch.float32: 1e-5, torch.float16: 1e-4, torch.bfloat16: 1e-4}  # lse: fp32 math on the same inputs
# (B, H, Nq, Nk, D)
SHAPES = [(1, 1, 1, 1, 64), (2, 3, 77, 77, 64), (1, 2, 333, 333, 128), (2, 2, 256, 77, 64),
          (1, 2, 64, 128, 64), (1, 1, 50, 64, 80), (1, 2, 70, 90, 256)]
# the last three: key blocks without masks; a head dim of 80; the largest head dim, 256
CASES = [(*s, torch.float32) for s in SHAPES] + [(*s, dt) for s in SHAPES[1:3] for dt in (torch.float16,
                                                                                             torch.bfloat16)]
ids = lambda v: str(v).replace("torch.", "")  # noqa: E731


@pytest.fixture(autouse=True)
def forced_triton(monkeypatch):
    monkeypatch.setenv("EDITLAB_KERNELS", "triton")


def close(got, want, tol, what, floor=1e-6):
    """max |got - want| relative to max |want| (or ``floor`` where the reference is all but zero)."""
    got, want = got.detach().double(), want.detach().double()
    err = float((got - want).abs().max() / want.abs().max().clamp_min(floor))
    assert err <= tol, f"{what}: relative error {err:.2e} above {tol:.0e}"


def qkv(B, H, Nq, Nk, D, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, n, D, generator=g).to(dtype) for n in (Nq, Nk, Nk)]


def chosen_keys(Nk):
    """A few distinct keys, the first and last included (ragged-edge blocks)."""
    return torch.tensor(sorted({0, Nk // 3, Nk // 2, Nk - 1}))


def plain_logits(q, k):
    return q.double() @ k.double().transpose(-1, -2) / q.shape[-1] ** 0.5


@pytest.mark.parametrize("B,H,Nq,Nk,D,dtype", CASES, ids=ids)
def test_without_maps_it_is_sdpa_and_returns_the_log_sum_exp(B, H, Nq, Nk, D, dtype):
    q, k, v = qkv(B, H, Nq, Nk, D, dtype)
    result = attention(q, k, v)
    assert result.out.dtype == dtype and result.out.shape == (B, H, Nq, D) and result.probs is None
    close(result.out, F.scaled_dot_product_attention(q.float(), k.float(), v.float()), TOL[dtype], "out")
    close(result.lse, torch.logsumexp(plain_logits(q, k), -1), LSE_TOL[dtype], "lse")


@pytest.mark.parametrize("B,H,Nq,Nk,D,dtype", CASES, ids=ids)
def test_token_maps_are_the_softmax_restricted_to_the_chosen_keys(B, H, Nq, Nk, D, dtype):
    q, k, v = qkv(B, H, Nq, Nk, D, dtype, seed=1)
    keys = chosen_keys(Nk)
    result = attention(q, k, v, keys)
    want = plain_logits(q, k).softmax(-1)[..., keys]
    assert result.probs.shape == (B, H, Nq, keys.numel())
    close(result.probs, want, LSE_TOL[dtype] * 10, "probs")
    close(result.out, F.scaled_dot_product_attention(q.float(), k.float(), v.float()), TOL[dtype], "out")
    maps_only = key_probabilities(q, k, keys)
    assert maps_only.out is None
    close(maps_only.probs, want, LSE_TOL[dtype] * 10, "key_probabilities")


@pytest.mark.parametrize("B,H,Nq,Nk,D,dtype", CASES, ids=ids)
def test_bias_lands_on_the_chosen_keys_only(B, H, Nq, Nk, D, dtype):
    q, k, v = qkv(B, H, Nq, Nk, D, dtype, seed=2)
    keys = chosen_keys(Nk)
    g = torch.Generator().manual_seed(3)
    bias = -4 * torch.rand(B, 1, Nq, keys.numel(), generator=g)  # per query, shared by the heads
    dense = torch.zeros(B, 1, Nq, Nk)
    dense[..., keys] = bias
    result = attention(q, k, v, keys, bias)
    close(result.out, F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=dense),
          TOL[dtype], "out with bias")
    logits = plain_logits(q, k) + dense.double()
    close(result.lse, torch.logsumexp(logits, -1), LSE_TOL[dtype], "lse with bias")
    close(result.probs, logits.softmax(-1)[..., keys], LSE_TOL[dtype] * 10, "probs with bias")


@pytest.mark.parametrize("keys", [[3, 5, 9], [150, 160, 170], [330]], ids=["text first", "middle", "last block"])
def test_bias_on_keys_clustered_in_a_few_blocks(keys):
    """The kernel reads the bias only in the key blocks holding chosen keys; the other blocks run without it."""
    q, k, v = qkv(1, 2, 333, 333, 64, torch.float16, seed=11)
    keys = torch.tensor(keys)
    bias = -3 * torch.rand(1, 2, 333, keys.numel(), generator=torch.Generator().manual_seed(12))
    dense = torch.zeros(1, 2, 333, 333)
    dense[..., keys] = bias
    result = attention(q, k, v, keys, bias)
    close(result.out, F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=dense),
          TOL[torch.float16], "out")
    close(result.probs, (plain_logits(q, k) + dense.double()).softmax(-1)[..., keys], 1e-3, "probs")


@pytest.mark.parametrize("Nk", [128, 130], ids=["keys divide the blocks", "ragged keys"])
def test_the_autotuned_launch_with_each_config(monkeypatch, Nk):
    """The GPU's launch path (autotuner, EVEN_N heuristic, grid from the config), one config at a time: the
    interpreter cannot time them, so each runs alone."""
    from editlab.kernels.attention import triton_attention as ta

    q, k, v = qkv(1, 2, 130, Nk, 64, torch.float16, seed=13)
    keys = torch.tensor([1, 2, 70])
    bias = -2 * torch.rand(1, 1, 130, 3, generator=torch.Generator().manual_seed(14))
    dense = torch.zeros(1, 1, 130, Nk)
    dense[..., keys] = bias
    want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=dense)
    monkeypatch.setattr(ta, "_autotuned", lambda t: True)
    for cfg in ta._FORWARD_CONFIGS:
        monkeypatch.setattr(ta, "_forward_tuned", ta._tuned([cfg]))
        close(attention(q, k, v, keys, bias).out, want, TOL[torch.float16], f"out with {cfg}")


GRAD_TOL = {torch.float32: 5e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}
GRAD_CASES = [(1, 1, 1, 1, 64, torch.float32), (2, 2, 77, 77, 64, torch.float32), (1, 1, 100, 333, 128, torch.float32),
              (1, 2, 77, 77, 64, torch.float16), (1, 2, 77, 77, 64, torch.bfloat16), (1, 1, 40, 70, 256, torch.float32)]


@pytest.mark.parametrize("maps_only", [False, True], ids=["out+maps+lse", "maps+lse only"])
@pytest.mark.parametrize("B,H,Nq,Nk,D,dtype", GRAD_CASES, ids=ids)
def test_gradients_match_plain_attention(B, H, Nq, Nk, D, dtype, maps_only):
    """Gradients for q, k, v and the bias, through the output, the maps and the log-sum-exp at once."""
    q, k, v = [t.requires_grad_(True) for t in qkv(B, H, Nq, Nk, D, dtype, seed=4)]
    keys = chosen_keys(Nk)
    heads_in_bias = 1 if maps_only else H  # also a bias broadcast over the heads
    bias = (-2 * torch.rand(B, heads_in_bias, Nq, keys.numel())).requires_grad_(True)
    g = torch.Generator().manual_seed(5)
    w_out, w_probs = torch.randn(B, H, Nq, D, generator=g), torch.randn(B, H, Nq, keys.numel(), generator=g)
    w_lse = torch.randn(B, H, Nq, generator=g)
    if maps_only:
        result = key_probabilities(q, k, keys, bias)
        loss = (result.probs * w_probs).sum() + (result.lse * w_lse).sum()
    else:
        result = attention(q, k, v, keys, bias)
        loss = (result.out.float() * w_out).sum() + (result.probs * w_probs).sum() + (result.lse * w_lse).sum()
    loss.backward()

    leaves = [t.detach().double().requires_grad_(True) for t in (q, k, v, bias)]
    q2, k2, v2, b2 = leaves
    dense = torch.zeros(B, heads_in_bias, Nq, Nk, dtype=torch.float64).index_copy(-1, keys, b2)
    logits = plain_logits(q2, k2) + dense
    p, lse = logits.softmax(-1), logits.logsumexp(-1)
    want = (p[..., keys] * w_probs.double()).sum() + (lse * w_lse.double()).sum()
    if not maps_only:
        want = want + (p @ v2 * w_out.double()).sum()
    want.backward()
    for name, t, leaf in zip("q k v bias".split(), (q, k, v, bias), leaves):
        if maps_only and name == "v":
            assert t.grad is None or not t.grad.any()
            continue
        close(t.grad, leaf.grad, GRAD_TOL[dtype], f"grad {name}", floor=0.1)  # one key: q and bias grads are 0


def test_nothing_of_the_attention_matrix_size_is_kept_for_the_backward():
    B, H, N, D = 1, 2, 333, 64
    q, k, v = [t.requires_grad_(True) for t in qkv(B, H, N, N, D, torch.float32, seed=10)]
    keys, saved = chosen_keys(N), []

    def pack(t):
        saved.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = attention(q, k, v, keys, torch.zeros(B, 1, N, keys.numel()))
    assert saved and all(torch.Size(s).numel() <= B * H * N * D for s in saved), saved  # O(N) per head
    result.out.sum().backward()  # and the backward runs from that state


def test_inputs_are_checked():
    q, k, v = qkv(1, 2, 8, 9, 64, torch.float32)
    with pytest.raises(ValueError, match="bias needs keys"):
        attention(q, k, v, None, torch.zeros(1, 1, 8, 2))
    with pytest.raises(ValueError, match="0..8"):
        attention(q, k, v, torch.tensor([3, 9]))
    with pytest.raises(ValueError, match="bias must be"):
        attention(q, k, v, torch.tensor([3, 4]), torch.zeros(1, 1, 7, 2))


def test_comfy_override_runs_the_kernel_in_the_host_layout():
    from editlab.kernels.attention.comfy import MapRequest, token_map_override

    B, H, N, D = 1, 2, 333, 64
    q, k, v = qkv(B, H, N, N, D, torch.float16, seed=6)
    flat = [t.transpose(1, 2).reshape(B, N, H * D) for t in (q, k, v)]
    keys, got = torch.tensor([0, 10, 76]), []
    override = token_map_override(lambda *a: MapRequest(keys, None, got.append))

    def host(*args, **kwargs):
        raise AssertionError("the host's attention should not run when maps are asked for")

    out = override(host, *flat, H, transformer_options={})
    want = F.scaled_dot_product_attention(q.float(), k.float(), v.float()).transpose(1, 2).reshape(B, N, H * D)
    assert out.shape == (B, N, H * D) and out.dtype == torch.float16
    close(out, want, TOL[torch.float16], "override out")
    close(got[0].probs, plain_logits(q, k).softmax(-1)[..., keys], 1e-3, "override maps")


# -- ConceptSplit on Flux: the map tap and the attention fixing guidance through the kernel ----------------------

def _flux_call(patch, monkeypatch, mode, q, k, v, host):
    monkeypatch.setenv("EDITLAB_KERNELS", mode)
    from editlab.models.conceptsplit.flux import TEXT_LENGTH

    options = {"block_type": "double", "block_index": 0, "cond_or_uncond": [0, 1],  # row 0 conditional
               TEXT_LENGTH: FLUX_T}  # the forward's text length, as the host's forward carries it
    return patch(host, q, k, v, q.shape[1], skip_reshape=True, skip_output_reshape=True, transformer_options=options)


def _sdpa_host(calls):
    def host(q, k, v, heads, mask=None, skip_reshape=False, skip_output_reshape=False, **kwargs):
        calls.append(mask)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return host


FLUX_T, FLUX_GRID, CONCEPTS = 7, (4, 4), [[1, 2], [4]]  # 7 text tokens, then a 4x4 image grid


def _tap_maps_by_hand(q, k, bias=None):
    """Row 0 (conditional), image queries: the probabilities over all keys (``bias``: a dense additive mask first),
    averaged over heads, each concept's keys summed, on the grid, resized to 8x8."""
    logits = plain_logits(q[:1], k[:1]) + (0 if bias is None else bias[:1].double())
    probs = logits.softmax(-1).mean(1)[0, FLUX_T:]
    want = torch.stack([probs[:, c].sum(-1).reshape(FLUX_GRID) for c in CONCEPTS]).float()
    return F.interpolate(want[None], size=(8, 8), mode="bilinear", align_corners=False)[0]


def _counting_passes(monkeypatch):
    """Counts the token-map attention calls (each one pass over the keys) and fails a separate maps-only pass."""
    import editlab.kernels.attention.comfy as comfy_override
    import editlab.models.conceptsplit.flux as flux

    passes = []

    def counted(*a, **kw):
        passes.append(1)
        return attention(*a, **kw)

    def separate(*a, **kw):
        raise AssertionError("the maps took a second pass over the keys")

    monkeypatch.setattr(comfy_override, "attention", counted)
    monkeypatch.setattr(flux, "key_probabilities", separate)
    return passes


@pytest.mark.parametrize("mode", ["reference", "triton"])
def test_flux_map_tap_takes_its_maps_from_the_attention_pass_itself(monkeypatch, mode):
    """Issue 26: the map tap's maps come out of the block's attention call (one pass over the keys), on the kernel
    and on the torch reference alike; the output is the host's attention's, the maps the softmax written here."""
    from types import SimpleNamespace

    from editlab.models.conceptsplit.flux import FluxMapTap

    n = FLUX_T + 16
    q, k, v = qkv(2, 3, n, n, 64, torch.float32, seed=7)
    tap = FluxMapTap(CONCEPTS, {"double.0": SimpleNamespace()}, (8, 8), FLUX_GRID)
    calls, passes = [], _counting_passes(monkeypatch)
    out = _flux_call(tap, monkeypatch, mode, q, k, v, _sdpa_host(calls))
    assert calls == [] and passes == [1]  # one attention pass served the block and the maps
    close(out, F.scaled_dot_product_attention(q, k, v), 1e-5, "block output")
    close(tap.maps(), _tap_maps_by_hand(q, k), 1e-5, "maps")


def test_flux_map_tap_behind_an_override_that_runs_its_own_attention_still_records(monkeypatch):
    """An override of another make further in that ignores the function it is handed (runs attention of its own):
    the kernel's maps never arrive, so the tap takes them in a pass of their own; the output is that override's."""
    from types import SimpleNamespace

    import editlab.models.conceptsplit.flux as flux

    n = FLUX_T + 16
    q, k, v = qkv(2, 3, n, n, 64, torch.float32, seed=11)
    own = []

    def theirs(func, q, k, v, heads, **kwargs):
        own.append(1)
        return 2 * F.scaled_dot_product_attention(q, k, v)

    tap = flux.FluxMapTap(CONCEPTS, {"double.0": SimpleNamespace()}, (8, 8), FLUX_GRID, previous=theirs)
    out = _flux_call(tap, monkeypatch, "reference", q, k, v, _sdpa_host([]))
    assert own == [1]
    close(out, 2 * F.scaled_dot_product_attention(q, k, v), 1e-6, "their output")
    close(tap.maps(), _tap_maps_by_hand(q, k), 1e-5, "maps from a separate pass")


@pytest.mark.parametrize("afg_outside", [True, False], ids=["AFG wraps the tap", "the tap wraps AFG"])
def test_the_map_tap_and_afg_in_one_chain_share_one_pass(monkeypatch, afg_outside):
    """Two EditLab overrides that both ask for the kernel, chained either way: one attention call serves both (the
    outer one's function is handed in, the inner one adds its request), the output is AFG's dense-mask output and the
    maps are the probabilities the block really used (AFG's bias included)."""
    from types import SimpleNamespace

    from editlab.models.conceptsplit.flux import TEXT_LENGTH, FluxAFG, FluxMapTap

    n = FLUX_T + 16
    q, k, v = qkv(2, 2, n, n, 64, torch.float32, seed=12)
    masks = (torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(13)) > 0.5).float()
    blocks = {"double.0": SimpleNamespace()}
    if afg_outside:
        tap = FluxMapTap(CONCEPTS, blocks, (8, 8), FLUX_GRID)
        outer = afg = FluxAFG(CONCEPTS, masks, blocks, 3.0, FLUX_GRID, previous=tap)
    else:
        afg = FluxAFG(CONCEPTS, masks, blocks, 3.0, FLUX_GRID)
        outer = tap = FluxMapTap(CONCEPTS, blocks, (8, 8), FLUX_GRID, previous=afg)
    calls, passes = [], _counting_passes(monkeypatch)
    out = _flux_call(outer, monkeypatch, "reference", q, k, v, _sdpa_host(calls))
    assert calls == [] and passes == [1]
    dense = afg.bias(q, "double.0", {"cond_or_uncond": [0, 1], TEXT_LENGTH: FLUX_T})
    close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=dense), 1e-5, "AFG output")
    close(tap.maps(), _tap_maps_by_hand(q, k, dense), 1e-5, "maps under AFG's bias")


def test_flux_afg_through_the_kernel_equals_the_dense_mask(monkeypatch):
    from types import SimpleNamespace

    from editlab.models.conceptsplit.flux import FluxAFG

    n = FLUX_T + 16
    q, k, v = qkv(2, 2, n, n, 64, torch.float32, seed=8)
    masks = (torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(9)) > 0.5).float()
    outs, calls = {}, {}
    for mode in ("reference", "triton"):
        afg = FluxAFG(CONCEPTS, masks, {"double.0": SimpleNamespace()}, 3.0, FLUX_GRID, inspect=8)
        calls[mode] = []
        outs[mode] = (_flux_call(afg, monkeypatch, mode, q, k, v, _sdpa_host(calls[mode])), afg.outside)
    # on both paths the keyed bias replaces the host's attention: no (n, n) mask is built for it, with or without
    # Triton (the reference is chunked over queries)
    assert calls["triton"] == [] and calls["reference"] == []
    from editlab.models.conceptsplit.flux import TEXT_LENGTH

    dense = F.scaled_dot_product_attention(q, k, v, attn_mask=afg.bias(q, "double.0", {"cond_or_uncond": [0, 1],
                                                                                      TEXT_LENGTH: FLUX_T}))
    close(outs["reference"][0], dense, 1e-5, "AFG output (reference) against the dense-mask formula")
    close(outs["triton"][0], outs["reference"][0], 1e-5, "AFG output")
    assert outs["triton"][1][0] == pytest.approx(outs["reference"][1][0], rel=1e-6)  # the inspection record
    # and the bias changed something: the conditional row moved, the unconditional row did not
    plain = F.scaled_dot_product_attention(q, k, v)
    assert not torch.allclose(outs["triton"][0][0], plain[0], atol=1e-4)
    close(outs["triton"][0][1], plain[1], 1e-5, "unconditional row")


# -- issue 26: repeated keys, -inf biases, device reads, autotune keys, the backward's fallback ------------------

def dense_reference(q, k, v, keys, bias):
    """out, lse, probs in float64 with the bias of each slot added to its key's column (a repeated key: the sum)."""
    logits = plain_logits(q, k)
    if bias is not None:
        logits = logits + bias.double() @ F.one_hot(keys, k.shape[2]).double()
    p = logits.softmax(-1)
    return p @ v.double(), logits.logsumexp(-1), p[..., keys]


@pytest.mark.parametrize("with_bias", [False, True], ids=["no bias", "bias"])
@pytest.mark.parametrize("maps_only", [False, True], ids=["attention", "key_probabilities"])
def test_repeated_keys_give_the_dense_gradients_through_the_kernel(with_bias, maps_only):
    B, H, N, D = 1, 2, 77, 64
    q, k, v = [t.requires_grad_(True) for t in qkv(B, H, N, N, D, torch.float32, seed=20)]
    keys = torch.tensor([5, 40, 5, 76, 40, 5])
    g = torch.Generator().manual_seed(21)
    bias = (-2 * torch.rand(B, 1, N, 6, generator=g)).requires_grad_(True) if with_bias else None
    w_out, w_probs, w_lse = torch.randn(B, H, N, D, generator=g), torch.randn(B, H, N, 6, generator=g), \
        torch.randn(B, H, N, generator=g)
    r = key_probabilities(q, k, keys, bias) if maps_only else attention(q, k, v, keys, bias)
    loss = (r.probs * w_probs).sum() + (r.lse * w_lse).sum() + (0 if maps_only else (r.out * w_out).sum())
    leaves = (q, k) + (() if maps_only else (v,)) + ((bias,) if with_bias else ())
    grads = torch.autograd.grad(loss, leaves)
    want_out, want_lse, want_probs = dense_reference(q, k, v, keys, bias)
    close(r.probs, want_probs, 1e-5, "probs")
    want_loss = (want_probs * w_probs.double()).sum() + (want_lse * w_lse.double()).sum() + \
        (0 if maps_only else (want_out * w_out.double()).sum())
    for i, (got, exp) in enumerate(zip(grads, torch.autograd.grad(want_loss, leaves))):
        close(got, exp, 5e-5, f"grad {i}", floor=0.1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=ids)
def test_a_block_of_chosen_keys_all_at_minus_infinity_stays_finite(dtype):
    """Keys 64..76 of 77 chosen with a -inf bias: the kernel's first key block (64..127, the rest past the end)
    holds nothing but -inf logits. The output is the softmax over the other keys (the reference's), not NaN."""
    B, H, N, D = 1, 2, 77, 64
    q, k, v = [t.requires_grad_(True) for t in qkv(B, H, N, N, D, dtype, seed=22)]
    keys = torch.arange(64, 77)
    bias = torch.full((B, 1, N, 13), float("-inf"))
    r = attention(q, k, v, keys, bias)
    assert torch.isfinite(r.out).all() and torch.isfinite(r.lse).all() and torch.isfinite(r.probs).all()
    assert not r.probs.any()
    dense = torch.zeros(B, 1, N, N)
    dense[..., keys] = float("-inf")
    close(r.out, F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=dense), TOL[dtype], "out")
    close(r.lse, torch.logsumexp(plain_logits(q, k)[..., :64], -1), LSE_TOL[dtype], "lse")
    r.out.float().sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    assert not k.grad[..., 64:, :].any() and not v.grad[..., 64:, :].any()  # keys nobody attends to


SYNC_OPS = ("_local_scalar_dense", "item", "nonzero", "unique", "is_nonzero", "equal", "masked_select")


class device_reads(torch.utils._python_dispatch.TorchDispatchMode):
    """Ops that read a tensor's values back to the host (a device-to-host sync on a GPU)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if any(name in str(func) for name in SYNC_OPS):
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


def test_no_device_reads_in_a_call_forward_and_backward():
    """Keys handed over as a CPU tensor: the forward and the backward, bias and maps included, read nothing back
    from the tensors (today's code read the keys' min, max and unique count)."""
    q, k, v = [t.requires_grad_(True) for t in qkv(1, 2, 77, 77, 64, torch.float32, seed=23)]
    keys = torch.tensor([3, 9, 70])
    bias = (-torch.rand(1, 1, 77, 3)).requires_grad_(True)
    with device_reads() as reads:
        r = attention(q, k, v, keys, bias)
        (r.out.sum() + r.probs.sum() + r.lse.sum()).backward()
        key_probabilities(q, k, keys).probs.sum().backward()
    assert reads.seen == []


def test_the_autotuner_keys_on_length_buckets(monkeypatch):
    """Lengths 130 and 200 share a tuning (bucket 256); 300 tunes once more (bucket 512)."""
    from editlab.kernels.attention import triton_attention as ta

    tuned = ta._tuned(ta._FORWARD_CONFIGS[-2:])
    timed = []
    monkeypatch.setattr(tuned, "_bench", lambda *a, config, **kw: timed.append(config) or [1.0, 1.0, 1.0])
    monkeypatch.setattr(ta, "_forward_tuned", tuned)
    monkeypatch.setattr(ta, "_autotuned", lambda t: True)
    for n in (130, 200, 300):
        q, k, v = qkv(1, 1, n, n, 64, torch.float32, seed=n)
        close(attention(q, k, v).out, F.scaled_dot_product_attention(q, k, v), 1e-5, f"out at {n}")
    assert len(tuned.cache) == 2 and len(timed) == 4, (tuned.cache, timed)
    assert ta.length_bucket(4608) == ta.length_bucket(8192) == 8192


def test_the_wide_head_dims_tune_over_their_own_tiles():
    from editlab.kernels.attention import triton_attention as ta

    assert ta._prune(ta._forward_tuned.configs, {}, BLOCK_D=256) == ta._WIDE_CONFIGS
    assert ta._prune(ta._forward_tuned.configs, {}, BLOCK_D=128) == ta._FORWARD_CONFIGS
    folded = ta._prune(ta._forward_tuned.configs, {}, BLOCK_D=128, HAS_PROBS=True)
    assert folded and all(c.kwargs["BLOCK_N"] == 32 for c in folded)


def test_a_backward_the_kernel_cannot_serve_takes_the_reference_and_errors_surface(monkeypatch):
    """auto mode (the device check waived on the CPU): the backward kernel raising KernelUnavailable hands that
    backward to the chunked reference (same gradients); any other error is raised."""
    from editlab.kernels import dispatch
    from editlab.kernels.attention import triton_attention as ta

    monkeypatch.setenv("EDITLAB_KERNELS", "auto")
    monkeypatch.setattr(dispatch, "unavailable_reason", lambda *t: None)
    q, k, v = [t.requires_grad_(True) for t in qkv(1, 2, 40, 50, 64, torch.float32, seed=24)]
    keys, bias = torch.tensor([1, 30]), (-torch.rand(1, 2, 40, 2)).requires_grad_(True)
    want = None
    for behaviour in ("kernel", "unavailable", "bug"):
        if behaviour == "unavailable":
            def backward(*a, **kw):
                raise dispatch.KernelUnavailable("test: no backward here")
            monkeypatch.setattr(ta, "attention_backward", backward)
        elif behaviour == "bug":
            def backward(*a, **kw):
                raise IndexError("a bug")
            monkeypatch.setattr(ta, "attention_backward", backward)
        r = attention(q, k, v, keys, bias)
        loss = r.out.sum() + (r.probs * 3).sum() + r.lse.sum()
        if behaviour == "bug":
            with pytest.raises(IndexError, match="a bug"):
                loss.backward()
            continue
        grads = torch.autograd.grad(loss, (q, k, v, bias))
        if want is None:
            want = grads
        else:
            for got, exp in zip(grads, want):
                close(got, exp, 1e-5, "fallback gradient")


@pytest.mark.parametrize("maps_only", [False, True], ids=["attention", "key_probabilities"])
def test_the_maps_come_from_the_attention_pass_itself(monkeypatch, maps_only):
    """One kernel launch returns the output and the chosen keys' probabilities (their logits kept while visited,
    turned into probabilities with the final log-sum-exp): the separate (Nq x S) pass does not run. With the fold
    switched off, the separate pass gives the same maps."""
    from editlab.kernels.attention import triton_attention as ta

    q, k, v = qkv(1, 2, 150, 333, 64, torch.float16, seed=30)
    keys = torch.tensor([0, 2, 64, 200, 332])
    bias = -3 * torch.rand(1, 2, 150, 5, generator=torch.Generator().manual_seed(31))
    want = dense_reference(q, k, v, keys, bias)[2]
    launches = []
    monkeypatch.setattr(ta, "_key_probs", _Refuse(launches))
    folded = (key_probabilities(q, k, keys, bias) if maps_only else attention(q, k, v, keys, bias)).probs
    assert launches == []
    close(folded, want, 1e-3, "folded maps")
    monkeypatch.setattr(ta, "FOLD_MAPS", False)
    with pytest.raises(AssertionError, match="separate pass"):
        attention(q, k, v, keys, bias)
    monkeypatch.undo()
    monkeypatch.setenv("EDITLAB_KERNELS", "triton")
    monkeypatch.setattr(ta, "FOLD_MAPS", False)
    close(attention(q, k, v, keys, bias).probs, folded, 1e-6, "separate pass vs folded")


class _Refuse:
    def __init__(self, launches):
        self.launches = launches

    def __getitem__(self, grid):
        def launch(*a, **kw):
            self.launches.append(grid)
            raise AssertionError("the separate pass ran")
        return launch


keep_only_the_child_runner(globals(), __file__)
