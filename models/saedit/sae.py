"""A BatchTopK sparse autoencoder over text-encoder token embeddings, with optional Matryoshka groups.

Parameter names and semantics follow the SAEdit authors' released module, so their files load unchanged:
``W_enc`` (d, m), ``b_enc`` (m; in the authors' files kept for the layout, not used by the encoder), ``W_dec``
(m, d, unit-norm rows), ``b_dec`` (d) and a scalar buffer ``threshold``.

- encode: ``relu((x - b_dec) @ W_enc)`` (``+ b_enc`` for SAEs whose config says ``encoder_bias``: the ones this pack
  trains). ``sparsity = "batch_topk"`` (the authors'): in training the top ``k * n_tokens`` activations of the whole
  batch are kept (BatchTopK), at inference every activation above the ``threshold``. ``sparsity = "topk"`` (this
  pack's trainer's default): the top ``k`` of each token, in training and at inference alike (batch-independent).
  On real MiniLM tokens at equal budget, per-token TopK reconstructs better (``bench/bench_saedit_trainer.py``).
- decode: ``codes @ W_dec + b_dec``.
- the threshold follows an EMA (rate 0.01) of the smallest activation BatchTopK kept, started at the first
  batch's value; the trainer then sets it from the finished SAE (``calibrate_threshold`` in train.py), since an EMA
  over a short run lags behind the activations' scale.
- Matryoshka: the loss averages the reconstruction error of each nested prefix of the dictionary, so the first
  latents carry the coarsest features.
- On CUDA (``kernels.dispatch``) training runs through the fused sparse kernels (``kernels/sae``): the same losses
  and statistics from (values, indices) codes, without dense (n, m) codes kept for the backward. Elsewhere, or with
  ``EDITLAB_KERNELS=reference``, the dense torch code below runs unchanged.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ...kernels.dispatch import use_triton


SPARSITY = ("topk", "batch_topk")


@dataclass
class SAEConfig:
    act_size: int
    dict_size: int
    top_k: int = 32
    group_sizes: list[int] = field(default_factory=list)  # Matryoshka groups; empty means one group
    aux_k: int = 512
    aux_penalty: float = 1.0 / 32
    n_batches_to_dead: int = 20
    threshold_ema: float = 0.01
    encoder_bias: bool = True  # add b_enc before the ReLU (this pack's SAEs; the authors' files load with False)
    sparsity: str = "topk"  # "topk" per token, or the authors' "batch_topk" (threshold at inference)

    def __post_init__(self):
        if self.act_size <= 0 or self.dict_size <= 0:
            raise ValueError(f"act_size and dict_size must be positive; got {self.act_size}, {self.dict_size}")
        if not 0 < self.top_k <= self.dict_size:
            raise ValueError(f"top_k must be in 1..dict_size ({self.dict_size}); got {self.top_k}")
        if any(not isinstance(s, int) or s <= 0 for s in self.group_sizes):
            raise ValueError(f"Matryoshka group sizes must be positive integers; got {self.group_sizes}")
        if self.sparsity not in SPARSITY:
            raise ValueError(f"sparsity must be one of {', '.join(SPARSITY)}; got {self.sparsity!r}")
        if self.group_sizes and sum(self.group_sizes) != self.dict_size:
            raise ValueError(f"Matryoshka group sizes must add up to dict_size {self.dict_size}; "
                             f"got {self.group_sizes} (sum {sum(self.group_sizes)})")

    def to_dict(self) -> dict:
        return asdict(self)


class SparseAutoencoder(nn.Module):
    def __init__(self, config: SAEConfig):
        super().__init__()
        self.config = config
        d, m = config.act_size, config.dict_size
        self.W_enc = nn.Parameter(torch.empty(d, m))
        self.b_enc = nn.Parameter(torch.zeros(m))
        self.W_dec = nn.Parameter(torch.empty(m, d))
        self.b_dec = nn.Parameter(torch.zeros(d))
        self.register_buffer("threshold", torch.tensor(0.0))
        # Batches since each latent last fired (training only; not saved).
        self.register_buffer("steps_since_fired", torch.zeros(m, dtype=torch.long), persistent=False)
        # Threshold updates so far: the EMA starts at the first batch's value instead of creeping up from 0.
        self.register_buffer("threshold_updates", torch.zeros((), dtype=torch.long), persistent=False)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Decoder rows random unit vectors, encoder its transpose (the usual tied start)."""
        with torch.no_grad():
            w = torch.randn(self.W_dec.shape, generator=generator)
            w /= w.norm(dim=-1, keepdim=True)
            self.W_dec.copy_(w)
            self.W_enc.copy_(w.T)
            self.b_enc.zero_()
            self.b_dec.zero_()
            self.threshold.zero_()

    @property
    def group_bounds(self) -> list[int]:
        sizes = self.config.group_sizes or [self.config.dict_size]
        bounds, total = [], 0
        for s in sizes:
            total += s
            bounds.append(total)
        return bounds

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.encoder_bias:
            return torch.relu(torch.addmm(self.b_enc, x - self.b_dec, self.W_enc) if x.ndim == 2
                              else (x - self.b_dec) @ self.W_enc + self.b_enc)
        return torch.relu((x - self.b_dec) @ self.W_enc)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Inference encoding, token by token (batch-independent): each token's top k ("topk"), or the activations
        above the learned threshold ("batch_topk")."""
        acts = self.pre_activations(x)
        if self.config.sparsity == "topk":
            return self.row_topk(acts)
        return acts * (acts > self.threshold)

    def row_topk(self, acts: torch.Tensor) -> torch.Tensor:
        top = acts.topk(min(self.config.top_k, acts.shape[-1]), dim=-1)
        return torch.zeros_like(acts).scatter_(-1, top.indices, top.values)

    def training_codes(self, acts: torch.Tensor) -> torch.Tensor:
        """The codes training uses: per-token TopK, or BatchTopK over the batch."""
        return self.row_topk(acts) if self.config.sparsity == "topk" else self.batch_topk(acts)

    def batch_topk(self, acts: torch.Tensor) -> torch.Tensor:
        """The top ``k * n_tokens`` activations of the whole batch, the rest zero (exactly; ties aside).

        Found among each row's top ``4k`` candidates (a small fraction of the batch), which holds them unless a row
        owns more than ``4k`` of them: then the whole batch is searched."""
        rows = acts.reshape(-1, acts.shape[-1])
        n, m = rows.shape
        k = min(self.config.top_k * n, rows.numel())
        width = min(4 * self.config.top_k, m)
        if width < m:
            cand_values, cand_indices = rows.topk(width, dim=-1, sorted=True)
            cutoff = cand_values.reshape(-1).topk(k, sorted=False).values.min()
            # a row whose last candidate still reaches the cutoff may hold more above it: search everything
            if not bool((cand_values[:, -1] >= cutoff).any()):
                keep = cand_values >= cutoff
                surplus = int(keep.sum()) - k  # ties at the cutoff: keep exactly k, as topk does
                if surplus > 0:
                    tied = torch.nonzero(keep & (cand_values == cutoff))
                    keep[tied[:surplus, 0], tied[:surplus, 1]] = False
                out = torch.zeros_like(rows).scatter_(-1, cand_indices, cand_values * keep)
                return out.reshape(acts.shape)
        flat = rows.reshape(-1)
        values, indices = flat.topk(k, sorted=False)
        return torch.zeros_like(flat).scatter_(0, indices, values).reshape(acts.shape)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return codes @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8)

    def training_losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """One batch of tokens (n, d): BatchTopK codes, Matryoshka + auxiliary loss, and the statistics to log."""
        if use_triton(x, self.W_enc):
            return self._sparse_training_losses(x)
        pre = self.pre_activations(x)
        codes = self.training_codes(pre)
        losses = []
        recon = self.b_dec.expand_as(x)
        start = 0
        for end in self.group_bounds:
            recon = recon + codes[:, start:end] @ self.W_dec[start:end]
            losses.append((recon - x).pow(2).sum(-1).mean())
            start = end
        recon_loss = torch.stack(losses).mean()

        dead = self._track_firing((codes > 0).any(0), codes[codes > 0])
        aux_loss = x.new_zeros(())
        if dead.any() and self.config.aux_penalty > 0:
            residual = (x - recon).detach()
            dead_pre = pre[:, dead]
            k = min(self.config.aux_k, dead_pre.shape[1])
            values, indices = dead_pre.topk(k, dim=-1)
            aux_codes = torch.zeros_like(dead_pre).scatter_(-1, indices, values)
            aux_recon = aux_codes @ self.W_dec[dead]
            aux_loss = self.config.aux_penalty * (aux_recon - residual).pow(2).sum(-1).mean()
        return _step_stats(x, recon, recon_loss, aux_loss, (codes > 0).float().sum(-1), dead)

    @torch.no_grad()
    def _track_firing(self, fired: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        """After a batch: count batches since each latent fired, move the threshold EMA towards the smallest kept
        activation (started at the first batch's value); returns the dead-latent mask."""
        self.steps_since_fired += 1
        self.steps_since_fired[fired] = 0
        if kept.numel():
            rate = 1.0 if int(self.threshold_updates) == 0 else self.config.threshold_ema
            self.threshold.mul_(1 - rate).add_(rate * kept.min())
            self.threshold_updates += 1
        return self.steps_since_fired >= self.config.n_batches_to_dead

    def _sparse_training_losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``training_losses`` through the sparse kernels: the same quantities from (values, indices) codes."""
        from ...kernels.sae import decode, encode

        b_enc = self.b_enc if self.config.encoder_bias else None
        values, indices = encode(x, self.W_enc, self.b_dec, b_enc, k=self.config.top_k,
                                 batch=self.config.sparsity == "batch_topk")
        losses = []
        for end in self.group_bounds:  # each Matryoshka prefix: the codes on latents below ``end``
            recon = decode(values * (indices < end), indices, self.W_dec, self.b_dec)
            losses.append((recon - x).pow(2).sum(-1).mean())
        recon_loss = torch.stack(losses).mean()

        kept_mask = values > 0
        fired = torch.zeros(self.config.dict_size, dtype=torch.bool, device=x.device)
        fired[indices[kept_mask]] = True
        dead = self._track_firing(fired, values[kept_mask])
        aux_loss = x.new_zeros(())
        if dead.any() and self.config.aux_penalty > 0:
            residual = (x - recon).detach()
            dead_pre = (x - self.b_dec) @ self.W_enc[:, dead]  # the dead latents' columns only
            if b_enc is not None:
                dead_pre = dead_pre + b_enc[dead]
            dead_pre = torch.relu(dead_pre)
            k = min(self.config.aux_k, dead_pre.shape[1])
            aux_values, aux_indices = dead_pre.topk(k, dim=-1)
            aux_recon = decode(aux_values, aux_indices, self.W_dec[dead])
            aux_loss = self.config.aux_penalty * (aux_recon - residual).pow(2).sum(-1).mean()
        return _step_stats(x, recon, recon_loss, aux_loss, kept_mask.float().sum(-1), dead)


def _step_stats(x, recon, recon_loss, aux_loss, l0_per_token, dead) -> dict[str, torch.Tensor]:
    """The loss to minimise and the statistics a training step logs."""
    total_var = (x - x.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12)
    return {
        "loss": recon_loss + aux_loss,
        "recon_loss": recon_loss.detach(),
        "aux_loss": aux_loss.detach(),
        "fvu": ((recon - x).pow(2).sum(-1).mean() / total_var).detach(),
        "l0": l0_per_token.mean().detach(),
        "dead_fraction": dead.float().mean().detach(),
    }


def fraction_of_variance_unexplained(x: torch.Tensor, recon: torch.Tensor) -> float:
    total = (x - x.mean(0)).pow(2).sum()
    return float((recon - x).pow(2).sum() / total.clamp_min(1e-12))
