"""Runs every benchmark in bench/ (each prints the ratios it measured)."""
import runpy
import sys
from pathlib import Path

for path in sorted(Path(__file__).parent.glob("bench_*.py")):
    print(f"== {path.stem}", flush=True)
    sys.argv = [str(path)]
    runpy.run_path(str(path), run_name="__main__")
