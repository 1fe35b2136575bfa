"""The reference adapter's 'write' pass: run the UNet once on the reference latent at its lowest noise level with a
feature recorder on every self-attention layer, and keep each layer's input.

Plain torch over the host's model object (``BaseModel``: ``model_sampling``, ``process_latent_in``, ``extra_conds``,
``apply_model``); nothing here imports the host."""
from __future__ import annotations

import torch

# SDXL's ADM input is the pooled CLIP-G vector followed by 256-wide Fourier embeddings of sizes and crops:
# six of them for the base model, five for the refiner (ComfyUI's SDXL / SDXLRefiner.encode_adm).
_SIZE_EMBEDS = {"SDXL": 6 * 256, "SDXLRefiner": 5 * 256}


def pooled_width(base) -> int | None:
    """How wide a pooled text vector this model's ADM input takes (None when it takes none)."""
    adm = int(getattr(base, "adm_channels", 0) or 0)
    if adm == 0:
        return None
    return adm - _SIZE_EMBEDS.get(type(base).__name__, 0)


def record_reference_features(base, latent: torch.Tensor, context_dim: int, transformer_options: dict,
                              recorder, device) -> dict:
    """Run ``base`` (a host BaseModel whose transformer options carry ``recorder`` as an attn1 patch) on the
    reference ``latent`` at sigma_min with an empty 77-token context; return what the recorder kept per layer.

    Sigma stays float32 whatever the weights' dtype (fp8 storage cannot hold a timestep); the pooled vector's width
    is read from the model rather than assumed."""
    sigma = base.model_sampling.sigma_min.reshape(1).to(device=device, dtype=torch.float32)
    x = base.process_latent_in(latent).to(device)
    context = torch.zeros(1, 77, context_dim, device=device)
    width = pooled_width(base)
    pooled = None if width is None else torch.zeros(1, width, device=device)
    h, w = latent.shape[-2] * 8, latent.shape[-1] * 8
    extra = base.extra_conds(cross_attn=context, device=device, noise=x, pooled_output=pooled, width=w, height=h)
    conds = {k: v.cond for k, v in extra.items() if k != "c_crossattn" and hasattr(v, "cond")}
    with torch.no_grad():
        base.apply_model(x, sigma, c_crossattn=context, transformer_options=transformer_options, **conds)
    return recorder.features


def reference_features(base, latent: torch.Tensor, transformer_options: dict, device) -> dict:
    """The reference adapter's write: each self-attention layer's input during one pass of ``base`` over the
    reference ``latent`` (see :func:`record_reference_features`), with a feature recorder added to a copy of the
    model's ``transformer_options`` (the MODEL's own options are not touched). Returns {(block, index): (1, N, C)};
    ValueError when the model has no transformer blocks or the pass does not reach them all."""
    from .patch import FeatureRecorder, transformer_blocks

    blocks = transformer_blocks(base.diffusion_model)
    if not blocks:
        raise ValueError("a UNet with attention blocks (SD1.5, SDXL)")
    recorder = FeatureRecorder([key for key, _ in blocks])
    patches = dict(transformer_options.get("patches", {}))
    patches["attn1_patch"] = list(patches.get("attn1_patch", [])) + [recorder]
    features = record_reference_features(base, latent, blocks[0][1].attn2.to_k.weight.shape[1],
                                         {**transformer_options, "patches": patches}, recorder, device)
    if len(features) != len(blocks):
        raise ValueError("a UNet whose self-attention layers the reference pass reaches")
    return features


class _Stage2Rows:
    """The two patches of stage 2 as the shared training loop drives one: its ``values`` are the batch's image
    indices, which pick each row's blendshapes (for the frozen expression adapter) and reference features."""

    def __init__(self, expression, reference, blendshapes: torch.Tensor):
        self.expression, self.reference, self.blendshapes = expression, reference, blendshapes

    @property
    def training(self):
        return self.reference.training

    @training.setter
    def training(self, on):
        self.expression.training = self.reference.training = bool(on)

    @property
    def values(self):
        return self.reference.rows

    @values.setter
    def values(self, index):
        rows = index.reshape(-1).long()
        self.reference.rows = rows
        self.expression.values = self.blendshapes[rows.to(self.blendshapes.device)]


def train_reference_lora(base, expression_adapter, lora, context: torch.Tensor, pooled: torch.Tensor | None,
                         latents: torch.Tensor, references: torch.Tensor, blendshapes: torch.Tensor, resolution: int,
                         steps: int, lr: float, batch_size: int, seed: int, device, on_step=None,
                         should_stop=None, gradient_checkpointing: bool = True) -> dict:
    """Stage 2: train ``lora`` (a ``ReferenceLoRA`` on ``base``'s self-attention) with the model's own objective
    on ``latents``, each image's reference features written by the frozen UNet from ``references`` (latents of the
    reference photos) and its ``blendshapes`` fed to the frozen ``expression_adapter`` (its weights do not change:
    it is out of the optimiser and its parameters are frozen while stage 2 runs). ``base`` is left as it was."""
    from .patch import ExpressionAttentionPatch, ReferenceAttentionPatch, cross_attention_layers, transformer_blocks
    from ..training import train_in_unet

    net = base.diffusion_model
    with torch.inference_mode():  # the host's layers run as the host runs them (on a GPU its weights were loaded so)
        per_image = [reference_features(base, references[i:i + 1], {}, device) for i in range(references.shape[0])]
    with torch.inference_mode(False), torch.no_grad():  # ordinary copies: the training graph reads them
        features = {key: torch.cat([f[key] for f in per_image]).clone() for key in per_image[0]}
    expression = ExpressionAttentionPatch(expression_adapter, torch.zeros(1, expression_adapter.input_dim), 1.0,
                                          cross_attention_layers(net), float("inf"), 0.0)
    reference = ReferenceAttentionPatch(features, 1.0, [(key, tb.attn1) for key, tb in transformer_blocks(net)],
                                        lora=lora)
    rows = _Stage2Rows(expression, reference, blendshapes.to(device).float())
    options = {"patches": {"attn1_patch": [reference.input_hook],
                           "attn1_output_patch": [reference.output_hook],
                           "attn2_patch": [expression.input_hook],
                           "attn2_output_patch": [expression.output_hook]}}
    flags = [(p, p.requires_grad) for p in expression_adapter.parameters()]
    expression_adapter.requires_grad_(False)
    lora.set_scale(1.0)
    try:
        index = torch.arange(latents.shape[0], device=device, dtype=torch.float32)[:, None]
        return train_in_unet(base, lora, rows, context, pooled, latents, index, resolution, steps, lr, batch_size,
                             seed, device, on_step, should_stop, options=options, params=lora.lora_parameters(),
                             gradient_checkpointing=gradient_checkpointing)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
