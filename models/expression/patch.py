"""The expression adapter inside a UNet's cross-attention, as two list-style attention patches (so it composes with
other packs' patches): one keeps the attention input, the other adds the decoupled term to the output.

The adapter's term is ``strength * to_out(attn(q, k_ip, v_ip))`` without to_out's bias (the bias is already in the
text attention's output): IP-Adapter's ``to_out(attn_text + s * attn_ip)`` split by linearity.
"""
from __future__ import annotations

import torch

from ..patch_layer import (Hook, KeptInputPatch, cross_attention_layers, in_sigma_window, output_delta,  # noqa: F401
                           transformer_blocks)


class ExpressionAttentionPatch(KeptInputPatch):
    reports_models = True  # the host loads the adapter's model wrappers with the UNet

    def __init__(self, adapter, values: torch.Tensor, strength: float, layers: list, sigma_start: float,
                 sigma_end: float):
        self.adapter = adapter
        self.values = values.float()
        self.strength = float(strength)
        self.layers = {key: (i, attn) for i, (key, attn) in enumerate(layers)}
        self.sigma_start, self.sigma_end = sigma_start, sigma_end
        self._tokens = {}
        self.training = False  # training: values are per row (B, D), tokens keep their gradient, nothing cached
        self.extra_models = []  # host model wrappers of the adapter (set by the node) for memory management
        super().__init__()

    def to(self, device_or_dtype):
        """Devices move the adapter; dtypes are ignored: the adapter keeps its own precision (the model's may be
        fp8 storage) and its tokens are cast to the activations' dtype where they meet them."""
        if not isinstance(device_or_dtype, torch.dtype):
            self.adapter.to(device_or_dtype)
            self._tokens = {}
        return self

    def _key(self, extra):
        return extra.get("block"), extra.get("block_index", 0)

    def keep(self, n, context, value, extra):
        return n if self._key(extra) in self.layers else None

    def tokens_for(self, cond_or_uncond: list[int], rows: int, device, dtype) -> torch.Tensor:
        """One token set per batch row: the blendshapes for cond rows, zeros for uncond rows."""
        if self.training:
            return self.adapter.tokens(self.values.to(device))
        key = (tuple(cond_or_uncond), rows, device, dtype)
        if key not in self._tokens:
            per = rows // max(len(cond_or_uncond), 1)
            vals = torch.stack([self.values if c == 0 else torch.zeros_like(self.values) for c in cond_or_uncond])
            weight = next(self.adapter.parameters())
            if weight.device != torch.device(device):
                self.to(device)  # normally done by the host through Hook.to when it loads the model
            with torch.no_grad():  # in the adapter's own dtype; cast where they meet the activations
                tokens = self.adapter.tokens(vals.to(device=device, dtype=weight.dtype))
            self._tokens = {key: tokens.repeat_interleave(per, dim=0)}
        return self._tokens[key]

    def apply(self, out, n, extra):
        if not in_sigma_window(extra, self.sigma_start, self.sigma_end):
            return out
        layer, attn = self.layers[self._key(extra)]
        cond_or_uncond = extra.get("cond_or_uncond", [0])
        tokens = self.tokens_for(list(cond_or_uncond), n.shape[0], n.device, n.dtype)
        # the adapter's term keeps its graph only in a training forward that records one (never in the trainer's
        # no-grad loss evaluation: a graph built there and dropped, its saved tensors are held by the trainer's
        # allow_mutation_on_saved_tensors context until training ends: +19 GB over 16 evaluations of SDXL at 1024)
        with torch.set_grad_enabled(self.training and torch.is_grad_enabled()):
            q = attn.to_q(n)
            delta = output_delta(attn, self.adapter.attention(layer, q, tokens, extra["n_heads"]))
        return out + self.strength * delta.to(out.dtype)


class ReferenceAttentionPatch(KeptInputPatch):
    """Self-attention that also sees a reference image's features: for each layer, the output moves by ``strength``
    times ``attn(q, [k; k_ref], [v; v_ref]) - attn(q, k, v)`` (through to_out, without its bias), added to what the
    attention gave: alone, strength 1 is the fully reference-extended attention; with another patch that changes the
    attention (PAG, a second reference) both changes are kept.
    The reference features are the self-attention inputs of a pass over the reference latent (written once).

    With a ``lora`` (``ReferenceLoRA``, the trained reference adapter) the extended attention's projections carry
    its LoRA; without one it is the training-free reference adapter. While ``training``, ``rows`` picks each batch
    row's reference (features then hold one row per training image)."""

    def __init__(self, features: dict, strength: float, layers: list, lora=None):
        self.features = features  # (block, index) -> (1 or images, N_ref, C)
        self.strength = float(strength)
        self.layers = dict(layers)  # (block, index) -> attn1
        self.lora = lora
        self.training = False
        self.rows = None  # training: the reference row of each batch row
        self.extra_models = []
        super().__init__()

    def to(self, device_or_dtype):
        """The host moves the recorded features (and the LoRA) with the model (devices only: they keep their
        precision)."""
        if not isinstance(device_or_dtype, torch.dtype):
            self.features = {k: v.to(device_or_dtype) for k, v in self.features.items()}
            if self.lora is not None:
                self.lora.to(device_or_dtype)
        return self

    def keep(self, n, context, value, extra):
        key = (extra.get("block"), extra.get("block_index", 0))
        return (n, context) if key in self.features and key in self.layers else None

    def apply(self, out, kept, extra):
        key = (extra.get("block"), extra.get("block_index", 0))
        n, context = kept
        attn = self.layers[key]
        ref = self.features[key].to(n)
        if self.training and self.rows is not None:
            ref = ref[self.rows.to(ref.device)]
        else:
            ref = ref[:1].expand(n.shape[0], -1, -1)
        proj = attn if self.lora is None else self.lora.projections(key)
        source = torch.cat([n if context is None else context, ref], dim=1)
        q, k, v = proj.to_q(n), proj.to_k(source), proj.to_v(source)
        heads = extra["n_heads"]
        b, _, inner = q.shape
        split = lambda t: t.reshape(b, -1, heads, inner // heads).transpose(1, 2)
        qh, kh, vh = split(q), split(k), split(v)
        extended = torch.nn.functional.scaled_dot_product_attention(qh, kh, vh)
        own = n.shape[1] if context is None else context.shape[1]  # the layer's own keys come first
        plain = torch.nn.functional.scaled_dot_product_attention(qh, kh[:, :, :own], vh[:, :, :own])
        # the change the reference makes, added to whatever the attention gave (another patch's, PAG's perturbed
        # attention): out + s * (to_out(attn(q, [k; k_ref], [v; v_ref])) - to_out(attn(q, k, v)))
        delta = (extended - plain).transpose(1, 2).reshape(b, -1, inner)
        return out + self.strength * (proj.to_out(delta) - proj.to_out(delta.new_zeros((1, 1, inner)))).to(out)


class FeatureRecorder:
    """attn1 patch that records each layer's self-attention input during one pass (the reference 'write')."""

    def __init__(self, keys):
        self.keys = set(keys)
        self.features = {}

    def __deepcopy__(self, memo):
        return self

    def __call__(self, n, context, value, extra):
        key = (extra.get("block"), extra.get("block_index", 0))
        if key in self.keys:
            self.features[key] = n[:1].detach().clone()
        return n, context, value
