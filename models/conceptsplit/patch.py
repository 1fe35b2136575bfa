"""ToVA inside a UNet's cross-attention, as two list-style patches (they compose with other packs' patches): the
input patch keeps each layer's query input and context, the output patch adds ``to_out(attn(q, k, delta))`` (without
to_out's bias), ``delta`` being the bound adapters' value change (see ``tova.py`` for why it is added at the output).

Adapters act on the conditional rows only (``cond_or_uncond`` == 0): their positions come from the positive prompt.
"""
from __future__ import annotations

import torch

from ..expression.patch import Hook, cross_attention_layers
from .tova import attention_delta, layer_name, value_delta


def named_cross_attention_layers(unet) -> dict:
    """{"block.id.index": attn2} of a host UNet, in the host's order."""
    return {layer_name(key): attn for key, attn in cross_attention_layers(unet)}


def cond_rows(cond_or_uncond, rows: int) -> list[int]:
    """Batch rows of the conditional branch: the batch is len(cond_or_uncond) equal chunks."""
    order = list(cond_or_uncond) or [0]
    per = rows // len(order)
    return [c * per + i for c, kind in enumerate(order) if kind == 0 for i in range(per)]


class ToVAPatch:
    def __init__(self, bindings: list, layers: dict):
        self.bindings = list(bindings)  # tova.Binding: an adapter, its positions, its strength
        self.layers = dict(layers)  # name -> attn2
        self._inputs = {}
        self.training = False  # set by the training loop; nothing here depends on it
        self.values = None
        self.input_hook = Hook(self.before_attention, self, report_models=False)
        self.output_hook = Hook(self.after_attention, self, report_models=False)

    extra_models = ()

    def __deepcopy__(self, memo):
        return self  # ModelPatcher.clone deep-copies model_options; the patch is shared, never copied

    def to(self, device_or_dtype):
        """Devices move the adapters; dtypes are ignored (adapters keep float32, cast where they meet activations)."""
        if not isinstance(device_or_dtype, torch.dtype):
            for b in self.bindings:
                b.adapter.to(device_or_dtype)
        return self

    @staticmethod
    def _name(extra):
        block = extra.get("block")
        return None if block is None else f"{block[0]}.{block[1]}.{extra.get('block_index', 0)}"

    def before_attention(self, n, context, value, extra):
        name = self._name(extra)
        if name in self.layers and context is not None:
            self._inputs[name] = (n, context, context if value is None else value)
        return n, context, value

    def after_attention(self, out, extra):
        name = self._name(extra)
        stashed = self._inputs.pop(name, None)
        if stashed is None:
            return out
        n, context, value_in = stashed
        attn = self.layers[name]
        rows = cond_rows(extra.get("cond_or_uncond", [0]), n.shape[0])
        for b in self.bindings:
            if b.adapter.has_layer(name) and next(b.adapter.parameters()).device != value_in.device:
                b.adapter.to(value_in.device)  # normally done by the host through Hook.to
        delta = value_delta(self.bindings, name, value_in, rows)
        if delta is None:
            return out
        q, k = attn.to_q(n), attn.to_k(context)
        ip = attention_delta(q, k, delta, extra["n_heads"]).to(n.dtype)
        # to_out without its bias, through the layer itself so the host's weight handling applies (fp8 casting,
        # low-VRAM offload, weight patches): to_out(ip) - to_out(0).
        proj = attn.to_out[0]
        return out + (proj(ip) - proj(ip.new_zeros((1, 1, ip.shape[-1])))).to(out.dtype)
