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
    decay_fraction: float = 0.0  # the last fraction of the steps, the learning rate falls linearly to 0


class DataParallel:
    """Plain torch.distributed data parallelism for the SAE (used under torchrun).

    Each process trains on its own shard; after every backward the gradients are averaged, the inference threshold
    is averaged and a latent counts as alive if it fired in any process, so every process holds the same SAE.
    (BatchTopK then selects within each process's batch.)
    """

    def __init__(self):
        import torch.distributed as dist

        self.dist = dist
        self.world = dist.get_world_size()
        self.rank = dist.get_rank()

    def broadcast_parameters(self, sae: SparseAutoencoder) -> None:
        """Start every process from rank 0's parameters (its decoder bias came from its own shard's mean)."""
        for p in sae.parameters():
            self.dist.broadcast(p.data, 0)

    def sync_gradients(self, sae: SparseAutoencoder) -> None:
        for p in sae.parameters():
            if p.grad is not None:
                self.dist.all_reduce(p.grad)
                p.grad /= self.world

    def sync_state(self, sae: SparseAutoencoder) -> None:
        self.dist.all_reduce(sae.threshold)
        sae.threshold /= self.world
        self.dist.all_reduce(sae.steps_since_fired, op=self.dist.ReduceOp.MIN)


def train_sae(tokens: torch.Tensor, sae_config: SAEConfig, train_config: TrainConfig,
              on_step: Callable[[int, int, dict], None] | None = None,
              should_stop: Callable[[], None] | None = None,
              parallel: DataParallel | None = None) -> tuple[SparseAutoencoder, dict]:
    """Train on ``tokens`` (n, d). ``on_step(step, total, stats)`` reports; ``should_stop()`` may raise to stop.
    With ``parallel``, ``tokens`` is this process's shard and every process must take the same number of steps.

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
    if parallel:
        parallel.broadcast_parameters(sae)
    opt = torch.optim.Adam(sae.parameters(), lr=train_config.lr, betas=train_config.betas)
    n = tokens.shape[0]
    batch = min(train_config.batch_size, n)
    steps_per_epoch = max(n // batch, 1)
    total = steps_per_epoch * train_config.epochs
    decay_from = total - int(train_config.decay_fraction * total)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 1.0 if i < decay_from else max(total - i, 0) / max(total - decay_from, 1))
    step = 0
    sae.train()
    for _ in range(train_config.epochs):
        order = torch.randperm(n, generator=gen).to(tokens.device)  # drawn on the CPU: the same on every device
        for b in range(steps_per_epoch):
            if should_stop:
                should_stop()
            x = tokens[order[b * batch:(b + 1) * batch]]
            stats = sae.training_losses(x)
            opt.zero_grad(set_to_none=True)
            stats["loss"].backward()
            if parallel:
                parallel.sync_gradients(sae)
            opt.step()
            schedule.step()
            if parallel:
                with torch.no_grad():
                    parallel.sync_state(sae)
            sae.normalize_decoder()
            step += 1
            if on_step:
                on_step(step, total, {k: float(v.detach()) for k, v in stats.items()})
    sae.eval()
    if sae_config.sparsity == "batch_topk":  # per-token TopK needs no threshold at inference
        calibrate_threshold(sae, tokens, batch, parallel)
    return sae, evaluate_sae(sae, tokens)


@torch.no_grad()
def calibrate_threshold(sae: SparseAutoencoder, tokens: torch.Tensor, batch: int,
                        parallel: DataParallel | None = None) -> float:
    """Set the inference threshold from the finished SAE: the mean, over the data's batches, of the smallest
    activation BatchTopK keeps (what the training EMA tracks, without its lag), so that encoding by threshold keeps
    about k latents per token, as training did."""
    cutoffs = []
    for i in range(0, max(tokens.shape[0] - batch, 0) + 1, batch):
        codes = sae.batch_topk(sae.pre_activations(tokens[i:i + batch]))
        kept = codes[codes > 0]
        if kept.numel():
            cutoffs.append(kept.min())
    if cutoffs:
        sae.threshold.copy_(torch.stack(cutoffs).mean())
    if parallel:
        parallel.dist.all_reduce(sae.threshold)
        sae.threshold /= parallel.world
    return float(sae.threshold)


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
