"""The composition matrices' README tables (tests/nodes/test_composition_matrix*.py): a run's table against the one
the README carries between its markers."""
from __future__ import annotations

import re

BACKEND = "host ModelAttentionBackend"  # ComfyUI 0.33's node: the README shows that run, 0.3.75 has none (n/a)


def rows(text: str) -> dict:
    """(family, patch A, patch B) -> the check cells, from a markdown table."""
    out = {}
    for line in text.strip().splitlines()[2:]:
        parts = [p.strip() for p in line.strip().strip("|").split("|")]
        out[tuple(parts[:3])] = parts[3:]
    return out


def assert_readme_carries(readme: str, marker: str, table: str, artifact) -> None:
    """The README's table between ``<!-- marker -->`` and ``<!-- /marker -->`` has this run's rows, cell for cell; a
    row with the host's attention backend may be n/a here (0.3.75) where the README shows 0.33's run."""
    found = re.search(rf"<!-- {marker} -->\n(.*?)\n<!-- /{marker} -->", readme, re.S)
    assert found, f"README.md has no <!-- {marker} --> block"
    mine, theirs = rows(table), rows(found.group(1))
    assert set(mine) == set(theirs), f"the README's table has other rows than this run's ({artifact})"
    for row, cells in mine.items():
        for got, shown in zip(cells, theirs[row]):
            assert got == shown or (got == "n/a" and BACKEND in " ".join(row)), \
                f"{row}: this run {cells}, the README {theirs[row]} ({artifact})"
