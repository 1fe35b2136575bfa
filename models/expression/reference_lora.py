"""The reference adapter's trained part (the paper's second stage): LoRA on the main UNet's self-attention
projections (to_q, to_k, to_v, to_out) of every transformer block, used where the reference-extended self-attention
is computed (``ReferenceAttentionPatch``); the frozen reference pass that writes the features never sees it.

The LoRA layers are peft's (``peft.tuners.lora.Linear``), wrapped around the host's own linear modules inside a
separate container: the UNet itself is not modified (its modules stay where they are, and the flags peft sets on the
wrapped weights are put back), so the MODEL other nodes share is unchanged. Only the LoRA matrices are trained,
moved and saved.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from torch import nn

FORMAT = "editlab.reference_lora.v1"
TARGETS = ("to_q", "to_k", "to_v", "to_out")
PAPER_SCALE = 0.8  # the LoRA scale the authors sample with


class ReferenceLoRAFileError(ValueError):
    pass


def layer_name(key) -> str:
    """A transformer block's key ((block, id), index) as a module name: ``input_1_0``."""
    (block, block_id), index = key
    return f"{block}_{block_id}_{index}"


class _Projections(nn.Module):
    """One self-attention layer's projections, referencing the host's modules (never copies)."""

    def __init__(self, attn):
        super().__init__()
        self.to_q, self.to_k, self.to_v, self.to_out = attn.to_q, attn.to_k, attn.to_v, attn.to_out[0]


class ReferenceLoRA(nn.Module):
    """peft LoRA (rank ``rank``, alpha ``alpha``) around the self-attention projections of ``layers``
    ([(key, attn1)]), LoRA B zero at the start (the training-free reference adapter exactly)."""

    def __init__(self, layers: list, rank: int, alpha: float | None = None, seed: int = 0):
        super().__init__()
        from peft import LoraConfig, inject_adapter_in_model

        if rank < 1:
            raise ValueError(f"rank must be at least 1; got {rank}")
        self.rank, self.alpha = int(rank), float(rank if alpha is None else alpha)
        self.keys = {layer_name(key): key for key, _ in layers}
        container = nn.ModuleDict({layer_name(key): _Projections(attn) for key, attn in layers})
        host_flags = [(p, p.requires_grad) for p in container.parameters()]
        with torch.random.fork_rng(devices=[]):  # peft draws LoRA A from the global generator
            torch.manual_seed(seed)
            inject_adapter_in_model(LoraConfig(r=self.rank, lora_alpha=self.alpha, target_modules=list(TARGETS),
                                               init_lora_weights=True), container)
        for p, flag in host_flags:  # peft freezes the wrapped weights: they belong to the shared UNet
            if p.requires_grad != flag:
                with torch.inference_mode(p.is_inference()):  # where an inference tensor's flag may be set
                    p.requires_grad_(flag)
        self.layers = container
        for m in self.lora_layers():  # peft gives the LoRA the wrapped weights' dtype (fp16, fp8): keep float32
            m.lora_A.float()
            m.lora_B.float()
        self.set_scale(1.0)

    def projections(self, key) -> nn.Module:
        """The layer's projections with their LoRA (``to_q``, ``to_k``, ``to_v``, ``to_out``)."""
        return self.layers[layer_name(key)]

    def lora_layers(self) -> list:
        from peft.tuners.lora import LoraLayer

        return [m for m in self.layers.modules() if isinstance(m, LoraLayer)]

    def lora_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.lora_layers() for part in (m.lora_A, m.lora_B) for p in part.parameters()]

    def set_scale(self, scale: float) -> None:
        """The LoRA's output scale (1: as trained; the authors sample with 0.8)."""
        for m in self.lora_layers():
            m.set_scale("default", float(scale))

    def train(self, mode: bool = True):
        """Train / eval mode for the LoRA parts only (the wrapped projections' modes are the host's)."""
        self.training = mode
        for m in self.lora_layers():
            for part in (m.lora_A, m.lora_B, m.lora_dropout):
                part.train(mode)
        return self

    def to(self, *args, **kwargs):
        """Moves the LoRA matrices only: the wrapped projections are the host's, moved by the host."""
        for m in self.lora_layers():
            m.lora_A.to(*args, **kwargs)
            m.lora_B.to(*args, **kwargs)
        return self

    def state(self) -> dict:
        from peft import get_peft_model_state_dict

        return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(self.layers).items()}

    def load_state(self, tensors: dict) -> None:
        from peft import set_peft_model_state_dict

        expected = set(self.state())
        if set(tensors) != expected:
            missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
            raise ReferenceLoRAFileError(f"the file's LoRA does not fit this UNet (missing: {', '.join(missing[:4])}; "
                                         f"extra: {', '.join(extra[:4])})")
        own = self.state()
        for k, v in tensors.items():
            if tuple(v.shape) != tuple(own[k].shape):
                raise ReferenceLoRAFileError(f"{k} is {tuple(v.shape)}; this UNet needs {tuple(own[k].shape)}")
        set_peft_model_state_dict(self.layers, {k: v.float() for k, v in tensors.items()})


def save_reference_lora(lora: ReferenceLoRA, path: str, overwrite: bool = True) -> None:
    from ..common import atomic_save_safetensors

    meta = {"format": FORMAT, "rank": str(lora.rank), "alpha": repr(lora.alpha),
            "layers": json.dumps(sorted(lora.keys))}
    atomic_save_safetensors(lora.state(), path, meta, overwrite=overwrite)


def read_reference_lora(path: str) -> tuple[dict, dict]:
    """(tensors, metadata) of a reference LoRA file; ReferenceLoRAFileError for anything else."""
    try:
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        rank, alpha = int(meta.get("rank", "")), float(meta.get("alpha", ""))
    except Exception as exc:  # noqa: BLE001 - corrupt, truncated, not safetensors, no rank
        raise ReferenceLoRAFileError(f"cannot read a reference LoRA ({type(exc).__name__}: {str(exc)[:200]})") \
            from None
    if meta.get("format") != FORMAT or rank < 1 or not tensors:
        raise ReferenceLoRAFileError(f"not a reference LoRA file (format {meta.get('format')!r})")
    return tensors, {"rank": rank, "alpha": alpha}


@dataclass
class ReferenceLoRAWeights:
    """The socket payload of a trained reference adapter: its LoRA weights, not yet bound to a UNet."""
    tensors: dict
    rank: int
    alpha: float
    name: str


def reference_lora_for(layers: list, tensors: dict, rank: int, alpha: float) -> ReferenceLoRA:
    """A LoRA for this UNet's self-attention ``layers`` holding the file's weights."""
    lora = ReferenceLoRA(layers, rank, alpha)
    lora.load_state(tensors)
    return lora.eval()
