"""Runs the benches in bench/, each in its own process, and keeps what they measured.

  python bench/run_all.py                    every bench at full size (make bench)
  python bench/run_all.py bench_tryon ...    only those (their entries are replaced, the others' kept)
  python bench/run_all.py --smoke            every bench at the smoke size (what tests/bench runs): nothing kept

A full run writes bench/last_run.json (per bench: date, machine, git commit, exit status, output, the figures it
recorded through benchlib.figure), then bench/RESULTS.md and the README's figures from it (bench/lastrun.py). A bench
that fails is recorded as failed (its figures are not published) and the run goes on; the exit status is 1 if any
failed.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # bench/, also under python -P
import benchlib  # noqa: E402
import lastrun  # noqa: E402

WRITTEN = ("bench/last_run.json", "bench/RESULTS.md", "README.md")  # what a run writes: not "changed" code


def benches() -> list[Path]:
    return sorted(HERE.glob("bench_*.py"))


def run_one(path: Path, size: str) -> dict:
    """Run one bench in a child process (``python -P``: the working directory stays off sys.path), echoing its output
    as it comes; return its exit status, seconds, stdout, the tail of its stderr, figures and notes."""
    with tempfile.TemporaryDirectory() as tmp:
        figures_file = Path(tmp) / "figures.jsonl"
        env = {**os.environ, benchlib.SIZE_ENV: size, benchlib.FIGURES_ENV: str(figures_file)}
        started, load_before = time.monotonic(), os.getloadavg()[0]
        proc = subprocess.Popen([sys.executable, "-P", str(path)], cwd=benchlib.ROOT, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=1)
        err: list[str] = []

        def drain():
            for line in proc.stderr:
                err.append(line)
                sys.stderr.write(line)

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        out = []
        for line in proc.stdout:
            out.append(line)
            sys.stdout.write(line)
            sys.stdout.flush()
        code = proc.wait()
        reader.join()
        records = benchlib.read_figures(figures_file)
    return {"returncode": code, "seconds": round(time.monotonic() - started, 1),
            # the machine's 1-minute load average before and after: other work running beside the bench
            "load": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "output": "".join(out)[-lastrun.OUTPUT_CHARS:],
            "stderr_tail": "".join(err)[-4000:] if code else "",
            "figures": [{k: r[k] for k in ("key", "value", "text", "label")} for r in records if "key" in r],
            "notes": [r["note"] for r in records if "note" in r]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="benches to run (e.g. bench_tryon); default: all")
    parser.add_argument("--smoke", action="store_true", help="the smoke size; records nothing")
    args = parser.parse_args(argv)
    chosen = benches()
    if args.names:
        wanted = {n.removesuffix(".py") for n in args.names}
        unknown = wanted - {p.stem for p in chosen}
        if unknown:
            parser.error(f"no such bench: {', '.join(sorted(unknown))} (known: {', '.join(p.stem for p in chosen)})")
        chosen = [p for p in chosen if p.stem in wanted]
    size = "smoke" if args.smoke or benchlib.SMOKE else "full"  # benchlib takes --smoke off sys.argv at import
    data = lastrun.load()
    mach = lastrun.machine()
    failed = []
    for path in chosen:
        print(f"== {path.stem} ({size})", flush=True)
        date = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        entry = run_one(path, size)
        if entry["returncode"]:
            failed.append(path.stem)
            print(f"== {path.stem} FAILED (exit {entry['returncode']})", flush=True)
        if size == "full":
            data["benches"][path.stem] = {"date": date, "machine": mach, **lastrun.git_state(WRITTEN), **entry}
            lastrun.save(data)  # after each bench: a run cut short keeps what it measured
    if size == "full":
        for stale in set(data["benches"]) - {p.stem for p in benches()}:
            del data["benches"][stale]  # a bench that no longer exists
        lastrun.save(data)
        lastrun.publish(data)
        print(f"wrote {', '.join(WRITTEN)}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
