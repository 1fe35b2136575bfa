"""Train TBStar-Edit's layered adapters outside ComfyUI, for long runs: one process, or several under torchrun (data
parallel: each process takes its share of the pairs, gradients are averaged, rank 0 saves).

  python scripts/train_layered.py --pairs /data/pairs --unet flux1-dev-kontext_fp8_scaled.safetensors \\
      --clip clip_l.safetensors --clip t5xxl_fp16.safetensors --vae ae.safetensors --out-dir ComfyUI/models/loras \\
      --name shoes --resolution 512 --steps1 4000 --steps2 2000
  torchrun --nproc_per_node 4 scripts/train_layered.py ... (the same arguments)
  python scripts/train_layered.py --pairs pairs/ --tiny --out-dir /tmp/loras --name tiny   (a dry run on a CPU)

--pairs: NAME_source.png, NAME_target.png, NAME.txt (the instruction), NAME_mask.png (the product mask).
--stages consistency_only --pattern-shift FILE trains stage 2 on top of an existing stage-1 LoRA (left untouched).
Writes OUT_DIR/NAME_pattern_shift.safetensors and OUT_DIR/NAME_consistency.safetensors in LoraLoader's format
(refused if they exist unless --overwrite). ComfyUI must be importable: COMFYUI_PATH or ComfyUI on sys.path.
"""
import argparse
import json
import logging
import os
import sys
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if "editlab" not in sys.modules:
    pkg = types.ModuleType("editlab")
    pkg.__path__ = [str(ROOT)]
    sys.modules["editlab"] = pkg

log = logging.getLogger("train_layered")


def _host_path() -> None:
    host = os.environ.get("COMFYUI_PATH") or str(ROOT / ".host" / "ComfyUI")
    if host not in sys.path:
        sys.path.insert(0, host)


def _grad_sync(world: int):
    import torch.distributed as dist

    def sync(params):
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= world
    return sync


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", required=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--unet", help="the edit model's diffusion model file (Flux Kontext)")
    src.add_argument("--tiny", action="store_true", help="the tiny random-weight Flux (dry runs)")
    p.add_argument("--clip", action="append", default=[], help="text encoder files (clip_l and t5xxl)")
    p.add_argument("--vae")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--stages", choices=("both", "consistency_only"), default="both")
    p.add_argument("--pattern-shift", help="stage-1 LoRA file to freeze (consistency_only)")
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--steps1", type=int, default=1000)
    p.add_argument("--steps2", type=int, default=500)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--product-weight", type=float, default=5.0)
    p.add_argument("--guidance", type=float, default=2.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--cpu", action="store_true")
    args = p.parse_args(argv)
    if args.unet and (len(args.clip) != 2 or not args.vae):
        p.error("--unet needs two --clip files and --vae")
    if args.stages == "consistency_only" and not args.pattern_shift:
        p.error("--stages consistency_only needs --pattern-shift")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    _host_path()
    from comfy.cli_args import args as host_args

    host_args.cpu = args.cpu or not torch.cuda.is_available()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        import torch.distributed as dist

        if not host_args.cpu:  # one GPU per process (--cpu: gloo on the CPU, whatever GPUs there are)
            local, gpus = int(os.environ.get("LOCAL_RANK", 0)), torch.cuda.device_count()
            if local >= gpus:
                p.error(f"process {local} of this node has no GPU of its own: the node has {gpus}; run at most "
                        f"{gpus} processes per node (torchrun --nproc_per_node), or pass --cpu")
            torch.cuda.set_device(local)
        dist.init_process_group("gloo" if host_args.cpu else "nccl")
    import comfy.model_management  # noqa: F401 - reads host_args

    from editlab.models.common import atomic_save_safetensors
    from editlab.models.layered.data import read_pairs
    from editlab.nodes import host
    from editlab.nodes.layered import _metadata, encode_pairs, train_lora_stage, weighted

    out_dir = Path(args.out_dir)
    files = {s: out_dir / f"{args.name}_{s}.safetensors" for s in ("pattern_shift", "consistency")}
    for s, f in files.items():
        if f.exists() and not args.overwrite and (s == "consistency" or args.stages == "both"):
            raise SystemExit(f"{f} exists (use --overwrite)")
    if args.tiny:
        from editlab.models.tiny import build_tiny_models

        tiny = build_tiny_models("flux", args.seed)
        model, clip, vae = tiny.model, tiny.clip, tiny.vae
    else:
        model, clip, vae = host.load_flux_files(args.unet, args.clip, args.vae)
    pairs, skipped = read_pairs(args.pairs, "--pairs")
    for s in skipped:
        log.warning("skipped %s", s)
    mine = pairs[rank::world]
    if not mine:
        raise SystemExit(f"rank {rank}: no pairs ({len(pairs)} pairs for {world} processes)")
    device = host.compute_device()
    sync = _grad_sync(world) if world > 1 else None
    every = max(1, (args.steps1 + args.steps2) // 100)

    def on_step(i, n, loss):
        if rank == 0 and (i % every == 0 or i == n):
            log.info("step %d/%d loss %.5f", i, n, loss)

    settings = {k: getattr(args, k) for k in ("resolution", "rank", "lr", "seed", "guidance")}
    stats = {"pairs": len(pairs), "processes": world}
    frozen = host.load_lora_file(args.pattern_shift) if args.stages == "consistency_only" else None
    data = encode_pairs(model, clip, vae, mine, args.resolution, device)
    if frozen is None:
        frozen, stats["stage1"] = train_lora_stage(model, weighted(data, 1.0), args.rank, args.steps1, args.lr,
                                                   args.seed, args.guidance, on_step=on_step, grad_sync=sync,
                                                   data_seed=args.seed + 7919 * rank)
        if rank == 0:
            atomic_save_safetensors(frozen, files["pattern_shift"], _metadata("pattern_shift", stats["stage1"],
                                                                              settings), overwrite=args.overwrite)
            log.info("saved %s", files["pattern_shift"])
    lora2, stats["stage2"] = train_lora_stage(model, weighted(data, args.product_weight), args.rank, args.steps2,
                                              args.lr, args.seed + 1, args.guidance, frozen_lora=frozen,
                                              on_step=on_step, grad_sync=sync, data_seed=args.seed + 1 + 7919 * rank)
    checksum = sum(float(v.double().abs().sum()) for v in lora2.values())
    log.info("rank %d LoRA checksum %.10e", rank, checksum)
    if rank == 0:
        atomic_save_safetensors(lora2, files["consistency"], _metadata("consistency", stats["stage2"], settings),
                                overwrite=args.overwrite)
        log.info("saved %s", files["consistency"])
        print(json.dumps(stats))
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
