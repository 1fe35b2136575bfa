"""The attention-patch layer every EditLab method that patches a UNet's attention shares (plain torch; nothing here
imports the host).

- ``Hook``: a callable the host's patch lists accept, that moves what its owner holds with the model (``to``) and
  names the models it needs loaded (``models``), and is shared, never copied, by ``ModelPatcher.clone``.
- Layer discovery: ``transformer_blocks`` / ``cross_attention_layers`` of a host UNet and their names
  ("input.4.0"), ``block_name`` of a patch call.
- ``KeptInputPatch``: the list-style patch pair "keep what the attention got in the input patch, use it in the output
  patch". What is kept lives in the call's own options dict (the host hands the same ``extra_options`` to the input
  and output patches of one block call, and builds a new one for every call), keyed by the patch: never on the patch
  object nor in a module global, so two patches of one kind in one model, and a model called inside another call
  (LODA's gradient pass), never see each other's inputs.
- Value changes: a patch that changes the attention's value vectors at its output (ToVA adds
  ``to_out(attn(q, k, delta))``) publishes ``delta`` to the call (``publish_value_change``); a patch that recomputes
  the attention with other probabilities (attention fixing guidance) reads them (``value_changes``), so it works on
  the adapted values ``P'(v + delta)`` and never silently drops another patch's change.
- ``with_attn2_patches``: a copy of sampler model options with one more attn2 patch pair (the original unchanged).
"""
from __future__ import annotations

import copy

import torch

KEPT = "editlab_kept"  # the call's {id(patch): kept inputs}
VALUE_CHANGES = "editlab_value_changes"  # the call's [delta (B, T, inner)]


class Hook:
    """One attention hook as the host's patch lists want it: callable, and with ``to`` / ``models`` so that
    ComfyUI's memory management moves what the patch holds along with the model (``ModelPatcher.model_patches_to``
    calls ``to`` with the load/offload device and with the model's dtype) and loads the models it names."""

    def __init__(self, fn, owner, report_models: bool):
        self.fn, self.owner, self.report_models = fn, owner, report_models

    def __call__(self, *args):
        return self.fn(*args)

    def to(self, device_or_dtype):
        self.owner.to(device_or_dtype)
        return self

    def models(self) -> list:
        return list(self.owner.extra_models) if self.report_models else []

    def __deepcopy__(self, memo):
        return self  # ModelPatcher.clone deep-copies model_options; the patch is shared, never copied


# -- layers -----------------------------------------------------------------------------------------------------------

def transformer_blocks(unet) -> list:
    """[((block, index), transformer_block)] of a host UNet: input blocks, output blocks, then the middle block (the
    expression adapter files' order). ``block`` is ComfyUI's ("input" | "output" | "middle", id), ``index`` the
    transformer block inside it."""
    found = []
    groups = [("input", list(enumerate(unet.input_blocks))), ("output", list(enumerate(unet.output_blocks))),
              ("middle", [(0, unet.middle_block)])]
    for name, blocks in groups:
        for block_id, block in blocks:
            for layer in block:
                for index, tb in enumerate(getattr(layer, "transformer_blocks", [])):
                    found.append((((name, block_id), index), tb))
    return found


def cross_attention_layers(unet) -> list:
    """[((block, index), attn2)] in ``transformer_blocks``' order."""
    return [(key, tb.attn2) for key, tb in transformer_blocks(unet)]


def layer_name(key) -> str:
    """"input.4.0" for ((\"input\", 4), 0)."""
    (block, block_id), index = key
    return f"{block}.{block_id}.{index}"


def named_cross_attention_layers(unet) -> dict:
    """{"block.id.index": attn2} of a host UNet, in the host's order."""
    return {layer_name(key): attn for key, attn in cross_attention_layers(unet)}


def block_name(extra) -> str | None:
    """The name of the layer a patch call is in ("input.4.0"), from the host's ``extra_options``."""
    block = extra.get("block")
    return None if block is None else f"{block[0]}.{block[1]}.{extra.get('block_index', 0)}"


def cond_rows(cond_or_uncond, rows: int) -> list[int]:
    """Batch rows of the conditional branch: the batch is len(cond_or_uncond) equal chunks."""
    order = list(cond_or_uncond) or [0]
    per = rows // len(order)
    return [c * per + i for c, kind in enumerate(order) if kind == 0 for i in range(per)]


def split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, heads * d) -> (B, heads, N, d)."""
    b, n, inner = t.shape
    return t.reshape(b, n, heads, inner // heads).transpose(1, 2)


def merge_heads(t: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, d) -> (B, N, heads * d)."""
    b, h, n, d = t.shape
    return t.transpose(1, 2).reshape(b, n, h * d)


def text_attention(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, T) attention probabilities over the text keys, averaged over heads (float32)."""
    d = q.shape[-1] // heads
    logits = split_heads(q.float(), heads) @ split_heads(k.float(), heads).transpose(-1, -2) / d ** 0.5
    return logits.softmax(-1).mean(1)


def layer_text_attention(attn, n: torch.Tensor, context: torch.Tensor, extra) -> tuple | None:
    """At a UNet cross-attention layer: the conditional rows' text-attention probabilities (B_cond, N, T) through the
    layer's own ``to_q`` / ``to_k`` (so the host's weight handling applies) and the layer's (h, w); None when the call
    carries no ``activations_shape`` or no conditional row. Gradients flow as the caller's mode allows."""
    shape = extra.get("activations_shape")
    rows = cond_rows(extra.get("cond_or_uncond", [0]), n.shape[0])
    if shape is None or not rows:
        return None
    probs = text_attention(attn.to_q(n[rows]), attn.to_k(context[rows]), extra["n_heads"])
    return probs, (int(shape[-2]), int(shape[-1]))


def in_sigma_window(extra, sigma_hi: float, sigma_lo: float) -> bool:
    """Whether the model call a patch is in lies inside [sigma_lo, sigma_hi] (both ends included, to float
    rounding); True when the call carries no sigmas."""
    sigmas = extra.get("sigmas")
    if sigmas is None:
        return True
    sigma = float(sigmas.reshape(-1)[0])
    return sigma_lo - 1e-6 <= sigma <= sigma_hi + 1e-6


def output_delta(attn, delta: torch.Tensor) -> torch.Tensor:
    """``to_out(delta)`` without to_out's bias, through the layer itself so the host's weight handling applies (fp8
    or GGUF casting, low-VRAM offload, LoRA weight patches): ``to_out(delta) - to_out(0)``."""
    proj = attn.to_out[0]
    return proj(delta) - proj(delta.new_zeros((1, 1, delta.shape[-1])))


# -- the kept-input patch pair ----------------------------------------------------------------------------------------

class KeptInputPatch:
    """Base of a list-style attention patch pair (attn1 or attn2): ``input_hook`` asks ``keep(n, context, value,
    extra)`` what to keep (None: nothing), ``output_hook`` hands it to ``apply(out, kept, extra)``. Kept inputs live
    in the call's ``extra`` (see the module's doc). Subclasses set ``reports_models`` when the host must load their
    ``extra_models`` with the model."""

    reports_models = False
    extra_models = ()

    def __init__(self):
        self.input_hook = Hook(self._keep_input, self, report_models=False)
        self.output_hook = Hook(self._use_kept, self, report_models=self.reports_models)

    def __deepcopy__(self, memo):
        return self  # ModelPatcher.clone deep-copies model_options; the patch is shared, never copied

    def to(self, device_or_dtype):
        return self

    def keep(self, n, context, value, extra):
        raise NotImplementedError

    def apply(self, out, kept, extra):
        raise NotImplementedError

    def _keep_input(self, n, context, value, extra):
        kept = self.keep(n, context, value, extra)
        if kept is not None:
            extra.setdefault(KEPT, {})[id(self)] = kept
        return n, context, value

    def _use_kept(self, out, extra):
        kept = extra.get(KEPT, {}).pop(id(self), None)
        return out if kept is None else self.apply(out, kept, extra)


def publish_value_change(extra: dict, delta: torch.Tensor) -> None:
    """Tell the other patches of this attention call that the value vectors are moved by ``delta`` (B, T, inner),
    one row per batch row (zeros where nothing moves), added at the output as ``to_out(attn(q, k, delta))``."""
    extra.setdefault(VALUE_CHANGES, []).append(delta)


def value_changes(extra: dict) -> torch.Tensor | None:
    """The sum (float32, (B, T, inner)) of the value changes published in this call; None when there are none."""
    total = None
    for delta in extra.get(VALUE_CHANGES, ()):
        total = delta.float() if total is None else total + delta.float()
    return total


def with_attn2_patches(model_options: dict, input_hook, output_hook) -> dict:
    """A copy of ``model_options`` with an attn2 patch pair appended last (the original is not changed)."""
    options = copy.copy(model_options or {})
    to = dict(options.get("transformer_options", {}))
    patches = {k: list(v) for k, v in to.get("patches", {}).items()}
    patches.setdefault("attn2_patch", []).append(input_hook)
    patches.setdefault("attn2_output_patch", []).append(output_hook)
    to["patches"] = patches
    options["transformer_options"] = to
    return options
