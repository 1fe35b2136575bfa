"""bench/run_all.py's bookkeeping on stand-in benches (a few lines each, run as it runs the real ones): the figures a
bench records reach its entry, a bench that fails is recorded as failed with its error, a figure that is not finite
fails the bench, and the smoke size reaches the bench through the environment."""
import textwrap

import pytest

from editlab.bench import benchlib, run_all


def _bench(tmp_path, body: str):
    path = tmp_path / "bench_standin.py"
    path.write_text(textwrap.dedent(f"""\
        import sys
        sys.path.insert(0, {str(run_all.HERE)!r})
        from benchlib import SIZE, figure, note, sized
        """) + textwrap.dedent(body))
    return path


def test_a_bench_s_figures_and_notes_reach_its_entry(tmp_path, capsys):
    path = _bench(tmp_path, """\
        print("measured", sized(100, 1))
        figure("ratio", 1.25, "1.25x", "a over b")
        note("a note")
        """)
    entry = run_all.run_one(path, "full")
    assert entry["returncode"] == 0 and entry["output"] == "measured 100\n"
    assert entry["figures"] == [{"key": "ratio", "value": 1.25, "text": "1.25x", "label": "a over b"}]
    assert entry["notes"] == ["a note"] and entry["stderr_tail"] == ""
    assert "measured 100" in capsys.readouterr().out  # echoed as it runs
    assert run_all.run_one(path, "smoke")["output"] == "measured 1\n"


@pytest.mark.parametrize("body, message", [
    ("raise RuntimeError('the bench broke')", "the bench broke"),
    ("figure('ratio', float('nan'), 'nanx', 'a zero time divided')", "is not a finite number"),
])
def test_a_failing_bench_is_recorded_as_failed_with_its_error(tmp_path, body, message):
    entry = run_all.run_one(_bench(tmp_path, body), "full")
    assert entry["returncode"] != 0 and message in entry["stderr_tail"] and entry["figures"] == []


def test_an_unknown_size_is_refused(tmp_path):
    entry = run_all.run_one(_bench(tmp_path, "pass"), "huge")
    assert entry["returncode"] != 0 and "EDITLAB_BENCH_SIZE" in entry["stderr_tail"]
    assert benchlib.SIZES == ("full", "smoke")
