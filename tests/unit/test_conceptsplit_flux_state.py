"""The Flux patches' per-forward state (models/conceptsplit/flux.py): the text length of a forward lives in that
forward's transformer options, so a forward run between another forward's post_input and its attention (LODA's
gradient pass, a nested call with another prompt) and two patches of one kind on one model never read each other's
length. The host's forward is written out here as its order of calls: the diffusion-model wrapper (with the
forward's options and context), the post_input patches (0.3.75: without the options), the attention override."""
from types import SimpleNamespace

import torch
import torch.nn.functional as F

H, D = 2, 8  # heads, head width: a hidden size of 16
OUTER_T, INNER_T, CELLS = 5, 9, 16  # the outer forward's text length, a nested forward's, the image tokens


def _host_attention(q, k, v, heads, mask=None, skip_reshape=False, skip_output_reshape=False, **kwargs):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _forward(patch, text_tokens, between=None, v=None, post_input_gets_options=False):
    """One forward as the host runs it: the wrapper, post_input (the txt stream), ``between()`` (a forward run in
    the middle of this one), then the attention of double block 0 on (1, H, text + CELLS, D) q, k, v."""
    from editlab.models.conceptsplit.flux import record_text_length

    options = {"block_type": "double", "block_index": 0, "cond_or_uncond": [0]}
    context = torch.zeros(1, text_tokens, 4)
    n = text_tokens + CELLS
    g = torch.Generator().manual_seed(text_tokens)
    q, k = torch.randn(1, H, n, D, generator=g), torch.randn(1, H, n, D, generator=g)
    v = torch.randn(1, H, n, D, generator=g) if v is None else v

    def body(x, timestep, context, y, guidance, ref_latents, control, transformer_options):
        args = {"txt": torch.zeros(1, text_tokens, H * D), "img": torch.zeros(1, CELLS, H * D)}
        if post_input_gets_options:
            args["transformer_options"] = transformer_options
        patch.input_hook(args)
        if between is not None:
            between()
        return patch(_host_attention, q, k, v, H, skip_reshape=True, skip_output_reshape=True,
                     transformer_options=transformer_options)

    out = record_text_length(body, None, None, context, None, None, None, None, options)
    return out, (q, k, v)


def _tova(flipped, position=2):
    from editlab.models.conceptsplit.flux import FluxToVAPatch
    from editlab.models.conceptsplit.tova import Binding, ValueLoRA

    a = ValueLoRA("dog", "flux", 2, H * D, {"double.0": H * D}, seed=1)
    with torch.no_grad():
        a.up[0].normal_(generator=torch.Generator().manual_seed(2))
    return FluxToVAPatch([Binding(a, [position])], {"double.0": SimpleNamespace(flipped_img_txt=flipped)}), a


def test_a_nested_forward_does_not_move_the_outer_forwards_text_rows():
    """Flux blocks that put the text last (``flipped_img_txt``): the text rows start at n - T. A nested forward with
    9 text tokens between the outer's post_input and its attention: the outer attention moves its own bound text
    row (position 2 of 5 text tokens: row n - 5 + 2), the adapter's term written out, every other row unchanged."""
    patch, adapter = _tova(flipped=True)
    v = torch.randn(1, H, OUTER_T + CELLS, D, generator=torch.Generator().manual_seed(3))
    seen = {}
    real = patch.moved

    def spy(v_in, name, options):
        got = real(v_in, name, options)
        seen["moved"] = got  # the outer forward's attention runs last
        return got

    patch.moved = spy
    _forward(patch, OUTER_T, between=lambda: _forward(patch, INNER_T), v=v)
    moved = seen["moved"]
    n = OUTER_T + CELLS
    row = n - OUTER_T + 2
    txt = v[0, :, n - OUTER_T:].transpose(0, 1).reshape(OUTER_T, H * D)  # the outer's text rows, (T, hidden)
    want = txt[2] + adapter.up[0] @ (adapter.down[0] @ txt[2])  # v + up(down(v)) on the bound row
    assert torch.allclose(moved[0, :, row].reshape(H * D), want, atol=1e-6)
    others = [i for i in range(n) if i != row]
    assert torch.equal(moved[:, :, others], v[:, :, others])


def test_two_patches_of_one_kind_on_one_model_each_read_the_forwards_length():
    """Two ToVA patches (two ToVA Apply nodes: the second wraps the first) on forwards of two text lengths in turn:
    each forward's bound row moves by both adapters' terms (written out), whichever forward ran before."""
    from editlab.models.conceptsplit.flux import record_text_length

    first, a1 = _tova(flipped=True)
    second, a2 = _tova(flipped=True, position=3)
    second.previous = first
    for t in (OUTER_T, INNER_T, OUTER_T):
        v = torch.randn(1, H, t + CELLS, D, generator=torch.Generator().manual_seed(t))
        q = torch.randn(1, H, t + CELLS, D, generator=torch.Generator().manual_seed(t + 1))
        got = []

        def attention(q, k, v_in, heads, **kwargs):
            got.append(v_in)
            return _host_attention(q, k, v_in, heads, **kwargs)

        def body(x, timestep, context, y, guidance, ref_latents, control, transformer_options):
            second.input_hook(first.input_hook({"txt": torch.zeros(1, t, H * D)}))
            return second(attention, q, q, v, H, skip_reshape=True, skip_output_reshape=True,
                          transformer_options=transformer_options)

        record_text_length(body, None, None, torch.zeros(1, t, 4), None, None, None, None,
                           {"block_type": "double", "block_index": 0, "cond_or_uncond": [0]})
        rows = (CELLS + 2, CELLS + 3)  # text last: rows CELLS .. CELLS + t - 1
        for row, a in zip(rows, (a1, a2)):
            txt = v[0, :, row].reshape(H * D)
            want = txt + a.up[0] @ (a.down[0] @ txt)
            assert torch.allclose(got[0][0, :, row].reshape(H * D), want, atol=1e-5)
        others = [i for i in range(t + CELLS) if i not in rows]
        assert torch.equal(got[0][:, :, others], v[:, :, others])


def test_the_map_tap_reads_the_outer_forwards_image_rows_after_a_nested_forward():
    """The attention-map recorder after a nested forward with a longer prompt: it still records (the old way, with
    the length on the patch, the nested 9 left no room for the 16 image tokens and nothing was recorded), and its
    map is the image queries' probability on the concept's key, written out."""
    from editlab.models.conceptsplit.flux import FluxMapTap

    tap = FluxMapTap([[1]], {"double.0": SimpleNamespace()}, (4, 4), (4, 4))
    _, (q, k, _v) = _forward(tap, OUTER_T, between=lambda: _forward(FluxMapTap([[1]], {"double.0": SimpleNamespace()},
                                                                                (4, 4), (4, 4)), INNER_T))
    assert len(tap.collected) == 1
    probs = (q[0] @ k[0].transpose(-1, -2) / D ** 0.5).softmax(-1).mean(0)  # (n, n), averaged over heads
    want = probs[OUTER_T:, 1].reshape(4, 4)
    assert torch.allclose(tap.collected[0][0], want, atol=1e-5)


def test_post_input_with_the_options_keeps_the_text_streams_length():
    """On hosts that hand post_input the options (0.33), the text stream's length after the patches before it is
    the one used (a post_input patch that lengthens the text would otherwise shift the rows)."""
    from editlab.models.conceptsplit.flux import TEXT_LENGTH

    patch, _ = _tova(flipped=False)
    options = {"optimized_attention_override": patch}
    patch.input_hook({"txt": torch.zeros(1, 7, H * D), "transformer_options": options})
    assert options[TEXT_LENGTH] == 7
    assert patch.input_hook({"txt": torch.zeros(1, 3, H * D)})  # 0.3.75: no options, nothing kept on the patch
    assert not any(isinstance(v, int) for v in vars(patch).values())


def test_two_patches_on_one_word_add_their_terms_in_either_order():
    """Two ToVA Apply nodes binding the same word: each adapter reads the text values as the block made them, so
    the bound row is v + a1(v) + a2(v) (written out) whichever node wraps the other (it was v + a2(v) + a1(v +
    a2(v)) when each read the values the other had moved)."""
    from editlab.models.conceptsplit.flux import record_text_length

    outs = []
    v = torch.randn(1, H, OUTER_T + CELLS, D, generator=torch.Generator().manual_seed(11))
    for swap in (False, True):
        p1, a1 = _tova(flipped=False)
        p2, a2 = _tova(flipped=False)
        with torch.no_grad():
            a2.up[0].mul_(-0.7).add_(0.3)  # another adapter on the same word
        inner, outer = (p2, p1) if swap else (p1, p2)
        outer.previous = inner
        got = []

        def attention(q, k, v_in, heads, **kwargs):
            got.append(v_in)
            return _host_attention(q, k, v_in, heads, **kwargs)

        def body(x, timestep, context, y, guidance, ref_latents, control, transformer_options):
            q = torch.randn(1, H, OUTER_T + CELLS, D, generator=torch.Generator().manual_seed(12))
            return outer(attention, q, q, v, H, skip_reshape=True, skip_output_reshape=True,
                         transformer_options=transformer_options)

        record_text_length(body, None, None, torch.zeros(1, OUTER_T, 4), None, None, None, None,
                           {"block_type": "double", "block_index": 0, "cond_or_uncond": [0]})
        txt = v[0, :, 2].reshape(H * D)
        want = txt + a1.up[0] @ (a1.down[0] @ txt) + a2.up[0] @ (a2.down[0] @ txt)
        assert torch.allclose(got[0][0, :, 2].reshape(H * D), want, atol=1e-5)
        outs.append(got[0])
    assert torch.allclose(outs[0], outs[1], atol=1e-6)


def test_the_afg_bias_is_minus_strength_outside_each_concepts_mask_on_the_conditional_rows_only():
    """FluxAFG's bias on the concepts' keys, written out: on a conditional row, an image query outside concept c's
    mask gets -strength on c's keys and 0 on the other concept's; inside, 0; text queries and the unconditional row,
    0. The keys come as a CPU tensor (read on the host: nothing read back from a GPU)."""
    from editlab.models.conceptsplit.flux import TEXT_LENGTH, FluxAFG

    t, grid, concepts = 5, (4, 4), [[1, 2], [3]]
    masks = torch.zeros(2, 4, 4)
    masks[0, :2], masks[1, :, :1] = 1, 1  # concept 0: the top half; concept 1: the left column
    afg = FluxAFG(concepts, masks, {"double.0": SimpleNamespace()}, 2.5, grid)
    q = torch.zeros(2, H, t + CELLS, D)
    keys, bias = afg.key_bias(q, "double.0", {"cond_or_uncond": [1, 0], TEXT_LENGTH: t})  # row 1 conditional
    assert keys.device.type == "cpu" and keys.tolist() == [1, 2, 3]
    want = torch.zeros(2, 1, t + CELLS, 3)
    for cell in range(CELLS):
        row, col = divmod(cell, 4)
        if row >= 2:
            want[1, 0, t + cell, :2] = -2.5
        if col >= 1:
            want[1, 0, t + cell, 2] = -2.5
    assert torch.equal(bias, want)
    # on the meta device, whose tensors have no values to read back: a read (nonzero(), .item()) would raise
    keys, bias = afg.key_bias(q.to("meta"), "double.0", {"cond_or_uncond": [1, 0], TEXT_LENGTH: t})
    assert keys.device.type == "cpu" and bias.device.type == "meta" and bias.shape == want.shape
