"""Train an SAE outside ComfyUI, for long runs: one process, or several under torchrun (data parallel).

  python scripts/train_sae.py --tokens tokens.safetensors --out models/sae/my.safetensors --dict-size 65536 --top-k 300
  python scripts/train_sae.py --encoder /path/to/t5_encoder --prompts prompts.txt --out my.safetensors
  torchrun --nproc_per_node 4 scripts/train_sae.py --tokens tokens.safetensors --out my.safetensors

--tokens: a safetensors file with a "tokens" tensor (n, d) of token embeddings.
--encoder/--prompts: a local Hugging Face text-encoder folder (T5 encoders included) and one prompt per line;
  the real tokens of each prompt (no specials, no padding) are used. Nothing is downloaded.
Under torchrun each process trains on its own shard (NCCL on GPUs, gloo on CPUs) and rank 0 saves.
"""
import argparse
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

from editlab.models.saedit.files import save_sae  # noqa: E402
from editlab.models.saedit.sae import SPARSITY, SAEConfig  # noqa: E402
from editlab.models.saedit.train import DataParallel, TrainConfig, evaluate_sae, train_sae  # noqa: E402

log = logging.getLogger("train_sae")


def load_tokens(args) -> torch.Tensor:
    if args.tokens:
        from safetensors.torch import load_file

        data = load_file(args.tokens)
        if "tokens" not in data or data["tokens"].ndim != 2:
            raise SystemExit(f"{args.tokens}: expected a 2-D 'tokens' tensor")
        return data["tokens"].float()
    from editlab.models.saedit.hf_encoder import LocalTextEncoder

    prompts = [l.strip() for l in Path(args.prompts).read_text().splitlines() if l.strip()]
    encoder = LocalTextEncoder(args.encoder)
    return torch.cat([t for t, _ in encoder.encode(prompts)])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--tokens")
    src.add_argument("--encoder")
    p.add_argument("--prompts")
    p.add_argument("--out", required=True)
    p.add_argument("--dict-size", type=int, default=4096)
    p.add_argument("--top-k", type=int, default=32)
    p.add_argument("--groups", default="", help="Matryoshka group sizes, comma-separated")
    p.add_argument("--sparsity", choices=SPARSITY, default="topk",
                   help="topk: per token (default); batch_topk: the authors' BatchTopK with a threshold at inference")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=4096, help="tokens per step per process")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--encoder-name", default="", help="recorded in the file's metadata")
    args = p.parse_args(argv)
    if args.encoder and not args.prompts:
        p.error("--encoder needs --prompts")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    parallel = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        parallel = DataParallel()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    tokens = load_tokens(args)
    everything = tokens
    if parallel:
        # Equal shards: every process must take the same number of steps.
        per = tokens.shape[0] // parallel.world
        tokens = tokens[parallel.rank * per:(parallel.rank + 1) * per]
    groups = [int(g) for g in args.groups.split(",") if g.strip()]
    config = SAEConfig(act_size=tokens.shape[1], dict_size=args.dict_size, top_k=args.top_k, group_sizes=groups,
                       sparsity=args.sparsity)
    rank = parallel.rank if parallel else 0

    def report(step, total, stats):
        if rank == 0 and (step % 50 == 0 or step == total):
            log.info("step %d/%d loss %.4f fvu %.3f l0 %.1f dead %.1f%%", step, total, stats["loss"], stats["fvu"],
                     stats["l0"], 100 * stats["dead_fraction"])

    sae, _ = train_sae(tokens.to(device), config,
                       TrainConfig(lr=args.lr, batch_size=args.batch_size, epochs=args.epochs, seed=args.seed),
                       on_step=report, parallel=parallel)
    checksum = float(sum(p.detach().double().sum() for p in sae.parameters()) + sae.threshold.double())
    log.info("rank %d parameter checksum %.10f", rank, checksum)
    if rank == 0:
        stats = evaluate_sae(sae.cpu(), everything)
        stats["processes"] = parallel.world if parallel else 1
        save_sae(sae, Path(args.out), encoder=args.encoder_name, stats=stats)
        log.info("saved %s: %s", args.out, stats)
    if parallel:
        parallel.dist.barrier()
        parallel.dist.destroy_process_group()


if __name__ == "__main__":
    main()
