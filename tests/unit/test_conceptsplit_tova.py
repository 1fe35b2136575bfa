"""ToVA as plain torch: value rows outside the bound tokens untouched bit for bit, adapters kept apart, the
output-side patch equal to attention over the adapted values, strength 0 exact, files read back and refused."""
import json

import pytest
import torch

from editlab.models.conceptsplit.patch import ToVAPatch, cond_rows
from editlab.models.conceptsplit.tova import (Binding, ToVAFileError, ValueLoRA, adapted_value, load_tova,
                                              save_tova, value_delta)

from tiny_attention import C, D, HEADS, CrossAttention  # noqa: E402

T = 9
LAYERS = {"input.1.0": D, "output.3.0": D}


def trained(token, seed):
    """An adapter whose up is non-zero (as after training)."""
    a = ValueLoRA(token, "sd15", 4, C, LAYERS, seed=seed)
    with torch.no_grad():
        for p in a.up:
            p.normal_(generator=torch.Generator().manual_seed(seed + 100))
    return a


def run_patched(attn, bindings, x, context, cond_or_uncond=(0,)):
    patch = ToVAPatch(bindings, {"input.1.0": attn})
    extra = {"block": ("input", 1), "block_index": 0, "n_heads": HEADS, "cond_or_uncond": list(cond_or_uncond)}
    n, ctx, value = patch.input_hook(x, context, context, extra)
    return patch.output_hook(attn(n, ctx, value), extra)


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 20, D, generator=g), torch.randn(2, T, C, generator=g)


def test_zero_initialised_up_leaves_the_values_unchanged(data):
    _, context = data
    attn = CrossAttention(0)
    fresh = ValueLoRA("sks", "sd15", 4, C, LAYERS)
    assert all(not p.any() for p in fresh.up) and all(p.abs().sum() > 0 for p in fresh.down)
    assert torch.equal(adapted_value(attn.to_v, [Binding(fresh, [3])], "input.1.0", context), attn.to_v(context))


def test_only_the_bound_tokens_values_change_bit_for_bit_elsewhere(data):
    _, context = data
    attn = CrossAttention(0)
    base = attn.to_v(context)
    v = adapted_value(attn.to_v, [Binding(trained("sks", 1), [3, 4])], "input.1.0", context)
    other = [t for t in range(T) if t not in (3, 4)]
    assert torch.equal(v[:, other], base[:, other])
    assert (v[:, [3, 4]] - base[:, [3, 4]]).abs().min() > 0


def test_two_adapters_equal_each_alone_on_its_own_token(data):
    x, context = data
    attn = CrossAttention(0)
    a, b = trained("sks", 1), trained("zwx", 2)
    both = adapted_value(attn.to_v, [Binding(a, [2]), Binding(b, [5])], "input.1.0", context)
    only_a = adapted_value(attn.to_v, [Binding(a, [2])], "input.1.0", context)
    only_b = adapted_value(attn.to_v, [Binding(b, [5])], "input.1.0", context)
    assert torch.allclose(both[:, 2], only_a[:, 2], atol=1e-6, rtol=0)
    assert torch.allclose(both[:, 5], only_b[:, 5], atol=1e-6, rtol=0)
    assert torch.equal(both[:, [0, 1, 3, 4, 6, 7, 8]], attn.to_v(context)[:, [0, 1, 3, 4, 6, 7, 8]])
    # and through the patch: the output moves by the sum of each adapter's own move (no cross-talk)
    base = attn(x, context)
    d_both = run_patched(attn, [Binding(a, [2]), Binding(b, [5])], x, context) - base
    d_a = run_patched(attn, [Binding(a, [2])], x, context) - base
    d_b = run_patched(attn, [Binding(b, [5])], x, context) - base
    assert torch.allclose(d_both, d_a + d_b, atol=1e-6, rtol=0)


def test_the_output_patch_equals_attention_over_the_adapted_values(data):
    x, context = data
    attn = CrossAttention(0)
    bindings = [Binding(trained("sks", 1), [2], 0.7), Binding(trained("zwx", 2), [5, 6], 1.3)]
    want = attn.attend(x, context, adapted_value(attn.to_v, bindings, "input.1.0", context))
    got = run_patched(attn, bindings, x, context)
    assert torch.allclose(got, want, atol=1e-5, rtol=0)
    assert not torch.allclose(got, attn(x, context), atol=1e-3)


def test_strength_zero_runs_the_patch_and_equals_the_base_bit_for_bit(data):
    x, context = data
    attn = CrossAttention(0)
    adapter = trained("sks", 1)
    out = run_patched(attn, [Binding(adapter, [2], 0.0)], x, context)
    assert torch.equal(out, attn(x, context))
    assert value_delta([Binding(adapter, [2], 0.0)], "input.1.0", context) is not None  # the path ran


def test_unconditional_rows_are_left_alone(data):
    x, context = data
    attn = CrossAttention(0)
    assert cond_rows([1, 0], 4) == [2, 3] and cond_rows([0], 3) == [0, 1, 2]
    out = run_patched(attn, [Binding(trained("sks", 1), [2])], x, context, cond_or_uncond=(1, 0))
    base = attn(x, context)
    assert torch.equal(out[0], base[0]) and not torch.allclose(out[1], base[1], atol=1e-4)


def test_file_round_trip_and_bad_files(tmp_path, data):
    _, context = data
    attn = CrossAttention(0)
    a = trained("sks", 1)
    path = tmp_path / "a.safetensors"
    save_tova(a, path)
    b = load_tova(path)
    assert (b.token, b.family, b.rank, b.context_dim, b.layer_names) == ("sks", "sd15", 4, C, list(LAYERS))
    for name in LAYERS:
        assert torch.equal(adapted_value(attn.to_v, [Binding(a, [1])], name, context),
                           adapted_value(attn.to_v, [Binding(b, [1])], name, context))
    with pytest.raises(FileExistsError):
        save_tova(a, path, overwrite=False)

    from safetensors.torch import save_file

    tensors = {f"{n}.{p}": t for n in LAYERS for p, t in (("down", torch.zeros(4, C)), ("up", torch.zeros(D, 4)))}
    meta = {"format": "editlab.tova.v1", "token": "sks", "family": "sd15", "rank": "4", "context_dim": str(C),
            "layers": json.dumps(list(LAYERS))}
    save_file(tensors, str(tmp_path / "ok.safetensors"), metadata=meta)
    load_tova(tmp_path / "ok.safetensors")
    save_file(tensors, str(tmp_path / "nometa.safetensors"), metadata={k: v for k, v in meta.items() if k != "token"})
    with pytest.raises(ToVAFileError, match="lacks the ToVA metadata token"):
        load_tova(tmp_path / "nometa.safetensors")
    save_file({**tensors, "input.1.0.down": torch.zeros(3, C)}, str(tmp_path / "shape.safetensors"), metadata=meta)
    with pytest.raises(ToVAFileError, match=r"layer input.1.0 has down \(3, 12\)"):
        load_tova(tmp_path / "shape.safetensors")
    save_file({"input.1.0.down": torch.zeros(4, C)}, str(tmp_path / "keys.safetensors"), metadata=meta)
    with pytest.raises(ToVAFileError, match="do not match its layers"):
        load_tova(tmp_path / "keys.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(ToVAFileError, match="not a readable safetensors"):
        load_tova(tmp_path / "junk.safetensors")


def test_attention_maps_are_the_softmax_over_the_text_keys_by_hand(data):
    from editlab.models.conceptsplit.attention_maps import AttentionMapRecorder
    from editlab.models.heatmap import heatmap

    _, context = data
    attn = CrossAttention(0)
    x = torch.randn(2, 4 * 5, D, generator=torch.Generator().manual_seed(1))
    words = {"dog": [2], "a cat": [4, 5]} | {f"t{t}": [t] for t in (0, 1, 3, 6, 7, 8)}
    rec = AttentionMapRecorder(words, {"input.1.0": attn}, (4, 5))
    extra = {"block": ("input", 1), "block_index": 0, "n_heads": HEADS, "cond_or_uncond": [1, 0],
             "activations_shape": [2, D, 4, 5]}
    n, ctx, value = rec.input_hook(x, context, context, extra)
    out = attn(n, ctx, value)
    assert torch.equal(rec.output_hook(out, extra), out)  # recording changes nothing
    # by hand, row 1 (the conditional one), head by head
    q, k = attn.to_q(x[1]), attn.to_k(context[1])
    d = D // HEADS
    probs = sum(torch.softmax(q[:, h * d:(h + 1) * d] @ k[:, h * d:(h + 1) * d].T / d ** 0.5, -1)
                for h in range(HEADS)) / HEADS
    maps = rec.maps()
    assert torch.allclose(maps["dog"], probs[:, 2].reshape(4, 5), atol=1e-6)
    assert torch.allclose(maps["a cat"], probs[:, [4, 5]].sum(-1).reshape(4, 5), atol=1e-6)
    assert torch.allclose(sum(maps.values()), torch.ones(4, 5), atol=1e-5)  # all tokens' maps: the whole softmax
    assert heatmap(torch.rand(3, 4)).shape == (3, 4, 3)
