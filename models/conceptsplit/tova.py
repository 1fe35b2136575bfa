"""Token-wise value adapters (ToVA, ConceptSplit): one value-only LoRA per concept, bound to its token's positions.

For a cross-attention layer with value projection ``to_v`` (context width C, inner width D), concept i adds

    v = to_v(context) + sum_i  mask_i * strength_i * up_i(down_i(context))

where ``down_i`` is (rank, C), ``up_i`` is (D, rank) (zero at initialisation) and ``mask_i`` is 1 at the token
positions concept i is bound to and 0 elsewhere (every other token's value row is untouched). Adapters are kept
apart, never merged into ``to_v`` or into each other: each reads its own rows only.

The host's ``attn2_patch`` can only replace the value *input* (context space, before ``to_v``), which cannot carry a
LoRA whose ``up`` lives in the inner space. Attention is linear in its values, so the patch instead adds
``to_out(attn(q, k, delta))`` (without to_out's bias) to the layer's output: ``attn(q, k, v + delta) = attn(q, k, v)
+ attn(q, k, delta)``. Both patches are list-style, so other packs' patches still run.

Layer names are "<block>.<id>.<index>" as the host names cross-attention blocks ("input.1.0", "middle.0.0", ...).
Plain torch: no ComfyUI import.
"""
from __future__ import annotations

import json
import math

import torch
from torch import nn

from ..patch_layer import layer_name  # noqa: F401  (ToVA files name their layers so)

FORMAT = "editlab.tova.v1"
METADATA_KEYS = ("format", "token", "family", "rank", "context_dim", "layers")


class ToVAFileError(ValueError):
    """A ToVA file that cannot be used (unreadable, wrong shapes, missing metadata)."""


class ValueLoRA(nn.Module):
    """One concept's value LoRA over a set of cross-attention layers. ``layers``: name -> inner width D."""

    def __init__(self, token: str, family: str, rank: int, context_dim: int, layers: dict, seed: int = 0):
        super().__init__()
        if int(rank) < 1 or int(context_dim) < 1 or not layers:
            raise ValueError(f"a ToVA adapter needs rank >= 1, a context width >= 1 and at least one layer; got rank "
                             f"{rank}, context width {context_dim}, {len(layers)} layers")
        self.token, self.family = str(token), str(family)
        self.rank, self.context_dim = int(rank), int(context_dim)
        self.layer_names = list(layers)
        self._index = {name: i for i, name in enumerate(self.layer_names)}
        gen = torch.Generator().manual_seed(int(seed))
        bound = 1.0 / math.sqrt(self.context_dim)  # as nn.Linear's default (kaiming uniform, a = sqrt(5))
        self.down = nn.ParameterList(
            nn.Parameter((torch.rand(self.rank, self.context_dim, generator=gen) * 2 - 1) * bound)
            for _ in self.layer_names)
        self.up = nn.ParameterList(nn.Parameter(torch.zeros(int(layers[n]), self.rank)) for n in self.layer_names)

    def inner_dims(self) -> dict:
        return {n: int(self.up[i].shape[0]) for n, i in self._index.items()}

    def has_layer(self, name: str) -> bool:
        return name in self._index

    def term(self, name: str, context: torch.Tensor) -> torch.Tensor:
        """``up(down(context))`` for layer ``name``, (B, T, D), in the adapter's own precision."""
        i = self._index[name]
        down, up = self.down[i], self.up[i]
        return nn.functional.linear(nn.functional.linear(context.to(down.dtype), down), up)


class RowPositions(list):
    """Token positions per batch row: a training batch whose rows have different captions (prompt templates) has the
    word at different positions in each. Row r of a batch uses entry r (a list of positions)."""


def position_mask(positions, rows: int, tokens: int, active_rows=None, device=None) -> torch.Tensor:
    """(rows, tokens, 1) float mask: 1 at ``positions`` (those inside ``tokens``) of the ``active_rows`` (default
    all), 0 elsewhere. ``positions`` may be a :class:`RowPositions` (one list per row)."""
    mask = torch.zeros(rows, tokens, 1, device=device)
    per_row = isinstance(positions, RowPositions)
    cols = None if per_row else [p for p in positions if 0 <= p < tokens]
    row_ids = range(rows) if active_rows is None else active_rows
    for r in row_ids:
        mask[r, [p for p in positions[r] if 0 <= p < tokens] if per_row else cols] = 1.0
    return mask


class Binding:
    """An adapter bound to its token positions in the prompt, with a strength."""

    def __init__(self, adapter: ValueLoRA, positions, strength: float = 1.0):
        if not isinstance(positions, RowPositions):
            positions = sorted(set(int(p) for p in positions))
        self.adapter, self.positions, self.strength = adapter, positions, float(strength)


def value_delta(bindings: list, name: str, context: torch.Tensor, active_rows=None) -> torch.Tensor | None:
    """``sum_i mask_i * strength_i * up_i(down_i(context))`` for layer ``name``, (B, T, D) float32; None when no
    binding has this layer. Rows not in ``active_rows`` (default all) get nothing."""
    total = None
    for b in bindings:
        if not b.adapter.has_layer(name):
            continue
        mask = position_mask(b.positions, context.shape[0], context.shape[1], active_rows, context.device)
        term = mask * (b.strength * b.adapter.term(name, context).float())
        total = term if total is None else total + term
    return total


def moved_values(v: torch.Tensor, bindings: list, name: str, source: torch.Tensor, active_rows=None) -> torch.Tensor:
    """``v`` (B, T, D) with each bound row moved by its adapter reading ``source`` (B, T, C); every other row is
    ``v``'s own, bit for bit."""
    delta = value_delta(bindings, name, source, active_rows)
    if delta is None:
        return v
    bound = torch.zeros(delta.shape[:2], dtype=torch.bool, device=v.device)
    for b in bindings:
        if b.adapter.has_layer(name):
            bound |= position_mask(b.positions, v.shape[0], v.shape[1], active_rows, v.device)[..., 0].bool()
    return torch.where(bound[..., None], (v.float() + delta).to(v.dtype), v)


def adapted_value(to_v, bindings: list, name: str, context: torch.Tensor, active_rows=None) -> torch.Tensor:
    """The value the adapted layer attends to: ``to_v(context)`` with each bound row moved by its adapter. Rows no
    adapter is bound to are ``to_v(context)``'s rows, bit for bit."""
    return moved_values(to_v(context), bindings, name, context, active_rows)


def attention_delta(q: torch.Tensor, k: torch.Tensor, delta: torch.Tensor, heads: int) -> torch.Tensor:
    """``attn(q, k, delta)`` (B, N, D): softmax(q k^T / sqrt(d)) delta, per head (attention is linear in values)."""
    b, n, inner = q.shape
    split = lambda t: t.reshape(b, -1, heads, inner // heads).transpose(1, 2)
    out = nn.functional.scaled_dot_product_attention(split(q.float()), split(k.float()), split(delta.float()))
    return out.transpose(1, 2).reshape(b, n, inner)


# -- files ----------------------------------------------------------------------------------------------------------

def save_tova(adapter: ValueLoRA, path, stats: dict | None = None, overwrite: bool = True):
    from ..common import atomic_save_safetensors

    tensors = {}
    for i, name in enumerate(adapter.layer_names):
        tensors[f"{name}.down"] = adapter.down[i].detach().float().cpu()
        tensors[f"{name}.up"] = adapter.up[i].detach().float().cpu()
    metadata = {"format": FORMAT, "token": adapter.token, "family": adapter.family, "rank": str(adapter.rank),
                "context_dim": str(adapter.context_dim), "layers": json.dumps(adapter.layer_names),
                "stats": json.dumps(stats or {})}
    return atomic_save_safetensors(tensors, path, metadata, overwrite=overwrite)


def load_tova(path) -> ValueLoRA:
    """A ToVA file back as a ValueLoRA. Anything unreadable, without the metadata, or whose tensors do not match
    it is a ToVAFileError saying what is wrong."""
    from safetensors import SafetensorError, safe_open

    name = str(path).replace("\\", "/").rsplit("/", 1)[-1]
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ToVAFileError(f"{name} is not a readable safetensors file: {exc}") from None
    missing = [k for k in METADATA_KEYS if k not in metadata]
    if missing:
        raise ToVAFileError(f"{name} lacks the ToVA metadata {', '.join(missing)} (not a ToVA file?)")
    if metadata["format"] != FORMAT:
        raise ToVAFileError(f"{name} has format {metadata['format']!r}, not {FORMAT!r}")
    try:
        rank, context_dim = int(metadata["rank"]), int(metadata["context_dim"])
        layers = json.loads(metadata["layers"])
    except (TypeError, ValueError, RecursionError):
        raise ToVAFileError(f"{name}: its rank, context_dim or layers metadata is not valid") from None
    if not isinstance(layers, list) or not layers or not all(isinstance(l, str) for l in layers):
        raise ToVAFileError(f"{name}: its layers metadata is not a list of layer names")
    expected = {f"{l}.{part}" for l in layers for part in ("down", "up")}
    if set(tensors) != expected:
        extra, absent = sorted(set(tensors) - expected)[:3], sorted(expected - set(tensors))[:3]
        raise ToVAFileError(f"{name}: its tensors do not match its layers metadata (missing {absent}, "
                            f"unexpected {extra})")
    inner = {}
    for l in layers:
        down, up = tensors[f"{l}.down"], tensors[f"{l}.up"]
        if tuple(down.shape) != (rank, context_dim) or up.ndim != 2 or up.shape[1] != rank or up.shape[0] < 1:
            raise ToVAFileError(f"{name}: layer {l} has down {tuple(down.shape)} and up {tuple(up.shape)}; expected "
                                f"down ({rank}, {context_dim}) and up (inner, {rank})")
        if not (down.is_floating_point() and up.is_floating_point()):
            raise ToVAFileError(f"{name}: layer {l} holds non-float tensors")
        inner[l] = up.shape[0]
    adapter = ValueLoRA(metadata["token"], metadata["family"], rank, context_dim, inner)
    with torch.no_grad():
        for i, l in enumerate(layers):
            adapter.down[i].copy_(tensors[f"{l}.down"].float())
            adapter.up[i].copy_(tensors[f"{l}.up"].float())
    adapter.stats = metadata.get("stats", "{}")
    return adapter.eval().requires_grad_(False)
