"""The pack's SAE trainer against a plain TopK SAE written here, on the same real MiniLM token embeddings, at equal
budget (issue 16): dictionary 3072, k 32, 6 epochs, batch 1024, lr 1e-3. Printed side by side, measured in one run.

The baseline is deliberately plain (no code of the pack): per-token TopK, encoder bias, decoder initialised as the
encoder's transpose, decoder bias at the data mean, decoder rows renormalised after every step, Adam. Targets for the
pack's trainer: FVU and dead fraction no worse than the baseline's, L0 at inference (its learned threshold) within
10% of k, and no slower.
"""
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ (benchlib), also under python -P
from benchlib import figure, sized  # noqa: E402

from editlab.models.saedit.hf_encoder import LocalTextEncoder  # noqa: E402
from editlab.models.saedit.prompts import corpus  # noqa: E402
from editlab.models.saedit.sae import SAEConfig  # noqa: E402
from editlab.models.saedit.train import TrainConfig, train_sae  # noqa: E402

DICT, K, EPOCHS, BATCH, LR = sized((3072, 32, 6, 1024, 1e-3), (256, 8, 1, 256, 1e-3))
PROMPTS = sized(4000, 60)


def real_tokens(n_prompts=PROMPTS, seed=0) -> torch.Tensor:
    encoder = LocalTextEncoder()
    return torch.cat([t for t, _ in encoder.encode(corpus(n_prompts, seed=seed))])


def plain_topk(tokens: torch.Tensor, dict_size=DICT, k=K, epochs=EPOCHS, batch=BATCH, lr=LR, seed=0) -> dict:
    """A textbook TopK SAE, trained and evaluated (per-token TopK at inference too)."""
    gen = torch.Generator().manual_seed(seed)
    d = tokens.shape[1]
    w_enc = torch.randn(d, dict_size, generator=gen) / d ** 0.5
    params = {"w_enc": w_enc.requires_grad_(), "b_enc": torch.zeros(dict_size, requires_grad=True),
              "w_dec": w_enc.detach().T.clone().requires_grad_(), "b_dec": tokens.mean(0).clone().requires_grad_()}
    with torch.no_grad():
        params["w_dec"] /= params["w_dec"].norm(dim=-1, keepdim=True)
    opt = torch.optim.Adam(params.values(), lr=lr)

    def codes(x):
        pre = torch.relu((x - params["b_dec"]) @ params["w_enc"] + params["b_enc"])
        top = pre.topk(k, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, top.indices, top.values)

    n = tokens.shape[0]
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for b in range(n // batch):
            x = tokens[order[b * batch:(b + 1) * batch]]
            loss = (codes(x) @ params["w_dec"] + params["b_dec"] - x).pow(2).sum(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                params["w_dec"] /= params["w_dec"].norm(dim=-1, keepdim=True)
    with torch.no_grad():
        c = codes(tokens)
        recon = c @ params["w_dec"] + params["b_dec"]
        fvu = float((recon - tokens).pow(2).sum() / (tokens - tokens.mean(0)).pow(2).sum())
        return {"fvu": fvu, "l0": float((c > 0).float().sum(-1).mean()),
                "dead_fraction": float(((c > 0).sum(0) == 0).float().mean())}


def pack_trainer(tokens: torch.Tensor, dict_size=DICT, k=K, epochs=EPOCHS, batch=BATCH, lr=LR, seed=0,
                 sparsity="topk") -> dict:
    _, stats = train_sae(tokens, SAEConfig(act_size=tokens.shape[1], dict_size=dict_size, top_k=k, sparsity=sparsity),
                         TrainConfig(lr=lr, batch_size=batch, epochs=epochs, seed=seed))
    return stats


def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    out["seconds"] = time.perf_counter() - t
    return out


if __name__ == "__main__":
    torch.manual_seed(0)
    tokens = real_tokens()
    print(f"MiniLM token embeddings: {tokens.shape[0]} tokens x {tokens.shape[1]}; dictionary {DICT}, k {K}, "
          f"{EPOCHS} epochs, batch {BATCH}, lr {LR:g}")
    rows = {"plain TopK (baseline)": timed(plain_topk, tokens), "EditLab trainer": timed(pack_trainer, tokens),
            "EditLab, batch_topk": timed(lambda t: pack_trainer(t, sparsity="batch_topk"), tokens)}
    for name, r in rows.items():  # the third: the authors' BatchTopK + threshold, for reference
        print(f"{name:24s} FVU {r['fvu']:.4f}  dead {100 * r['dead_fraction']:5.1f}%  L0 at inference "
              f"{r['l0']:5.1f} (k {K})  {r['seconds']:.1f} s")
    base, ours, batch = rows["plain TopK (baseline)"], rows["EditLab trainer"], rows["EditLab, batch_topk"]
    print(f"targets: FVU {ours['fvu']:.4f} <= {base['fvu']:.4f}: {ours['fvu'] <= base['fvu']}; dead "
          f"{ours['dead_fraction']:.3f} <= {base['dead_fraction']:.3f}: {ours['dead_fraction'] <= base['dead_fraction']}"
          f"; L0 within 10% of k: {abs(ours['l0'] - K) <= 0.1 * K}; time ratio {ours['seconds'] / base['seconds']:.2f}x")
    what = f"{tokens.shape[0]} MiniLM tokens, dictionary {DICT}, k {K}, {EPOCHS} epochs"
    figure("fvu_pack", ours["fvu"], f"{ours['fvu']:.4f}", f"FVU of the pack's trainer (TopK), {what}")
    figure("fvu_plain", base["fvu"], f"{base['fvu']:.4f}", "FVU of the plain TopK SAE at equal budget")
    figure("fvu_batch_topk", batch["fvu"], f"{batch['fvu']:.4f}", "FVU of the pack's trainer, BatchTopK + threshold")
    figure("dead_pack", ours["dead_fraction"], f"{100 * ours['dead_fraction']:.1f}%",
           f"dead latents, pack's trainer (plain: {100 * base['dead_fraction']:.1f}%)")
    figure("l0_pack", ours["l0"], f"{ours['l0']:.1f}", f"L0 at inference, pack's trainer (k {K})")
    figure("time_ratio", ours["seconds"] / base["seconds"], f"{ours['seconds'] / base['seconds']:.2f}x",
           "the pack's trainer's time over the plain TopK SAE's")
