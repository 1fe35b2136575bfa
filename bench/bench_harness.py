"""Benchmark of the harness: server start to /object_info, and client overhead per workflow.

Client overhead = (wall time of ./editlab's run_workflow: convert, check, queue, follow, download)
                  / (the server's own execution time, execution_start -> execution_success).
Prints the numbers measured in this run and appends them to bench/results/harness.csv.
"""
import csv
import json
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if "editlab" not in sys.modules:
    pkg = types.ModuleType("editlab")
    pkg.__path__ = [str(ROOT)]
    sys.modules["editlab"] = pkg

from editlab.client.cli import run_workflow  # noqa: E402
from editlab.client.server import HeadlessServer  # noqa: E402
from editlab.client.workflow import load_workflow  # noqa: E402


def server_seconds(entry):
    stamps = {kind: data.get("timestamp") for kind, data in entry["status"]["messages"]}
    return (stamps["execution_success"] - stamps["execution_start"]) / 1000.0


def main(runs: int = 10):
    t0 = time.monotonic()
    with HeadlessServer(cpu=True) as srv:
        start_s = time.monotonic() - t0  # start() returns once /object_info has answered
        workflow = load_workflow(ROOT / "workflows" / "editlab_tour.json")  # UI format: conversion included
        client = srv.client
        walls, execs = [], []
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(runs + 1):
                t = time.monotonic()
                run_workflow(client, workflow, [f"10.seed={100 + i}"], Path(tmp), show_progress=False,
                             tiny="always")
                wall = time.monotonic() - t
                history = client.get_json("/history?max_items=1")
                entry = next(iter(history.values()))
                if i == 0:
                    continue  # the first run builds the tiny models; measure the steady state
                walls.append(wall)
                execs.append(server_seconds(entry))
    wall_med, exec_med = statistics.median(walls), statistics.median(execs)
    ratio = wall_med / exec_med
    print(f"server start to /object_info: {start_s:.1f} s")
    print(f"tour workflow, median of {runs}: client wall {wall_med * 1000:.0f} ms, server execution "
          f"{exec_med * 1000:.0f} ms, overhead ratio {ratio:.2f}x ({(wall_med - exec_med) * 1000:.0f} ms per workflow)")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "harness.csv", "a", newline="") as f:
        csv.writer(f).writerow([time.strftime("%Y-%m-%dT%H:%M:%S"), f"{start_s:.2f}", f"{wall_med:.4f}",
                                f"{exec_med:.4f}", f"{ratio:.3f}"])
    return {"server_start_s": start_s, "client_wall_s": wall_med, "server_exec_s": exec_med, "ratio": ratio}


if __name__ == "__main__":
    print(json.dumps(main()))
