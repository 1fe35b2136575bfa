"""Fused kernels, each in kernels/<op>/ beside its torch reference, with a dispatcher that can force the reference."""
