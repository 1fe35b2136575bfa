"""SAEdit on a real text encoder (MiniLM, shipped in a registry package), through the same models/saedit code.

1. Train an SAE on the token embeddings of a generated corpus; report FVU, L0 and dead latents.
2. Find a direction from 20 (source, target) attribute pairs; on held-out pairs, measure the cosine between the
   decoded edit delta and the true change of the subject token (target token minus source token), against random
   code-space directions with the same number of features.
3. Throughput of training (tokens/s).
Prints the figures measured in this run.
"""
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ (benchlib), also under python -P
from benchlib import figure, sized  # noqa: E402

from editlab.models.saedit.direction import direction_from_pairs  # noqa: E402
from editlab.models.saedit.edit import decoded_delta  # noqa: E402
from editlab.models.saedit.hf_encoder import LocalTextEncoder  # noqa: E402
from editlab.models.saedit.prompts import attribute_pairs, corpus  # noqa: E402
from editlab.models.saedit.sae import SAEConfig  # noqa: E402
from editlab.models.saedit.train import TrainConfig, train_sae  # noqa: E402


def subject_token(tokens, words, prompt):
    """The last token of the subject noun: the word just before the scene (the token the edit targets)."""
    split = prompt.split()
    for scene_start in ("in", "on", "at", "under", "by"):
        if scene_start in split[2:]:
            idx = split.index(scene_start, 2) - 1
            break
    else:
        idx = len(split) - 1
    positions = [t for t, w in enumerate(words) if w == idx]
    return tokens[positions[-1]]


def study(n_prompts=4000, dict_size=4096, top_k=32, epochs=20, batch_size=1024, n_pairs=20, n_heldout=60,
          attribute="smiling", seed=0, n_random=20):
    torch.manual_seed(seed)
    encoder = LocalTextEncoder()
    t0 = time.monotonic()
    encoded = encoder.encode(corpus(n_prompts, seed=seed))
    tokens = torch.cat([t for t, _ in encoded])
    encode_s = time.monotonic() - t0
    cfg = SAEConfig(act_size=encoder.width, dict_size=dict_size, top_k=top_k, n_batches_to_dead=50)
    t0 = time.monotonic()
    sae, stats = train_sae(tokens, cfg, TrainConfig(lr=1e-3, batch_size=batch_size, epochs=epochs, seed=seed))
    train_s = time.monotonic() - t0

    def codes(prompts):
        return [sae.encode(t) for t, _ in encoder.encode(prompts)]

    train_pairs = attribute_pairs(attribute, n_pairs, seed=seed + 1)
    src_codes, tgt_codes = codes([s for s, _ in train_pairs]), codes([t for _, t in train_pairs])
    found = direction_from_pairs(list(zip(src_codes, tgt_codes)))
    delta = decoded_delta(sae, found["direction"])

    seen = set(train_pairs)
    held = [p for p in attribute_pairs(attribute, n_heldout + n_pairs, seed=seed + 2) if p not in seen][:n_heldout]
    src_enc, tgt_enc = encoder.encode([s for s, _ in held]), encoder.encode([t for _, t in held])
    true = torch.stack([subject_token(*tgt_enc[i], held[i][1]) - subject_token(*src_enc[i], held[i][0])
                        for i in range(len(held))])
    cos = lambda v: torch.nn.functional.cosine_similarity(true, v.expand_as(true), dim=-1).mean().item()
    cos_direction = cos(delta)
    gen = torch.Generator().manual_seed(seed + 3)
    n_features = int((found["direction"] != 0).sum())
    randoms = []
    for _ in range(n_random):
        rand = torch.zeros(dict_size)
        ids = torch.randperm(dict_size, generator=gen)[:n_features]
        rand[ids] = torch.rand(n_features, generator=gen)
        rand = rand / rand.norm()
        randoms.append(cos(decoded_delta(sae, rand)))
    return {"tokens": int(tokens.shape[0]), "width": encoder.width, "dict_size": dict_size, "top_k": top_k,
            "n_pairs": n_pairs,
            "fvu": stats["fvu"], "l0": stats["l0"], "dead_fraction": stats["dead_fraction"],
            "direction_features": n_features, "cos_direction": cos_direction,
            "cos_random_mean": statistics.mean(randoms), "cos_random_max": max(randoms),
            "train_tokens_per_s": tokens.shape[0] * epochs / train_s, "encode_s": encode_s, "train_s": train_s}


if __name__ == "__main__":
    r = study(**sized({}, {"n_prompts": 60, "dict_size": 256, "top_k": 8, "epochs": 1, "batch_size": 256,
                           "n_pairs": 4, "n_heldout": 4, "n_random": 3}))
    ratio = r["cos_direction"] / max(abs(r["cos_random_mean"]), 1e-6)
    print(f"MiniLM ({r['width']}-d), {r['tokens']} tokens, dictionary {r['dict_size']}, k={r['top_k']}: "
          f"FVU {r['fvu']:.3f}, L0 {r['l0']:.1f}, dead latents {100 * r['dead_fraction']:.1f}%")
    print(f"direction 'smiling' from {r['n_pairs']} pairs ({r['direction_features']} features): held-out cosine with "
          f"the true subject-token change {r['cos_direction']:.3f} vs random directions {r['cos_random_mean']:.3f} "
          f"(max {r['cos_random_max']:.3f}); ratio {ratio:.1f}x")
    print(f"SAE training throughput on this CPU: {r['train_tokens_per_s']:.0f} tokens/s")
    print(json.dumps(r))
    what = f"MiniLM, {r['tokens']} tokens, dictionary {r['dict_size']}, k {r['top_k']}"
    figure("fvu", r["fvu"], f"{r['fvu']:.3f}", f"FVU of an SAE trained on real token embeddings ({what})")
    figure("dead_fraction", r["dead_fraction"], f"{100 * r['dead_fraction']:.1f}%", "dead latents, same SAE")
    figure("cos_direction", r["cos_direction"], f"{r['cos_direction']:.3f}",
           f"held-out cosine of a direction from {r['n_pairs']} pairs with the true token change")
    figure("cos_random_mean", r["cos_random_mean"], f"{r['cos_random_mean']:.3f}",
           "the same for random directions (mean)")
    figure("train_tokens_per_s", r["train_tokens_per_s"], f"{r['train_tokens_per_s']:.0f} tokens/s",
           "SAE training throughput on this CPU")
