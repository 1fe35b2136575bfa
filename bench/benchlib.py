"""What every bench shares: the pack importable as ``editlab``, the size a bench runs at, and the figures it reports.

A bench starts with::

    sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/, also under python -P
    from benchlib import ROOT, SMOKE, figure, sized  # noqa: E402

Import: the repo is the package ``editlab`` (as ComfyUI and the tests import it); its root never goes on sys.path,
where the pack's ``kernels/`` would shadow Hugging Face's ``kernels`` package and its ``nodes/`` ComfyUI's nodes.py.

Sizes: ``EDITLAB_BENCH_SIZE=smoke`` (or ``--smoke`` on a bench's command line, which sets it for the bench's child
processes too) runs the bench's whole path at tiny sizes in seconds, so the test suite can run every bench
(tests/bench/test_bench_smoke.py); unset or ``full``, the sizes its published figures come from.

Figures: ``figure(key, value, text)`` checks that a measured number is finite and records it. bench/run_all.py
collects them (through the JSON-lines file named by EDITLAB_BENCH_FIGURES) into bench/last_run.json, the file the
README's figures are generated from.
"""
from __future__ import annotations

import json
import math
import os
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIZE_ENV = "EDITLAB_BENCH_SIZE"
FIGURES_ENV = "EDITLAB_BENCH_FIGURES"
SIZES = ("full", "smoke")

if "--smoke" in sys.argv[1:]:
    sys.argv.remove("--smoke")
    os.environ[SIZE_ENV] = "smoke"
SIZE = os.environ.get(SIZE_ENV, "") or "full"
if SIZE not in SIZES:
    raise SystemExit(f"{SIZE_ENV} is {SIZE!r}; it is one of {', '.join(SIZES)} (or unset: full)")
SMOKE = SIZE == "smoke"

if "editlab" not in sys.modules:
    _pkg = types.ModuleType("editlab")
    _pkg.__path__ = [str(ROOT)]  # submodules import; the root __init__ (ComfyUI registration) does not run
    sys.modules["editlab"] = _pkg


def sized(full, smoke):
    """``full`` at the full size, ``smoke`` in the smoke run."""
    return smoke if SMOKE else full


def figure(key: str, value: float, text: str, label: str, bench: str | None = None) -> float:
    """Record one measured figure: ``key`` (stable within the bench, e.g. ``overhead_cfg3.5``), the number, ``text``
    (how the README shows it, with its unit: ``f"{ratio:.2f}x"``) and ``label`` (what was measured against what). A
    figure that is not finite (a zero time divided, a run that measured nothing) is an error, at every size."""
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"bench figure {key!r} is not a finite number: {value}")
    _append({"bench": bench or Path(sys.argv[0]).stem, "key": key, "value": value, "text": text, "label": label,
             "size": SIZE})
    return value


def note(text: str, bench: str | None = None) -> None:
    """Record a line about the run that is not a figure (a bench that needs a GPU says so here)."""
    _append({"bench": bench or Path(sys.argv[0]).stem, "note": text, "size": SIZE})


def _append(record: dict) -> None:
    path = os.environ.get(FIGURES_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def read_figures(path: Path) -> list[dict]:
    """The records ``figure`` and ``note`` appended to ``path`` (none when the file is missing)."""
    if not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
