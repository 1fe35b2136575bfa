"""Real size (issue 23): every node that patches, samples or trains, on a full-size model with seeded random weights,
beside the host's plain sampling (and the host's own TrainLoraNode) of the same model in the same server.

    python -P bench/real_size/run.py                 SD1.5 at 512x512 in a live server + meta counts of every family
    python -P bench/real_size/run.py --only meta     only the meta-device counts (minutes, little memory)
    python -P bench/real_size/run.py --only sd15     only the live SD1.5 runs
    python -P bench/real_size/run.py --steps 2       sampling / training steps per prompt (default 2)
    python -P bench/real_size/run.py --only sd15 --workflows slider,attention_maps
                                                     only these workflows, beside plain in the same server; the
                                                     rows of the earlier run that are not re-run are kept, marked,
                                                     with their ratio to that run's own plain prompt

Live runs (``live.py``): a full-size checkpoint (``checkpoints.py``) is loaded by the stock CheckpointLoaderSimple
in a headless ComfyUI; each workflow is one prompt; its peak is the server process's resident high-water mark (VmHWM,
reset through /proc/PID/clear_refs before the prompt) on the CPU, or the device memory the server holds (sampled from
nvidia-smi) on a GPU. Families that do not fit this machine's RAM are counted on the meta device (``meta_counts.py``).
With a CUDA device the live runs include SDXL at 1024x1024 and the meta counts are run for real on the GPU.

Writes bench/real_size/results/real_size.json and real_size.md. Anything above 4 GB of RAM runs under
``flock /tmp/editlab-bigmem.lock`` on the shared development machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # bench/ (benchlib: the pack importable as editlab)
sys.path.insert(0, str(HERE))
import benchlib  # noqa: E402,F401

RESULTS = HERE / "results"


def _host():
    from editlab.client.hostenv import comfyui_path

    path = str(comfyui_path())
    if path not in sys.path:
        sys.path.insert(0, path)
    return path


def _git() -> str:
    """The commit measured, marked when the pack's code differs from it (uncommitted changes that ran)."""
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=benchlib.ROOT, capture_output=True, text=True,  # noqa: E731
                                        timeout=10).stdout.strip()
        dirty = run("status", "--porcelain", "--", "models", "nodes", "kernels", "__init__.py", "bench/real_size",
                    ":(exclude)bench/real_size/results")
        return run("rev-parse", "--short", "HEAD") + (" with uncommitted changes" if dirty else "")
    except Exception:
        return ""


def run_meta(device: str) -> list[dict]:
    import meta_counts

    rows = []
    for case in meta_counts.CASES:
        try:
            row = meta_counts.count(case, device=device)
        except Exception as exc:  # e.g. out of GPU memory: that is the finding; the other families still run
            row = {"family": case.name, "setting": case.setting, "device": device,
                   "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            if device == "cuda":
                import torch

                torch.cuda.empty_cache()
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["meta", "sd15", "sdxl"], action="append",
                        help="run only these parts (repeatable); default: sd15 and meta (and sdxl on a GPU)")
    parser.add_argument("--steps", type=int, default=2, help="steps per sampling / training prompt")
    parser.add_argument("--workflows", type=lambda s: [w.strip() for w in s.split(",") if w.strip()],
                        help="comma-separated workflow keys of the live runs (plain is always run); default: all")
    parser.add_argument("--collect", choices=["sd15", "sdxl"],
                        help="write the table from the rows a live run that was stopped had measured "
                             "(results/FAMILY_partial.json), measuring nothing")
    args = parser.parse_args(argv)
    _host()
    import torch

    cuda = torch.cuda.is_available()
    from comfy.cli_args import args as host_args

    host_args.cpu = not cuda
    host_args.use_pytorch_cross_attention = True  # the host's default on an NVIDIA GPU (fused, no N x N logits)
    import comfy.model_management  # noqa: F401 - reads its args at import
    parts = args.only or (["sd15", "sdxl", "meta"] if cuda else ["sd15", "meta"])
    RESULTS.mkdir(exist_ok=True)
    out_json = RESULTS / "real_size.json"
    stamp = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "commit": _git(),
             "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
                        + (f", {torch.cuda.get_device_name()}" if cuda else ", no GPU"),
             "torch": torch.__version__}
    if args.collect:
        import live

        rows = json.loads((RESULTS / f"{args.collect}_partial.json").read_text())
        stamp.update(json.loads((RESULTS / f"{args.collect}_partial_stamp.json").read_text()))
        summary = live.summarise(args.collect, rows, stamp.pop("unet_parameters"), stamp.pop("steps"), cuda, None,
                                 cut_short=True)
        data = json.loads(out_json.read_text()) if out_json.exists() else {}
        data.setdefault("live", {})[args.collect] = {**summary, **stamp}
        out_json.write_text(json.dumps(data, indent=1))
        parts = []
    for part in parts:
        if part == "meta":
            measured = {"meta": run_meta("cuda" if cuda else "meta")}
        else:
            import live

            measured = {"live": {part: {**live.run_family(part, steps=args.steps, cuda=cuda,
                                                          workflows=args.workflows), **stamp}}}
            if args.workflows:
                earlier_data = json.loads(out_json.read_text()) if out_json.exists() else {}
                keep_earlier(measured["live"][part], earlier_data.get("live", {}).get(part))
        # after each part (a run cut short keeps what it measured), merged into what the file holds now: the
        # parts another run wrote meanwhile are kept
        data = json.loads(out_json.read_text()) if out_json.exists() else {}
        data.update(stamp)
        data.setdefault("live", {}).update(measured.get("live", {}))
        if "meta" in measured:
            data["meta"] = measured["meta"]
            data["meta_stamp"] = stamp
        out_json.write_text(json.dumps(data, indent=1))
    (RESULTS / "real_size.md").write_text(render(data))
    print((RESULTS / "real_size.md").read_text())
    return 0


def keep_earlier(now: dict, earlier: dict | None) -> None:
    """Rows of ``earlier`` (the family's previous table) measured there and not re-run ``now`` are kept, marked with
    that run's date and plain peak (their ratios are against that run's plain prompt, not this one's)."""
    if not earlier:
        return
    old = {r["key"]: r for r in earlier.get("rows", []) if "error" not in r and r["key"] != "plain"}
    old_plain = next((r for r in earlier.get("rows", []) if r["key"] == "plain" and "error" not in r), None)
    for i, r in enumerate(now["rows"]):
        if r.get("error") == "not run" and r["key"] in old:
            kept = dict(old[r["key"]])
            kept.setdefault("earlier_run", {"date": earlier.get("date"), "commit": earlier.get("commit"),
                                            "load": earlier.get("load"),
                                            "plain_peak_mib": old_plain and old_plain["peak_mib"],
                                            "plain_s_per_step": old_plain and old_plain["s_per_step"]})
            now["rows"][i] = kept


def render(data: dict) -> str:
    lines = [f"Machine: {data['machine']} (torch {data['torch']}).", ""]
    for family, live in data.get("live", {}).items():
        runs = [None]  # None: this run; then each earlier run a kept row came from, in order of appearance
        for r in live["rows"]:
            e = r.get("earlier_run")
            if e and e not in runs:
                runs.append(e)
        letter = lambda e: "ABCDEFGH"[runs.index(e)]
        lines += [f"**{live['title']}** ({live['where']}; {live['note']}; run A measured {live.get('date', '?')} at "
                  f"{live.get('commit', '?')}, load average {live.get('load', '?')})", "",
                  "| workflow | run | peak MiB | extra over the loaded model, MiB | ratio to its run's plain peak | "
                  "s/step | steps |", "|---|---|---:|---:|---:|---:|---:|"]
        for r in live["rows"]:
            if "error" in r:
                what = "not run" if r["error"] == "not run" else "failed: " + r["error"][:150]
                lines.append(f"| {r['label']} | | {what} | | | | |")
                continue
            ratio = f"{r['ratio_to_plain']:.2f}x" if r.get("ratio_to_plain") is not None else "-"
            lines.append(f"| {r['label']} | {letter(r.get('earlier_run'))} | {r['peak_mib']:,} | {r['extra_mib']:,} | "
                         f"{ratio} | {r['s_per_step']:.1f} | {r['steps']} |")
        for e in runs[1:]:
            lines += ["", f"Run {letter(e)}: measured {e['date']} at {e['commit']}, load average {e['load']}; its plain "
                          f"prompt peaked at {e['plain_peak_mib']:,} MiB, {e['plain_s_per_step']} s/step."]
        lines.append("")
    if data.get("meta"):
        dev = data["meta"][0]["device"]
        lines += [f"**Every family at its real size, {'on the GPU' if dev == 'cuda' else 'counted on the meta device'}"
                  "** (diffusion network only, bf16 weights; activation peaks of one step, weights excluded; "
                  f"fused attention; measured {data['meta_stamp']['date']} at {data['meta_stamp']['commit']})", "",
                  "| family | setting | host config | parameters | weights MiB | sampling step MiB | "
                  "training step (fwd+bwd) MiB |", "|---|---|---|---:|---:|---:|---:|"]
        for r in data["meta"]:
            if "error" in r:
                lines.append(f"| {r['family']} | {r['setting']} | failed: {r['error'][:120]} | | | | |")
                continue
            lines.append(f"| {r['family']} | {r['setting']} | {r['host_config']} | {r['parameters']:,} | "
                         f"{r['weight_mib']:,} | {r['fwd_activation_peak_mib']:,} | "
                         f"{r['fwd_bwd_activation_peak_mib']:,} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
