"""Benchmark of the harness: server start to /object_info, and client overhead per workflow.

Client overhead = (wall time of ./editlab's run_workflow: convert, check, queue, follow, download)
                  / (the server's own execution time, execution_start -> execution_success).
Prints the numbers measured in this run and appends them to bench/results/harness.csv. The smoke run (benchlib)
times one run of a small workflow and appends nothing.
"""
import csv
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ (benchlib), also under python -P
from benchlib import ROOT, SMOKE, figure, sized  # noqa: E402

from editlab.client.cli import run_workflow  # noqa: E402
from editlab.client.server import HeadlessServer  # noqa: E402
from editlab.client.workflow import load_workflow  # noqa: E402


# the workflow timed (each run sets another seed on its sampler, so the server's cache never answers); the smoke
# run: one small workflow instead of the tour
WORKFLOW = sized("editlab_tour.json", "tryon_flux_fill.json")


def server_seconds(entry):
    stamps = {kind: data.get("timestamp") for kind, data in entry["status"]["messages"]}
    return (stamps["execution_success"] - stamps["execution_start"]) / 1000.0


def main(runs: int = sized(10, 1)):
    t0 = time.monotonic()
    with HeadlessServer(cpu=True) as srv:
        start_s = time.monotonic() - t0  # start() returns once /object_info has answered
        workflow = load_workflow(ROOT / "workflows" / WORKFLOW)  # UI format: conversion included
        # its first KSampler, found by type (node ids move when a workflow is regenerated)
        seed_node = min(n["id"] for n in workflow["nodes"] if n["type"] == "KSampler")
        client = srv.client
        walls, execs = [], []
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(runs + 1):
                t = time.monotonic()
                run_workflow(client, workflow, [f"{seed_node}.seed={100 + i}"], Path(tmp), show_progress=False,
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
    print(f"{WORKFLOW}, median of {runs}: client wall {wall_med * 1000:.0f} ms, server execution "
          f"{exec_med * 1000:.0f} ms, overhead ratio {ratio:.2f}x ({(wall_med - exec_med) * 1000:.0f} ms per workflow)")
    figure("server_start_s", start_s, f"{start_s:.1f} s", "server start to /object_info (CPU)")
    figure("client_overhead", ratio, f"{ratio:.2f}x",
           f"client wall time per workflow over the server's own execution ({WORKFLOW}: "
           f"{(wall_med - exec_med) * 1000:.0f} ms more a workflow)")
    if SMOKE:  # no row in the results CSV for a smoke run
        return {"server_start_s": start_s, "client_wall_s": wall_med, "server_exec_s": exec_med, "ratio": ratio}
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "harness.csv", "a", newline="") as f:
        csv.writer(f).writerow([time.strftime("%Y-%m-%dT%H:%M:%S"), f"{start_s:.2f}", f"{wall_med:.4f}",
                                f"{exec_med:.4f}", f"{ratio:.3f}"])
    return {"server_start_s": start_s, "client_wall_s": wall_med, "server_exec_s": exec_med, "ratio": ratio}


if __name__ == "__main__":
    print(json.dumps(main()))
