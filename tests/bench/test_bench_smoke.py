"""Every bench in bench/ runs, at its smoke size, as part of the test suite (issue 27): a bench that no longer runs
fails here, not months later in `make bench`. Each runs as `make bench` runs it (its own process, `python -P`, so the
repo root is never on sys.path) with EDITLAB_BENCH_SIZE=smoke, under the suite's loopback-only network guard; it must
exit 0 and record at least one finite figure, or a note (a bench that needs a GPU says so and runs its CPU dry run).
New benches are picked up by the glob."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import guarded_server_env

BENCH = Path(__file__).resolve().parents[2] / "bench"
SMOKE_TIMEOUT_S = 300  # a smoke run takes seconds; this only stops a hung one


@pytest.mark.parametrize("path", sorted(BENCH.glob("bench_*.py")), ids=lambda p: p.stem)
def test_bench_runs_at_smoke_size(path, tmp_path):
    figures, guard_log = tmp_path / "figures.jsonl", tmp_path / "netguard.log"
    env = {**os.environ, **guarded_server_env(guard_log), "EDITLAB_BENCH_SIZE": "smoke",
           "EDITLAB_BENCH_FIGURES": str(figures)}
    try:
        done = subprocess.run([sys.executable, "-P", str(path)], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=SMOKE_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{path.name} ran over {SMOKE_TIMEOUT_S} s at smoke size:\n{(exc.stdout or '')[-4000:]}")
    output = f"--- stdout\n{done.stdout[-6000:]}\n--- stderr\n{done.stderr[-6000:]}"
    assert done.returncode == 0, f"{path.name} failed at smoke size (exit {done.returncode}):\n{output}"
    records = [json.loads(line) for line in figures.read_text().splitlines()] if figures.exists() else []
    assert records, f"{path.name} recorded no figure and no note (benchlib.figure / benchlib.note):\n{output}"
    for r in records:
        assert r["size"] == "smoke" and r["bench"] == path.stem, r
        assert "note" in r or math.isfinite(r["value"]), r
    assert not (guard_log.exists() and guard_log.read_text().strip()), \
        f"{path.name} tried to open non-loopback connections:\n{guard_log.read_text()}"
