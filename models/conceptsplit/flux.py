"""ToVA on Flux: the text stream's value vectors in the double blocks, moved at the bound tokens' positions.

Flux's double blocks give no list-style hook between the text stream's value projection and the joint attention, so
this is an attention override (``transformer_options["optimized_attention_override"]``, called with the projected
``q, k, v`` as [B, H, N, D]): in a double block it moves the bound text rows of ``v`` and calls the override that was
there before it (if any), else the host's attention. Where the text rows sit in the joint sequence follows from the
text length of the forward, kept in that forward's own transformer options (``TEXT_LENGTH``), never on the patch: a
diffusion-model wrapper (the host's ``wrappers``, run at the start of every forward with its options) writes the
context's length, and the ``post_input`` patch, on hosts that hand it the options (0.33), the text stream's length
after the post_input patches before it. So two patches of one kind in one model, and a forward run inside another
(LODA's gradient pass, a nested call with another prompt), never read each other's length. ``installed`` sets one up.

The adapter reads the text value vectors themselves (``down``: (rank, hidden)): ``v + up(down(v))``. Flux's value
projection is square and invertible, so these span the same rank-r updates as a LoRA on the projection's input.
Layer names: "double.<index>".
"""
from __future__ import annotations

import torch

from ...kernels.attention import key_probabilities
from ...kernels.attention.comfy import MapRequest, call_chain, chain_holds, with_request
from ..patch_layer import Hook, cond_rows
from .tova import moved_values

TEXT_LENGTH = "editlab_flux_text_length"  # the forward's text length, in its transformer options
TEXT_VALUES = "editlab_flux_text_values"  # {block: the text values as the block made them}, per forward
WRAPPER_TYPE = "diffusion_model"  # comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL (0.3.75 and 0.33)
WRAPPER_KEY = "editlab_flux_text_length"


def record_text_length(executor, *args, **kwargs):
    """Diffusion-model wrapper: the forward's text length into its own transformer options, then the forward. Flux's
    ``_forward(x, timestep, context, y, guidance, ref_latents, control, transformer_options, ...)``."""
    options = kwargs.get("transformer_options", args[7] if len(args) > 7 else None)
    context = kwargs.get("context", args[2] if len(args) > 2 else None)
    if isinstance(options, dict) and context is not None:
        options[TEXT_LENGTH] = int(context.shape[1])
    return executor(*args, **kwargs)


def text_length(options: dict | None) -> int | None:
    """The text length of the forward these transformer options belong to (None outside a tracked forward)."""
    return (options or {}).get(TEXT_LENGTH)


def installed(transformer_options: dict | None, patch) -> dict:
    """A copy of ``transformer_options`` with ``patch`` (a Flux override with ``input_hook``) as the attention
    override, its post_input hook appended, and the text-length wrapper (once). Nested lists are copied: the given
    options are not changed."""
    to = dict(transformer_options or {})
    to["optimized_attention_override"] = patch
    patches = {k: list(v) for k, v in to.get("patches", {}).items()}
    patches.setdefault("post_input", []).append(patch.input_hook)
    to["patches"] = patches
    return with_text_length(to)


def with_text_length(transformer_options: dict) -> dict:
    """A copy of ``transformer_options`` whose wrappers record each forward's text length (idempotent)."""
    to = dict(transformer_options)
    wrappers = {t: {k: list(v) for k, v in d.items()} for t, d in to.get("wrappers", {}).items()}
    mine = wrappers.setdefault(WRAPPER_TYPE, {}).setdefault(WRAPPER_KEY, [])
    if record_text_length not in mine:
        mine.append(record_text_length)
    to["wrappers"] = wrappers
    return to


def _post_input(args: dict) -> dict:
    options = args.get("transformer_options")
    if isinstance(options, dict):
        options[TEXT_LENGTH] = int(args["txt"].shape[1])
    return args


def double_block_layers(diffusion_model) -> dict:
    """{"double.i": block} of a host Flux model (empty for other models)."""
    return {f"double.{i}": b for i, b in enumerate(getattr(diffusion_model, "double_blocks", None) or [])}


def value_width(block) -> int:
    """Width of a double block's text value vectors (its hidden size)."""
    return int(block.txt_attn.qkv.weight.shape[0]) // 3


class FluxToVAPatch:
    def __init__(self, bindings: list, blocks: dict, previous=None):
        self.bindings = list(bindings)
        self.blocks = dict(blocks)
        self.previous = previous  # the attention override this one wraps (another pack's), or None
        self.input_hook = Hook(self.post_input, self, report_models=False)

    extra_models = ()

    def __deepcopy__(self, memo):
        return self  # ModelPatcher.clone deep-copies model_options; the patch is shared, never copied

    def to(self, device_or_dtype):
        if not isinstance(device_or_dtype, torch.dtype):
            for b in self.bindings:
                b.adapter.to(device_or_dtype)
        return self

    def post_input(self, args: dict) -> dict:
        # hosts that hand post_input the transformer options (0.33; 0.3.75 does not) let the chain be checked
        if "transformer_options" in args and not chain_holds(args["transformer_options"], self):
            raise RuntimeError(
                "EditLab ToVA Apply (Flux) acts through the model's attention override, and a node applied to the "
                "MODEL after it replaced that override (ComfyUI's ModelAttentionBackend, or another pack's node that "
                "sets one without calling the previous one): apply that node before ToVA Apply, not after")
        return _post_input(args)

    def __call__(self, func, *args, **kwargs):
        options = kwargs.get("transformer_options") or {}
        name = f"double.{options.get('block_index')}" if options.get("block_type") == "double" else None
        if name in self.blocks and text_length(options) and kwargs.get("skip_reshape") and len(args) >= 3 \
                and args[2].ndim == 4:
            args = (args[0], args[1], self.moved(args[2], name, options), *args[3:])
        return call_chain(self.previous, func, False, args, kwargs)

    def moved(self, v: torch.Tensor, name: str, options: dict) -> torch.Tensor:
        """``v`` [B, H, N, D] with the bound text rows moved; every other row bit-identical."""
        b, h, n, d = v.shape
        t = min(text_length(options), n)
        start = n - t if getattr(self.blocks[name], "flipped_img_txt", False) else 0
        for binding in self.bindings:
            if binding.adapter.has_layer(name) and next(binding.adapter.parameters()).device != v.device:
                binding.adapter.to(v.device)  # normally done by the host through Hook.to
        txt = v[:, :, start:start + t].transpose(1, 2).reshape(b, t, h * d)
        rows = cond_rows(options.get("cond_or_uncond", [0]), b)
        # every ToVA patch of this forward reads the text values as the block made them (the first one to see the
        # block keeps them in the forward's options): two ToVA Apply nodes on one word add their terms, in either
        # order, as on a UNet; reading the values the other patch had already moved made the result depend on the
        # order of the nodes (v + a2(v) + a1(v + a2(v)))
        source = options.setdefault(TEXT_VALUES, {}).setdefault(name, txt) if isinstance(options, dict) else txt
        if source.shape != txt.shape:
            source = txt
        new = moved_values(txt, self.bindings, name, source, rows)
        if new is txt:
            return v
        new = new.reshape(b, t, h, d).transpose(1, 2)
        return torch.cat([v[:, :, :start], new, v[:, :, start + t:]], dim=2)


class FluxMapTap:
    """Attention override (chained to ``previous``) recording, in each double block, each concept's map: the
    attention probability image queries put on the concept's text tokens (softmax over all keys, averaged over
    heads, conditional rows), on the image token grid ``grid`` and resized to ``size``; kept with its gradient.
    The block's attention itself is computed by the token-map kernel, which hands the probabilities on the
    concepts' keys out of the same pass (the torch reference, chunked over queries, where Triton cannot serve).

    Nothing after the last block it records enters a loss on its maps, so from the first attention call past that
    block (a later double block, or a single block) the rest of the network runs with autograd off: nothing of it is
    kept for backward (LODA's gradient pass: 38 of Flux dev's 57 blocks). The caller turns autograd back on."""

    STOP_EARLY = True

    def __init__(self, concepts: list, blocks: dict, size: tuple[int, int], grid: tuple[int, int], previous=None,
                 when=None):
        self.concepts = [list(p) for p in concepts]
        self.blocks, self.size, self.grid, self.previous = dict(blocks), tuple(size), tuple(grid), previous
        self.when = when  # optional filter on the transformer options (e.g. one sigma)
        self.collected = []
        self.input_hook = Hook(self.post_input, self, report_models=False)
        self.last_block = max((int(n.split(".")[1]) for n in self.blocks), default=None)

    extra_models = ()

    def __deepcopy__(self, memo):
        return self

    def to(self, device_or_dtype):
        return self

    def post_input(self, args: dict) -> dict:
        return _post_input(args)

    def _past_the_maps(self, options: dict) -> bool:
        kind, index, last = options.get("block_type"), options.get("block_index"), self.last_block
        return bool(self.STOP_EARLY and self.collected and last is not None and
                    (kind == "single" or (kind == "double" and isinstance(index, int) and index > last)))

    def __call__(self, func, *args, **kwargs):
        options = kwargs.get("transformer_options") or {}
        if torch.is_grad_enabled() and self._past_the_maps(options):
            torch.set_grad_enabled(False)
        name = f"double.{options.get('block_index')}" if options.get("block_type") == "double" else None
        own, delivered = False, []
        if name in self.blocks and text_length(options) and kwargs.get("skip_reshape") and len(args) >= 2 \
                and args[0].ndim == 4 and (self.when is None or self.when(options)):
            layout = concept_layout(self.concepts, self.grid, self.blocks[name], args[0], options)
            if layout is not None:
                # the maps come out of the attention call itself (the kernel keeps the chosen keys' probabilities
                # as it goes): one pass, not the host's attention and a second pass for the maps
                keys, slots, rows, queries = layout
                func, own = with_request(func, MapRequest(keys, None, lambda r: delivered.append(r.probs))), True
        out = call_chain(self.previous, func, own, args, kwargs)
        if own:
            if delivered:
                probs = delivered[0][rows][:, :, queries]
            else:  # an override further in ran attention of its own: the maps in a pass of their own
                probs = key_probabilities(args[0][rows][:, :, queries], args[1][rows], keys).probs
            self.collected.append(self.resized(probs, slots))
        return out

    def resized(self, probs, slots):
        """Each concept's map from the image queries' probabilities on the keys (b, h, cells, S): its slots summed,
        averaged over heads and rows, on the grid, resized to ``size``."""
        import torch.nn.functional as F

        probs = probs.mean(1)  # (b, cells, S)
        maps = torch.stack([probs[:, :, s].sum(-1).mean(0).reshape(self.grid) for s in slots])
        return F.interpolate(maps[None], size=self.size, mode="bilinear", align_corners=False)[0]

    def maps(self) -> torch.Tensor:
        return torch.stack(self.collected).mean(0)


def concept_layout(concepts: list, grid: tuple[int, int], block, q: torch.Tensor, options: dict):
    """Where the concepts' text tokens and the image tokens sit in a double block's joint sequence (q: [B, H, N, D]):
    (the concepts' keys, a CPU tensor: the kernel reads them on the host; each concept's slots among them; the
    conditional rows; the image queries), or None when the call holds no conditional row or too few image tokens.
    Text first, unless the block says ``flipped_img_txt``."""
    b, _, n, _ = q.shape
    t = min(text_length(options), n)
    txt_start, img_start = (n - t, 0) if getattr(block, "flipped_img_txt", False) else (0, t)
    cells = grid[0] * grid[1]
    rows = cond_rows(options.get("cond_or_uncond", [0]), b)
    if not rows or n - t < cells:
        return None
    keys = sorted({txt_start + p for ps in concepts for p in ps if p < t})
    slot = {key: i for i, key in enumerate(keys)}
    slots = [[slot[txt_start + p] for p in ps if p < t] for ps in concepts]
    return torch.tensor(keys, dtype=torch.long), slots, rows, slice(img_start, img_start + cells)


def image_grid(diffusion_model, size: tuple[int, int]) -> tuple[int, int]:
    """The image token grid of a latent of ``size`` (H, W): the latent in patches (padded up)."""
    p = int(getattr(diffusion_model, "patch_size", 2))
    return (-(-size[0] // p), -(-size[1] // p))


INSPECTED_CALLS = 8  # FluxAFG.outside, when asked for (``inspect``): the first calls only


class FluxAFG:
    """Attention fixing guidance on Flux (an attention override chained to ``previous``): in each double block, the
    logits from image queries outside a concept's mask to that concept's text tokens are lowered by ``strength``,
    through an additive attention mask on the conditional rows. ``outside`` records, per call, the attention mass the
    concepts put outside their masks without and with the bias (for inspection; the first few calls).
    Assumes Flux's order in the joint sequence (text first) when it measures; the bias itself follows the block."""

    def __init__(self, concepts: list, masks: torch.Tensor, blocks: dict, strength: float, grid: tuple[int, int],
                 previous=None, inspect: int = 0):
        self.concepts = [list(p) for p in concepts]
        self.masks, self.blocks, self.strength = masks.float(), dict(blocks), float(strength)
        self.grid, self.previous = tuple(grid), previous
        self.inspect = int(inspect)  # calls whose outside mass is measured (dense products: tests only)
        self.outside = []
        self.input_hook = Hook(self.post_input, self, report_models=False)

    extra_models = ()

    def __deepcopy__(self, memo):
        return self

    def to(self, device_or_dtype):
        return self

    post_input = FluxMapTap.post_input

    def __call__(self, func, *args, **kwargs):
        options = kwargs.get("transformer_options") or {}
        name = f"double.{options.get('block_index')}" if options.get("block_type") == "double" else None
        own = False  # func replaced by the kernel with the bias
        if name in self.blocks and text_length(options) and kwargs.get("skip_reshape") and len(args) >= 2 \
                and args[0].ndim == 4:
            inspect = len(self.outside) < self.inspect  # two more attention-sized products: tests only
            if kwargs.get("mask") is None:
                # the bias on the concepts' keys only: the kernel, or where it cannot serve (no Triton, the CPU) the
                # reference chunked over queries: no (n, n) mask on any device
                keyed = self.key_bias(args[0], name, options)
                if keyed is not None:
                    if inspect:
                        self.outside.append(record_outside_mass(self, args[0], args[1],
                                                                self.bias(args[0], name, options), name, options))
                    func, own = with_request(func, MapRequest(*keyed)), True
            else:  # a host mask already (n, n): the bias joins it
                bias = self.bias(args[0], name, options)
                if bias is not None:
                    if inspect:
                        self.outside.append(record_outside_mass(self, args[0], args[1], bias, name, options))
                    kwargs = {**kwargs, "mask": kwargs["mask"] + bias}
        return call_chain(self.previous, func, own, args, kwargs)

    def bias(self, q, name, options):
        """The same bias as :meth:`key_bias`, as a dense (b, 1, n, n) additive mask for the host's attention."""
        found = self.key_bias(q, name, options)
        if found is None:
            return None
        keys, on_keys = found
        b, _, n, _ = q.shape
        bias = torch.zeros(b, 1, n, n, device=q.device, dtype=q.dtype)
        bias[..., keys] = on_keys.to(q.dtype)
        return bias

    def key_bias(self, q, name, options):
        """(keys (S,), bias (b, 1, n, S)): ``bias`` on the concepts' text keys only, for the attention kernel."""
        import torch.nn.functional as F

        layout = concept_layout(self.concepts, self.grid, self.blocks[name], q, options)
        if layout is None:
            return None
        keys, slots, rows, queries = layout
        masks = F.interpolate(self.masks[None].to(q.device), size=self.grid, mode="nearest")[0].reshape(
            len(self.concepts), -1) > 0.5
        # the image queries' bias (cells, S), the same on every conditional row; built on the device without
        # reading anything back (no nonzero())
        cells = torch.zeros(masks.shape[1], keys.numel(), device=q.device, dtype=torch.float32)
        for mask, cols in zip(masks, slots):
            if cols:
                cells[:, cols] = torch.where(mask[:, None], cells[:, cols], -self.strength)
        bias = torch.zeros(q.shape[0], 1, q.shape[2], keys.numel(), device=q.device, dtype=torch.float32)
        bias[rows, 0, queries] = cells
        return keys, bias


def record_outside_mass(afg: FluxAFG, q, k, bias, name, options) -> tuple[float, float]:
    """The attention mass the concepts put outside their masks, without and with ``bias`` (for tests)."""
    d = q.shape[-1]
    logits = q.float() @ k.float().transpose(-1, -2) / d ** 0.5
    t = text_length(options)
    img = slice(t, t + afg.grid[0] * afg.grid[1])
    out = []
    for extra in (0.0, bias.float()):
        p = (logits + extra).softmax(-1).mean(1)[:, img]
        masks = torch.nn.functional.interpolate(afg.masks[None], size=afg.grid, mode="nearest")[0].reshape(
            len(afg.concepts), -1) > 0.5
        out.append(float(sum(p[:, ~m][:, :, cs].sum() for m, cs in zip(masks, afg.concepts))))
    return out[0], out[1]
