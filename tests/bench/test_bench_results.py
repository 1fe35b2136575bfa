"""The README's benchmark figures come from the benches' last full run (issue 27): bench/last_run.json holds, per
bench, when, where and at which commit it ran and what it printed and recorded; the README's block is what
bench/lastrun.py makes of that file (so nobody edited it by hand, and nobody forgot to run `python bench/lastrun.py`
after editing the file), and no README line about a bench types a measured figure outside that block."""
import math
import re
from pathlib import Path

from editlab.bench import lastrun

BENCH = Path(lastrun.__file__).resolve().parent


def test_every_bench_has_an_entry_from_a_full_run_with_date_machine_and_commit():
    data = lastrun.load()
    assert set(data["benches"]) == {p.stem for p in BENCH.glob("bench_*.py")}, \
        "bench/last_run.json and bench/bench_*.py list different benches: run `python bench/run_all.py NAME`"
    for name, entry in data["benches"].items():
        assert entry["date"] and re.fullmatch(r"[0-9a-f]{40}", entry["commit"]), name
        assert entry["machine"]["cpu"] and entry["machine"]["cores"] and entry["machine"]["torch"], name
        # a bench that failed is shown as failed in the README (the smoke tests say whether it runs now)
        assert entry["figures"] or entry["notes"] or entry["returncode"] != 0, f"{name} recorded nothing"
        for f in entry["figures"]:
            assert math.isfinite(f["value"]) and f["text"] and f["label"], (name, f)


def test_the_readme_block_is_generated_from_the_file():
    readme = lastrun.README.read_text(encoding="utf-8")
    assert lastrun.readme_text_block(readme) == lastrun.readme_block(lastrun.load()), \
        "README.md's benchmark figures differ from bench/last_run.json: run `python bench/lastrun.py`"


def test_the_generated_block_shows_every_figure_of_the_file_and_every_failure():
    data = lastrun.load()
    block = lastrun.readme_block(data)
    for name, entry in data["benches"].items():
        row = next(line for line in block.splitlines() if line.startswith(f"| `{name}.py` ("))
        assert entry["commit"][:10] in row
        if entry["returncode"] != 0:
            assert row.endswith(f"| FAILED (exit {entry['returncode']}) | |"), row
            continue
        for f in entry["figures"]:
            assert f"| {f['label']} | {f['text']} |" in block, (name, f)


FIGURE = re.compile(r"\b\d+(\.\d+)?x\b|\bFVU \d")  # a ratio (1.02x) or an FVU value typed in a sentence


def test_no_readme_line_about_a_bench_types_a_measured_figure_outside_the_block():
    readme = lastrun.README.read_text(encoding="utf-8")
    outside = readme.replace(lastrun.readme_text_block(readme), "")
    typed = [line for line in outside.splitlines() if "bench/bench_" in line or "bench_" in line and ".py" in line
             if FIGURE.search(re.sub(r"target <= \d+(\.\d+)?x", "", line))]
    assert not typed, "figures typed by hand next to a bench (quote the generated block instead):\n" + "\n".join(typed)


def test_the_readme_gpu_kernel_table_quotes_the_measured_csv():
    """The H200 table in the kernels section is from bench/measured/kernels_h200.csv (a GPU run, which `make bench`
    on a CPU cannot redo): each time, ratio and memory figure in it is a value of the file's column, as rounded."""
    import csv

    rows = list(csv.DictReader((BENCH / "measured" / "kernels_h200.csv").open()))
    column = {"ms": "median_ms", "x": "speed_vs_baseline", "MiB": "peak_mib"}
    readme = lastrun.README.read_text(encoding="utf-8")
    table = readme[readme.index("| case | ours | baseline | ratio | peak memory |"):]
    table = table[:table.index("\n\n")]
    quoted = re.findall(r"(\d[\d,]*(?:\.\d+)?) ?(ms|x|MiB)\b", table)
    assert len(quoted) >= 20, table
    for number, unit in quoted:
        decimals = len(number.split(".")[1]) if "." in number else 0
        value = float(number.replace(",", ""))
        assert any(round(float(r[column[unit]]), decimals) == value for r in rows), f"{number} {unit} is not in the CSV"


def test_a_failed_bench_shows_as_failed_without_figures_and_a_note_shows_as_is():
    machine = {"cpu": "CPU X", "cores": 2, "torch": "2.0", "python": "3.11", "gpu": None}
    common = {"date": "2030-01-01 00:00:00 UTC", "machine": machine, "changed": [], "seconds": 1.0, "output": "out\n"}
    data = {"format": lastrun.FORMAT, "benches": {
        "bench_a": {**common, "commit": "a" * 40, "returncode": 1, "notes": [], "stderr_tail": "boom",
                    "figures": [{"key": "k", "value": 2.0, "text": "2.00x", "label": "stale figure"}]},
        "bench_b": {**common, "commit": "b" * 40, "changed": ["x.py"], "returncode": 0, "notes": ["needs a GPU"],
                    "figures": []}}}
    block = lastrun.readme_block(data)
    assert "| `bench_a.py` (aaaaaaaaaa) | FAILED (exit 1) | |" in block and "stale figure" not in block
    assert "| `bench_b.py` (bbbbbbbbbb, 1 file(s) changed) | needs a GPU | |" in block
    data["benches"]["bench_b"]["load"] = [0.5, 3.25]
    assert "| `bench_b.py` (bbbbbbbbbb, 1 file(s) changed, load 3.2) |" in lastrun.readme_block(data)
    assert "CPU X (2 cores), no GPU" in block
    assert lastrun.replace_block(f"intro\n{lastrun.README_BEGIN}\nold\n{lastrun.README_END}\nend", block) == \
        f"intro\n{block}\nend"
    md = lastrun.results_markdown(data)
    assert "## bench_a" in md and "exit status 1" in md and "`x.py`" in md and "Note: needs a GPU" in md
