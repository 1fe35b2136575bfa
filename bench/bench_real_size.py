"""Real size (issue 23) in `make bench`: every family's diffusion network at its real size counted on the meta
device (weights, activation peak of one sampling step and of one training step), and the last live full-size run of
bench/real_size/run.py (its date and commit shown) beside it.

The live runs (a full-size checkpoint in a server, every node beside plain sampling) take 20+ minutes and several GB,
so they are not re-run here: ``python -P bench/real_size/run.py`` runs them (see bench/real_size/run.py). At the smoke
size the meta counter runs on tiny SD1.5 and Flux configs of the host's classes (seconds).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/, also under python -P
from benchlib import SMOKE, figure, note  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent / "real_size"))
RESULTS = Path(__file__).resolve().parent / "real_size" / "results" / "real_size.json"


def _host():
    from editlab.client.hostenv import comfyui_path

    path = str(comfyui_path())
    if path not in sys.path:
        sys.path.insert(0, path)
    from comfy.cli_args import args

    args.cpu = True
    args.use_pytorch_cross_attention = True
    import comfy.model_management  # noqa: F401


def main() -> int:
    _host()
    import meta_counts

    if SMOKE:
        tiny_unet = {**meta_counts.SD15, "model_channels": 32, "channel_mult": [1, 2], "num_res_blocks": [1, 1],
                     "transformer_depth": [1, 1], "transformer_depth_output": [1, 1, 1, 1], "num_heads": 2}
        tiny_flux = {**meta_counts.FLUX_DEV, "hidden_size": 64, "num_heads": 2, "depth": 1, "depth_single_blocks": 1,
                     "axes_dim": [8, 12, 12]}
        cases = [meta_counts.Case("tiny SD1.5", "SD15", tiny_unet, meta_counts._unet_inputs((8, 8), 768), "64 px",
                                  extra={"checkpointing": "unet"}),
                 meta_counts.Case("tiny Flux", "Flux", tiny_flux, meta_counts._flux_inputs((8, 8), t5_tokens=8),
                                  "64 px", cfg_batch=1, extra={"checkpointing": "dit"})]
    else:
        cases = meta_counts.CASES
    for case in cases:
        row = meta_counts.count(case)
        print(json.dumps(row), flush=True)
        key = case.name.lower().replace(" ", "_").replace("(", "").replace(")", "").replace(",", "")
        figure(f"{key}_weights", row["weight_mib"], f"{row['weight_mib']:,} MiB",
               f"{case.name}: bf16 weights of the diffusion network ({row['parameters']:,} parameters), meta")
        figure(f"{key}_sampling", row["fwd_activation_peak_mib"], f"{row['fwd_activation_peak_mib']:,} MiB",
               f"{case.name}: activation peak of one sampling step ({case.setting}), meta")
        figure(f"{key}_training", row["fwd_bwd_activation_peak_mib"], f"{row['fwd_bwd_activation_peak_mib']:,} MiB",
               f"{case.name}: activation peak of one training step (fwd+bwd, batch 1, no checkpointing), meta")
        if "fwd_bwd_ckpt_activation_peak_mib" in row:
            ckpt = row["fwd_bwd_ckpt_activation_peak_mib"]
            figure(f"{key}_training_checkpointed", ckpt, f"{ckpt:,} MiB",
                   f"{case.name}: the same through the pack's gradient checkpointing (its trainers' default), meta")
            if case.extra.get("checkpointing") == "dit":  # the fp8 base weights a 24 GB card holds for LoRA training
                fp8 = row["parameters"] / meta_counts.MiB
                figure(f"{key}_training_fp8_floor", fp8 + ckpt, f"{fp8 + ckpt:,.0f} MiB",
                       f"{case.name}: fp8 weights ({fp8:,.0f} MiB) + that checkpointed step: a LoRA trainer's floor "
                       "(24 GB = 22,888 MiB), meta")
    if not SMOKE and RESULTS.exists():
        data = json.loads(RESULTS.read_text())
        for family, live in data.get("live", {}).items():
            for r in live["rows"]:
                if "error" in r or r["key"] == "plain":
                    continue
                figure(f"live_{family}_{r['key']}", r["ratio_to_plain"], f"{r['ratio_to_plain']:.2f}x",
                       f"{family} {r['label']}: peak over plain sampling, live full size ({live['where']}), "
                       f"from bench/real_size/run.py at {live.get('commit')} on {live.get('date')}")
    elif not SMOKE:
        note("no live full-size run recorded yet: python -P bench/real_size/run.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
