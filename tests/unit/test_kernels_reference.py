"""The torch reference of attention with token maps (kernels/attention/reference.py), on the CPU, no Triton: chunked
over the queries (no (B, H, N, N) tensor in the forward or the backward), equal to the dense softmax written here,
gradients included; repeated keys through the dispatcher's reference path."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from editlab.kernels.attention import attention, key_probabilities, reference


class largest_tensor(TorchDispatchMode):
    """Records the element count of every tensor an op returns."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor):
                self.sizes.append((t.numel(), str(func)))
        return out


def dense(q, k, v, keys, bias, mask):
    """softmax(q k^T / sqrt(D) + mask + bias on the chosen columns), float64, written out."""
    logits = q.double() @ k.double().transpose(-1, -2) / q.shape[-1] ** 0.5 + mask.double()
    cols = torch.nn.functional.one_hot(keys, k.shape[2]).double()  # (S, Nk): a repeated key adds each slot's bias
    logits = logits + bias.double() @ cols
    p = logits.softmax(-1)
    return p @ v.double(), logits.logsumexp(-1), p[..., keys]


@pytest.mark.parametrize("keys", [[3, 40, 99], [5, 5, 70]], ids=["distinct", "repeated"])
def test_reference_is_chunked_and_equals_the_dense_formula_with_gradients(monkeypatch, keys):
    B, H, N, D, chunk = 1, 2, 100, 16, 16
    monkeypatch.setattr(reference, "CHUNK_ELEMENTS", B * H * N * chunk)
    assert reference.query_chunk(B, H, N, N) == chunk < N
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, N, D, generator=g).requires_grad_(True) for _ in range(3))
    keys = torch.tensor(keys)
    bias = (-2 * torch.rand(B, 1, N, 3, generator=g)).requires_grad_(True)
    mask = torch.zeros(B, 1, N, N)
    mask[..., 7] = float("-inf")  # a host mask, sliced with the queries
    mask[..., :50, 60] = -1.5
    w_out, w_probs, w_lse = torch.randn(B, H, N, D, generator=g), torch.randn(B, H, N, 3, generator=g), \
        torch.randn(B, H, N, generator=g)
    with largest_tensor() as seen:
        out, lse, probs = reference.attention(q, k, v, keys, bias, mask=mask)
        loss = (out * w_out).sum() + (probs * w_probs).sum() + (lse * w_lse).sum()
        grads = torch.autograd.grad(loss, (q, k, v, bias))
    biggest = max(seen.sizes)
    assert biggest[0] <= B * H * chunk * N < B * H * N * N, biggest  # one block of queries at a time, both passes
    want_out, want_lse, want_probs = dense(q, k, v, keys, bias, mask)
    assert torch.allclose(out.double(), want_out, atol=1e-5)
    assert torch.allclose(lse.double(), want_lse, atol=1e-5)
    assert torch.allclose(probs.double(), want_probs, atol=1e-6)
    want = torch.autograd.grad((want_out * w_out).sum() + (want_probs * w_probs).sum() + (want_lse * w_lse).sum(),
                               (q, k, v, bias))
    for name, got, exp in zip("q k v bias".split(), grads, want):
        assert torch.allclose(got.double(), exp.double(), atol=1e-5), name


@pytest.mark.parametrize("with_bias", [False, True], ids=["no bias", "bias"])
@pytest.mark.parametrize("maps_only", [False, True], ids=["attention", "key_probabilities"])
def test_repeated_keys_on_the_reference_path_match_the_dense_formula(monkeypatch, with_bias, maps_only):
    """Through the dispatcher (EDITLAB_KERNELS=reference): a key given twice gets its probability in both slots, and
    the gradients are the dense formula's (the kernel path: test_kernels_attention.py)."""
    monkeypatch.setenv("EDITLAB_KERNELS", "reference")
    B, H, N, D = 2, 2, 37, 16
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(B, H, N, D, generator=g).requires_grad_(True) for _ in range(3))
    keys = torch.tensor([4, 9, 4, 36, 9])
    bias = (-2 * torch.rand(B, H, N, 5, generator=g)).requires_grad_(True) if with_bias else None
    w_out, w_probs, w_lse = torch.randn(B, H, N, D, generator=g), torch.randn(B, H, N, 5, generator=g), \
        torch.randn(B, H, N, generator=g)
    r = key_probabilities(q, k, keys, bias) if maps_only else attention(q, k, v, keys, bias)
    loss = (r.probs * w_probs).sum() + (r.lse * w_lse).sum() + (0 if maps_only else (r.out * w_out).sum())
    leaves = (q, k) + (() if maps_only else (v,)) + ((bias,) if with_bias else ())
    grads = torch.autograd.grad(loss, leaves)
    want_out, want_lse, want_probs = dense(q, k, v, keys, bias if with_bias else torch.zeros(1, 1, N, 5),
                                           torch.zeros(1, 1, N, N))
    assert torch.allclose(r.probs.double(), want_probs, atol=1e-6)
    want_loss = (want_probs * w_probs).sum() + (want_lse * w_lse).sum() + (0 if maps_only else
                                                                           (want_out * w_out).sum())
    for got, exp in zip(grads, torch.autograd.grad(want_loss, leaves)):
        assert torch.allclose(got.double(), exp.double(), atol=1e-5)


@pytest.mark.parametrize("batch", [False, True], ids=["topk", "batch topk"])
def test_the_sparse_torch_sae_path_has_the_dense_gradients(monkeypatch, batch):
    """The benchmark's sparse torch baseline (embedding_bag + index_add_, no Triton) against dense autograd."""
    from editlab.kernels.sae import reference as sae_reference
    from editlab.kernels.sae.ops import sparse_torch_decode, sparse_torch_encode

    monkeypatch.setattr(sae_reference, "CHUNK_ELEMENTS", 200)  # several blocks of rows in the index_add_
    g = torch.Generator().manual_seed(3)
    n, d, m, k = 12, 8, 40, 3
    x = torch.randn(n, d, generator=g).requires_grad_(True)
    W_enc, W_dec = (torch.randn(d, m, generator=g).requires_grad_(True),
                    torch.randn(m, d, generator=g).requires_grad_(True))
    b_enc, b_dec = torch.randn(m, generator=g).requires_grad_(True), torch.randn(d, generator=g).requires_grad_(True)
    w = torch.randn(n, d, generator=g)
    values, indices = sparse_torch_encode(x, W_enc, b_dec, b_enc, k=k, batch=batch)
    loss = (sparse_torch_decode(values, indices, W_dec, b_dec) * w).sum()
    leaves = (x, W_enc, W_dec, b_enc, b_dec)
    grads = torch.autograd.grad(loss, leaves)
    pre = torch.relu((x - b_dec) @ W_enc + b_enc)
    keep = torch.zeros_like(pre, dtype=torch.bool).scatter_(1, indices, values > 0)  # the kept entries, dense
    want = torch.autograd.grad((((pre * keep) @ W_dec + b_dec) * w).sum(), leaves)
    for name, got, exp in zip("x W_enc W_dec b_enc b_dec".split(), grads, want):
        assert torch.allclose(got, exp, atol=1e-4), name
