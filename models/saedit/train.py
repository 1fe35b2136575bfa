"""Training an SAE on a tensor of token embeddings (plain torch; the node adds ComfyUI's progress bar)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch

from .sae import SAEConfig, SparseAutoencoder, fraction_of_variance_unexplained

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    lr: float = 3e-3
    betas: tuple[float, float] = (0.9, 0.99)
    batch_size: int = 4096
    epochs: int = 2
    seed: int = 0


def train_sae(tokens: torch.Tensor, sae_config: SAEConfig, train_config: TrainConfig,
              on_step: Callable[[int, int, dict], None] | None = None,
              should_stop: Callable[[], None] | None = None) -> tuple[SparseAutoencoder, dict]:
    """Train on ``tokens`` (n, d). ``on_step(step, total, stats)`` reports; ``should_stop()`` may raise to stop.

    Returns the SAE (in eval mode, threshold learned) and its statistics on the whole set with the inference
    encoder: fraction of variance unexplained, mean L0, fraction of latents that never fire.
    """
    if tokens.ndim != 2 or tokens.shape[1] != sae_config.act_size:
        raise ValueError(f"tokens must be (n, {sae_config.act_size}); got {tuple(tokens.shape)}")
    if tokens.shape[0] < 2:
        raise ValueError("need at least 2 token embeddings to train on")
    gen = torch.Generator().manual_seed(train_config.seed)
    sae = SparseAutoencoder(sae_config).to(tokens.device)
    sae.reset_parameters(gen)
    with torch.no_grad():  # start the decoder bias at the data's mean: the codes model what varies
        sae.b_dec.copy_(tokens.mean(0))
    opt = torch.optim.Adam(sae.parameters(), lr=train_config.lr, betas=train_config.betas)
    n = tokens.shape[0]
    batch = min(train_config.batch_size, n)
    steps_per_epoch = max(n // batch, 1)
    total = steps_per_epoch * train_config.epochs
    step = 0
    sae.train()
    for _ in range(train_config.epochs):
        order = torch.randperm(n, generator=gen)
        for b in range(steps_per_epoch):
            if should_stop:
                should_stop()
            x = tokens[order[b * batch:(b + 1) * batch]]
            stats = sae.training_losses(x)
            opt.zero_grad(set_to_none=True)
            stats["loss"].backward()
            opt.step()
            sae.normalize_decoder()
            step += 1
            if on_step:
                on_step(step, total, {k: float(v.detach()) for k, v in stats.items()})
    sae.eval()
    return sae, evaluate_sae(sae, tokens)


@torch.no_grad()
def evaluate_sae(sae: SparseAutoencoder, tokens: torch.Tensor, chunk: int = 8192) -> dict:
    recon, fired, l0 = [], torch.zeros(sae.config.dict_size, dtype=torch.bool, device=tokens.device), []
    for i in range(0, tokens.shape[0], chunk):
        codes = sae.encode(tokens[i:i + chunk])
        recon.append(sae.decode(codes))
        fired |= (codes > 0).any(0)
        l0.append((codes > 0).float().sum(-1))
    recon = torch.cat(recon)
    return {"fvu": fraction_of_variance_unexplained(tokens, recon), "l0": float(torch.cat(l0).mean()),
            "dead_fraction": float((~fired).float().mean()), "tokens": int(tokens.shape[0]),
            "threshold": float(sae.threshold)}
