"""The expression adapter's file layouts, written from their documentation for the tests (tests/ is on sys.path:
``from expression_files import ...``)."""
import torch

# The tiny SD1.5 (one res block per level, two levels) named as diffusers names its attention processors: down
# blocks, then up blocks, then the mid block; ComfyUI's blocks for the same layers: down_blocks.i.attentions.j is
# input_blocks[(L + 1) * i + j + 1], up_blocks.i.attentions.j is output_blocks[(L + 1) * i + j] (L = 1 res block here,
# 2 in SD1.5), the mid block is middle_block.
DIFFUSERS_CROSS_ATTENTION = [
    ("down_blocks.0.attentions.0", ("input", 1), 64), ("down_blocks.1.attentions.0", ("input", 3), 128),
    ("up_blocks.0.attentions.0", ("output", 0), 128), ("up_blocks.0.attentions.1", ("output", 1), 128),
    ("up_blocks.1.attentions.0", ("output", 2), 64), ("up_blocks.1.attentions.1", ("output", 3), 64),
    ("mid_block.attentions.0", ("middle", 0), 128)]
FLAME, CONTEXT, TOKENS = 55, 32, 4


def diffusers_ip_adapter(seed=1):
    """An adapter file as diffusers' ``load_ip_adapter`` reads it, written here from the documented layout (not by
    the pack's writer): ``image_proj`` in diffusers' ImageProjection form (``proj`` linear to tokens * width, then
    a LayerNorm ``norm``), ``ip_adapter`` with ``N.to_k_ip.weight`` / ``N.to_v_ip.weight`` numbered as diffusers'
    ``_convert_ip_adapter_attn_to_diffusers`` counts its attention processors: self- and cross-attention alternate,
    only cross-attention has weights, so the numbers run 1, 3, 5, ... Returns (file dict, diffusers name -> (k, v))."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen) / shape[-1] ** 0.5
    image_proj = {"proj.weight": rand(TOKENS * CONTEXT, FLAME), "proj.bias": 0.1 * torch.randn(TOKENS * CONTEXT,
                                                                                              generator=gen),
                  "norm.weight": 1 + 0.1 * torch.randn(CONTEXT, generator=gen),
                  "norm.bias": 0.1 * torch.randn(CONTEXT, generator=gen)}
    ip, by_name = {}, {}
    for n, (name, _, inner) in enumerate(DIFFUSERS_CROSS_ATTENTION):
        k, v = rand(inner, CONTEXT), rand(inner, CONTEXT)
        ip[f"{2 * n + 1}.to_k_ip.weight"], ip[f"{2 * n + 1}.to_v_ip.weight"] = k, v
        by_name[name] = (k, v)
    return {"image_proj": image_proj, "ip_adapter": ip}, by_name
