"""Fused kernels, each in kernels/<op>/ beside its torch reference, with a dispatcher that can force the reference.

- kernels/sae: the SAE's encoder (ReLU + TopK / BatchTopK / threshold, returning sparse values and indices) and its
  sparse decoder, forward and backward.
- kernels/attention: scaled-dot-product attention that also returns each query's log-sum-exp and the probabilities
  on a chosen set of keys (with an optional additive bias on those keys), and a ComfyUI attention override.
- kernels/dispatch.py: Triton on CUDA, the reference elsewhere; ``EDITLAB_KERNELS=reference`` forces the reference.
"""
