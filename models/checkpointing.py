"""Gradient checkpointing for training inside a frozen host network (shared by the trainers of every method).

UNets (SD1.5/SD2/SDXL): :func:`unet_checkpointing` wraps the forward of every ResBlock and SpatialTransformer of the
input, middle and output blocks while training runs, and restores the modules' own forwards afterwards.

DiTs (Flux): training through a DiT's blocks without holding every activation: gradient checkpointing per block, and
autograd saves that survive the host's in-place residual adds without copying everything.

The host's Flux blocks add their residuals into their input streams in place (``img += ...``, ``txt += ...``,
``x += ...``), after a LayerNorm has saved that very tensor for backward; autograd then refuses (or, inside a
checkpoint's recomputation, would silently read the overwritten values). Two things make the blocks trainable:

- each block runs on fresh copies of its streams (so the previous block's output, which autograd may hold, is never
  overwritten), and
- while a block runs, a saved tensor that shares storage with its streams is copied when autograd saves it (the only
  saves the in-place adds overwrite: two per stream in a double block, one in a single block); every other saved
  tensor is kept as it is.

With ``checkpoint`` on, each block runs under torch's re-entrant checkpoint: its forward keeps nothing but its inputs
(the streams, the modulation vector, the positional embedding), and backward recomputes the block, one at a time.

Use: ``BlockTraining(checkpoint).patches(diffusion_model)`` as the host's ``patches_replace["dit"]`` (the block
replacement protocol of ComfyUI's Flux: ``patch(args, {"original_block": fn})``), and run forward and backward inside
``saved_tensor_copies()``.
"""
from __future__ import annotations

import contextlib
import threading
import weakref

import torch
import torch.utils.checkpoint
from torch.overrides import _get_current_function_mode_stack
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

STREAMS = {"double_block": ("img", "txt"), "single_block": ("img",)}
SAVE_OBSERVERS: list = []  # callables ``f(tensor, copied)`` told of every save (diagnostics and tests)
_local = threading.local()


def _aliased() -> list:
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


def _storage(t: torch.Tensor):
    """The identity of ``t``'s storage (the same for every view of it; also for fake tensors, whose data pointer
    is not one)."""
    try:
        return t.untyped_storage()._cdata
    except Exception:  # noqa: BLE001 - a tensor without plain storage: never one of the streams
        return None


def _pack(t: torch.Tensor):
    stack = _aliased()
    copied = bool(stack) and _storage(t) in stack[-1]
    for observe in SAVE_OBSERVERS:
        observe(t, copied)
    return t.clone() if copied else t


def _unpack(t):
    return t


def saved_tensor_copies():
    """The saved-tensor hooks training must run under (forward and backward): copies only the saves that a running
    block's in-place residual adds would overwrite."""
    return torch.autograd.graph.saved_tensors_hooks(_pack, _unpack)


class _Streams:
    def __init__(self, tensors):
        self.ptrs = {p for p in (_storage(t) for t in tensors) if p is not None}

    def __enter__(self):
        _aliased().append(self.ptrs)

    def __exit__(self, *exc):
        _aliased().pop()


def _double(module):
    def call(a):
        img, txt = module(img=a["img"], txt=a["txt"], vec=a["vec"], pe=a["pe"], attn_mask=a.get("attn_mask"),
                          transformer_options=a.get("transformer_options", {}))
        return {"img": img, "txt": txt}
    return call


def _single(module):
    def call(a):
        return {"img": module(a["img"], vec=a["vec"], pe=a["pe"], attn_mask=a.get("attn_mask"),
                              transformer_options=a.get("transformer_options", {}))}
    return call


class BlockTraining:
    """Block replacements for the host's Flux. Each calls its own block module (the host's ``original_block`` closes
    over its loop variable, so a recomputation in backward must not call it)."""

    def __init__(self, checkpoint: bool = True):
        self.checkpoint = bool(checkpoint)

    def _run(self, run_block, args: dict, streams: tuple):
        args = dict(args)
        if isinstance(args.get("transformer_options"), dict):  # the host updates it block by block: this block's
            args["transformer_options"] = dict(args["transformer_options"])
        names = [k for k in streams if torch.is_tensor(args.get(k))]
        others = [k for k, v in args.items() if k not in names and torch.is_tensor(v)]
        modes = _active_modes()  # re-entered in the recomputation (see _modes_again)

        def block(*tensors):
            fresh = [t.clone() for t in tensors[:len(names)]]
            given = tensors[len(names):len(names) + len(others)]
            call = {**args, **dict(zip(names, fresh)), **dict(zip(others, given))}
            with _modes_again(modes), _Streams(fresh), saved_tensor_copies():
                out = run_block(call)
            return tuple(out[k] for k in names)

        tensors = [args[k] for k in names] + [args[k] for k in others]
        if self.checkpoint and torch.is_grad_enabled():
            # Re-entrant checkpointing passes gradients on only when an input needs one; the first blocks' inputs may
            # not (no trainable layer before them) while their own LoRA layers do: a one-element input that needs a
            # gradient keeps the block in the graph.
            anchor = torch.zeros((), device=tensors[0].device, requires_grad=True)
            outs = torch.utils.checkpoint.checkpoint(block, *tensors, anchor, use_reentrant=True,
                                                     preserve_rng_state=False)
        else:
            outs = block(*tensors)
        return dict(zip(names, outs))

    def patch(self, kind: str, module):
        streams = STREAMS[kind]
        run_block = _double(module) if kind == "double_block" else _single(module)

        def replace(args, extra):
            return self._run(run_block, args, streams)

        return replace

    def patches(self, diffusion_model) -> dict:
        """{("double_block", i) / ("single_block", i): patch} for the host's ``patches_replace["dit"]``."""
        out = {("double_block", i): self.patch("double_block", b)
               for i, b in enumerate(getattr(diffusion_model, "double_blocks", ()))}
        out.update({("single_block", i): self.patch("single_block", b)
                    for i, b in enumerate(getattr(diffusion_model, "single_blocks", ()))})
        return out


UNET_LAYERS = ("ResBlock", "SpatialTransformer")  # the layers of the host's TimestepEmbedSequential blocks wrapped


def _snapshot(v):
    return dict(v) if isinstance(v, dict) else v


def _active_modes():
    return _get_current_function_mode_stack(), _get_current_dispatch_mode_stack()


@contextlib.contextmanager
def _modes_again(modes):
    """Re-enter the torch function / dispatch modes active at the forward call (the recomputation in backward runs
    without them: ``frozen_for_autograd``'s weight re-reading and ``allow_mutation_on_saved_tensors``' copies must
    apply to it as they did to the forward)."""
    functions, dispatches = modes
    with contextlib.ExitStack() as stack:
        if not _get_current_function_mode_stack():
            for mode in functions:
                stack.enter_context(mode)
        if not _get_current_dispatch_mode_stack():
            for mode in dispatches:
                stack.enter_context(mode)
        yield


class _State:
    """What one checkpointed call's recomputation needs (its non-tensor arguments and the active torch modes)."""
    __slots__ = ("args", "kwargs", "modes", "__weakref__")

    def __init__(self, args, kwargs, modes):
        self.args, self.kwargs, self.modes = args, kwargs, modes

    def release(self):
        self.args = self.kwargs = self.modes = None


def _checkpointed(forward, held: weakref.WeakSet):
    """``forward`` run under torch's re-entrant checkpoint: tensor arguments pass through the checkpoint, every other
    argument is kept for the recomputation; dict arguments (the host's transformer options, which the host updates
    block by block) are copied at the call and copied again for the recomputation, so backward sees this call's
    values. What the recomputation needs is a :class:`_State` in ``held`` (weakly: it lives as long as the call's
    autograd graph), which the caller releases when training ends: the options can hold this forward's activations
    (a patch's kept inputs), whose autograd graph holds the checkpoint's function, a cycle through the graph that
    Python's collector cannot see and that would keep the graph, the options and every patch and adapter they name
    alive after training."""
    def call(*args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        where = [i for i, a in enumerate(args) if torch.is_tensor(a)]
        tensors = [args[i] for i in where]
        state = _State([None if torch.is_tensor(a) else _snapshot(a) for a in args],
                       {k: _snapshot(v) for k, v in kwargs.items()}, _active_modes())
        held.add(state)

        def run(*tensors):
            if state.args is None:
                raise RuntimeError("a checkpointed layer was recomputed after its training ended")
            a = [_snapshot(x) for x in state.args]
            for i, t in zip(where, tensors):
                a[i] = t
            with _modes_again(state.modes):
                return forward(*a, **{k: _snapshot(v) for k, v in state.kwargs.items()})

        def anchored(*tensors):
            # a one-element input that needs a gradient keeps the layer in the graph when no input needs one (see
            # BlockTraining._run); added (as zero) to the output, it also gives a layer that nothing trainable
            # reaches (a ResBlock before the first adapted attention) an output the recomputation can run backward on
            out = run(*tensors[:-1])
            return out + tensors[-1].to(out.dtype) * 0

        anchor = torch.zeros((), device=tensors[0].device, requires_grad=True)
        return torch.utils.checkpoint.checkpoint(anchored, *tensors, anchor, use_reentrant=True,
                                                 preserve_rng_state=False)
    return call


def unet_layers(diffusion_model) -> list:
    """The host UNet's ResBlocks and SpatialTransformers, in the order they run (none for a network without
    ``input_blocks``)."""
    blocks = list(getattr(diffusion_model, "input_blocks", ()))
    if getattr(diffusion_model, "middle_block", None) is not None and blocks:
        blocks.append(diffusion_model.middle_block)
    blocks += list(getattr(diffusion_model, "output_blocks", ()))
    return [layer for block in blocks for layer in block if type(layer).__name__ in UNET_LAYERS]


@contextlib.contextmanager
def unet_checkpointing(diffusion_model, enabled: bool = True):
    """While the context runs, every layer of :func:`unet_layers` recomputes its activations in backward instead of
    keeping them; afterwards each module is left exactly as it was (its own class forward, no instance attribute).
    Nothing happens when ``enabled`` is false or the network is not a UNet."""
    layers = unet_layers(diffusion_model) if enabled else []
    had = [(m, m.__dict__.get("forward", None), "forward" in m.__dict__) for m in layers]
    held = weakref.WeakSet()
    try:
        for m in layers:
            m.forward = _checkpointed(m.forward, held)
        yield len(layers)
    finally:
        for m, own, present in had:
            if present:
                m.forward = own
            else:
                m.__dict__.pop("forward", None)
        for state in list(held):  # what a graph still alive would recompute with, released (see _checkpointed)
            state.release()
