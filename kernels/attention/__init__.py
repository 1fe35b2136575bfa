"""Attention with token maps: ``reference.py`` (plain torch), ``triton_attention.py`` (online softmax, per-query
log-sum-exp, probabilities on chosen keys, additive bias on those keys), ``ops.py`` (dispatching entry points),
``comfy.py`` (the ComfyUI ``optimized_attention_override`` factory)."""
from .ops import AttentionOutput, attention, key_probabilities

__all__ = ["AttentionOutput", "attention", "key_probabilities"]
