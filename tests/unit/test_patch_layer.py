"""The shared attention-patch layer (models/patch_layer.py), driven the way the host's BasicTransformerBlock drives
list-style patches (every input patch, the attention, every output patch, one ``extra_options`` dict per block
call), checked against attention written out by hand:
- ToVA + attention fixing guidance in one layer is ``to_out(P'(v + delta))`` (the adapted values, confined), in
  either order of the two nodes, never ``P'v + P delta``;
- kept inputs live in the call: a model called inside another call (LODA's gradient pass) and two patches of one
  kind never read each other's inputs, and nothing stays behind on the patch object."""
from __future__ import annotations

import pytest
import torch

from editlab.models.conceptsplit.loda import HARD, AFGPatch
from editlab.models.conceptsplit.patch import ToVAPatch
from editlab.models.conceptsplit.tova import Binding, ValueLoRA
from editlab.models.patch_layer import KEPT, KeptInputPatch

from tiny_attention import C, D, HEADS, CrossAttention  # noqa: E402

T, H, W = 9, 4, 5
NAME = "input.1.0"


def host_block_call(attn, patches, x, context, cond_or_uncond=(1, 0)):
    """What the host's transformer block does with attn2 patch lists (one fresh extra_options per call)."""
    extra = {"block": ("input", 1), "block_index": 0, "n_heads": HEADS, "cond_or_uncond": list(cond_or_uncond),
             "activations_shape": [x.shape[0], D, H, W]}
    n, ctx, value = x, context, context
    for p in patches:
        n, ctx, value = p.input_hook(n, ctx, value, extra)
    out = attn(n, ctx, value)
    for p in patches:
        out = p.output_hook(out, extra)
    return out, extra


def adapter(seed):
    a = ValueLoRA("sks", "sd15", 4, C, {NAME: D}, seed=seed)
    with torch.no_grad():
        for p in a.up:
            p.normal_(generator=torch.Generator().manual_seed(seed + 100))
    return a


@pytest.fixture
def setup():
    g = torch.Generator().manual_seed(0)
    x, context = torch.randn(2, H * W, D, generator=g), torch.randn(2, T, C, generator=g)
    attn = CrossAttention(1)
    concepts = [[2], [5, 6]]
    masks = torch.zeros(2, H, W)
    masks[0, :2], masks[1, 2:] = 1, 1  # concept 0 in the top rows, concept 1 in the bottom ones
    return x, context, attn, concepts, masks


def by_hand(attn, x, context, value_shift, bias):
    """to_out(softmax(q k^T / sqrt(d) + bias) (to_v(context) + value_shift)), per head, float64."""
    with torch.no_grad():
        q, k = attn.to_q(x).double(), attn.to_k(context).double()
        v = attn.to_v(context).double() + value_shift.double()
        d = D // HEADS
        heads = []
        for h in range(HEADS):
            s = slice(h * d, (h + 1) * d)
            p = torch.softmax(q[..., s] @ k[..., s].transpose(-1, -2) / d ** 0.5 + bias.double(), -1)
            heads.append(p @ v[..., s])
        return attn.to_out(torch.cat(heads, -1).float()).double()


def afg_bias(concepts, masks, strength):
    bias = torch.zeros(H * W, T)
    for m, cols in zip(masks.reshape(len(concepts), -1) > 0.5, concepts):
        for c in cols:
            bias[~m, c] = -strength
    return bias


@pytest.mark.parametrize("strength", [3.0, HARD])
@pytest.mark.parametrize("order", ["tova first", "afg first"])
def test_tova_with_afg_attends_over_the_adapted_values_inside_the_masks(setup, strength, order):
    x, context, attn, concepts, masks = setup
    a = adapter(0)
    tova = ToVAPatch([Binding(a, [2], 1.0)], {NAME: attn})
    afg = AFGPatch(concepts, masks, {NAME: attn}, strength)
    patches = [tova, afg] if order == "tova first" else [afg, tova]
    with torch.no_grad():
        out, _ = host_block_call(attn, patches, x, context)
        # by hand: row 1 is the conditional one; the adapter moves token 2's value there only
        shift = torch.zeros(T, D)
        shift[2] = a.term(NAME, context[1:2])[0, 2]
        want_cond = by_hand(attn, x[1:2], context[1:2], shift, afg_bias(concepts, masks, strength))
        want_uncond = by_hand(attn, x[:1], context[:1], torch.zeros(T, D), torch.zeros(H * W, T))
        # what AFG over the base values would give (P'v + P delta): must be far from the result
        old = (by_hand(attn, x[1:2], context[1:2], torch.zeros(T, D), afg_bias(concepts, masks, strength))
               + by_hand(attn, x[1:2], context[1:2], shift, torch.zeros(H * W, T))
               - by_hand(attn, x[1:2], context[1:2], torch.zeros(T, D), torch.zeros(H * W, T)))
    assert torch.allclose(out[1:2].double(), want_cond, atol=1e-5), (out[1:2].double() - want_cond).abs().max()
    assert torch.allclose(out[:1].double(), want_uncond, atol=1e-5)
    assert (old - want_cond).abs().max() > 1e-2  # the test can tell the two apart


def test_kept_inputs_live_in_the_call_not_on_the_patch(setup):
    """A second block call started between the input and output patches of the first (a model called inside
    another call) keeps its own inputs; the first call's output is as if alone; nothing stays behind."""
    x, context, attn, concepts, masks = setup
    tova = ToVAPatch([Binding(adapter(0), [2], 1.0)], {NAME: attn})
    with torch.no_grad():
        alone, _ = host_block_call(attn, [tova], x, context)
        other_x = torch.randn(2, H * W, D, generator=torch.Generator().manual_seed(9))
        extra = {"block": ("input", 1), "block_index": 0, "n_heads": HEADS, "cond_or_uncond": [1, 0],
                 "activations_shape": [2, D, H, W]}
        n, ctx, value = tova.input_hook(x, context, context, extra)
        inner, inner_extra = host_block_call(attn, [tova], other_x, context)  # the nested call
        out = tova.output_hook(attn(n, ctx, value), extra)
    assert torch.equal(out, alone)
    assert not inner_extra[KEPT] and not extra[KEPT]  # popped where they were used
    assert not [k for k, v in vars(tova).items() if isinstance(v, dict) and v and k not in ("layers",)]


def test_two_patches_of_one_kind_add_up(setup):
    """Two ToVA Apply nodes' patches in one model: each adds its own term (attention is linear in the values)."""
    x, context, attn, _, _ = setup
    a, b = adapter(0), adapter(1)
    one, two = ToVAPatch([Binding(a, [2], 1.0)], {NAME: attn}), ToVAPatch([Binding(b, [5], 0.7)], {NAME: attn})
    with torch.no_grad():
        both, _ = host_block_call(attn, [one, two], x, context)
        shift = torch.zeros(T, D)
        shift[2] = a.term(NAME, context[1:2])[0, 2]
        shift[5] = 0.7 * b.term(NAME, context[1:2])[0, 5]
        want = by_hand(attn, x[1:2], context[1:2], shift, torch.zeros(H * W, T))
    assert torch.allclose(both[1:2].double(), want, atol=1e-5)


def test_the_base_class_passes_the_inputs_through_unchanged():
    class Spy(KeptInputPatch):
        def keep(self, n, context, value, extra):
            return n * 2

        def apply(self, out, kept, extra):
            return out + kept

    spy, extra = Spy(), {}
    n, ctx, value = torch.ones(1, 2, 3), torch.zeros(1, 4, 3), torch.zeros(1, 4, 3)
    assert spy.input_hook(n, ctx, value, extra) == (n, ctx, value)
    assert torch.equal(spy.output_hook(torch.zeros(1, 2, 3), extra), torch.full((1, 2, 3), 2.0))
    assert torch.equal(spy.output_hook(torch.zeros(1, 2, 3), extra), torch.zeros(1, 2, 3))  # used once


def test_two_additive_patches_in_either_order_at_the_layer(setup):
    """Two ToVA patches (each adds its own term to the values) give the same layer output in either node order:
    equal to float rounding of (v + a) + b against (v + b) + a (the composition matrix's order check, on a whole
    network, allows 1e-4 for that rounding carried through the rest of it)."""
    x, context, attn, _, _ = setup
    one = ToVAPatch([Binding(adapter(0), [2], 1.0)], {NAME: attn})
    two = ToVAPatch([Binding(adapter(1), [2, 5], 0.7)], {NAME: attn})
    with torch.no_grad():
        ab, _ = host_block_call(attn, [one, two], x, context)
        ba, _ = host_block_call(attn, [two, one], x, context)
        alone, _ = host_block_call(attn, [], x, context)
    assert float((ab - alone).abs().max()) > 1e-2  # both act
    assert float((ab - ba).abs().max()) <= 1e-6 * float(ab.abs().max())
