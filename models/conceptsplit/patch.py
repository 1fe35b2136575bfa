"""ToVA inside a UNet's cross-attention, as a kept-input patch pair of the shared patch layer (list-style: they
compose with other packs' patches): the input patch keeps each layer's query input and context and publishes the
bound adapters' value change ``delta`` to the call, the output patch adds ``to_out(attn(q, k, delta))`` (without
to_out's bias; see ``tova.py`` for why it is added at the output). A patch that recomputes the attention (attention
fixing guidance) reads the published change, so it acts on the adapted values.

Adapters act on the conditional rows only (``cond_or_uncond`` == 0): their positions come from the positive prompt.
"""
from __future__ import annotations

import torch

from ..patch_layer import (KeptInputPatch, block_name, cond_rows, named_cross_attention_layers,  # noqa: F401
                           output_delta, publish_value_change)
from .tova import attention_delta, value_delta


class ToVAPatch(KeptInputPatch):
    def __init__(self, bindings: list, layers: dict):
        self.bindings = list(bindings)  # tova.Binding: an adapter, its positions, its strength
        self.layers = dict(layers)  # name -> attn2
        self.training = False  # set by the training loop; nothing here depends on it
        self.values = None
        super().__init__()

    def to(self, device_or_dtype):
        """Devices move the adapters; dtypes are ignored (adapters keep float32, cast where they meet activations)."""
        if not isinstance(device_or_dtype, torch.dtype):
            for b in self.bindings:
                b.adapter.to(device_or_dtype)
        return self

    def keep(self, n, context, value, extra):
        name = block_name(extra)
        if name not in self.layers or context is None:
            return None
        value_in = context if value is None else value
        rows = cond_rows(extra.get("cond_or_uncond", [0]), n.shape[0])
        for b in self.bindings:
            if b.adapter.has_layer(name) and next(b.adapter.parameters()).device != value_in.device:
                b.adapter.to(value_in.device)  # normally done by the host through Hook.to
        delta = value_delta(self.bindings, name, value_in, rows)
        if delta is None:
            return None
        publish_value_change(extra, delta)
        return n, context, delta

    def apply(self, out, kept, extra):
        n, context, delta = kept
        attn = self.layers[block_name(extra)]
        q, k = attn.to_q(n), attn.to_k(context)
        ip = attention_delta(q, k, delta, extra["n_heads"]).to(n.dtype)
        return out + output_delta(attn, ip).to(out.dtype)
