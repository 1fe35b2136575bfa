"""The expression adapter inside a UNet's cross-attention, as two list-style attention patches (so it composes with
other packs' patches): one keeps the attention input, the other adds the decoupled term to the output.

The adapter's term is ``strength * to_out(attn(q, k_ip, v_ip))`` without to_out's bias (the bias is already in the
text attention's output): IP-Adapter's ``to_out(attn_text + s * attn_ip)`` split by linearity.
"""
from __future__ import annotations

import torch


def cross_attention_layers(unet) -> list:
    """[((block, index), attn2)] in the adapter files' order: input blocks, output blocks, then the middle block.

    ``block`` is ComfyUI's ("input" | "output" | "middle", id) and ``index`` the transformer block inside it.
    """
    found = []
    groups = [("input", list(enumerate(unet.input_blocks))), ("output", list(enumerate(unet.output_blocks))),
              ("middle", [(0, unet.middle_block)])]
    for name, blocks in groups:
        for block_id, block in blocks:
            for layer in block:
                for index, tb in enumerate(getattr(layer, "transformer_blocks", [])):
                    found.append(((name, block_id), index, tb.attn2))
    return [((name_id, index), attn) for name_id, index, attn in found]


class ExpressionAttentionPatch:
    def __init__(self, adapter, values: torch.Tensor, strength: float, layers: list, sigma_start: float,
                 sigma_end: float):
        self.adapter = adapter
        self.values = values.float()
        self.strength = float(strength)
        self.layers = {key: (i, attn) for i, (key, attn) in enumerate(layers)}
        self.sigma_start, self.sigma_end = sigma_start, sigma_end
        self._inputs = {}
        self._tokens = {}

    def __deepcopy__(self, memo):
        return self  # ModelPatcher.clone deep-copies model_options; this object holds the UNet's own modules

    def _key(self, extra):
        return extra.get("block"), extra.get("block_index", 0)

    def before_attention(self, n, context, value, extra):
        key = self._key(extra)
        if key in self.layers:
            self._inputs[key] = n
        return n, context, value

    def _active(self, extra) -> bool:
        sigmas = extra.get("sigmas")
        if sigmas is None:
            return True
        sigma = float(sigmas.reshape(-1)[0])
        return self.sigma_end - 1e-6 <= sigma <= self.sigma_start + 1e-6

    def tokens_for(self, cond_or_uncond: list[int], rows: int, device, dtype) -> torch.Tensor:
        """One token set per batch row: the blendshapes for cond rows, zeros for uncond rows."""
        key = (tuple(cond_or_uncond), rows, device, dtype)
        if key not in self._tokens:
            per = rows // max(len(cond_or_uncond), 1)
            vals = torch.stack([self.values if c == 0 else torch.zeros_like(self.values) for c in cond_or_uncond])
            adapter = self.adapter.to(device=device, dtype=dtype)
            with torch.no_grad():
                self._tokens = {key: adapter.tokens(vals.to(device)).repeat_interleave(per, dim=0)}
        return self._tokens[key]

    def after_attention(self, out, extra):
        key = self._key(extra)
        n = self._inputs.pop(key, None)
        if n is None or key not in self.layers or not self._active(extra):
            return out
        layer, attn = self.layers[key]
        cond_or_uncond = extra.get("cond_or_uncond", [0])
        tokens = self.tokens_for(list(cond_or_uncond), n.shape[0], n.device, n.dtype)
        with torch.no_grad():
            q = attn.to_q(n)
            ip = self.adapter.attention(layer, q, tokens, extra["n_heads"])
            delta = torch.nn.functional.linear(ip, attn.to_out[0].weight.to(ip))
        return out + self.strength * delta.to(out.dtype)
