"""One `python -m bench.run --quick` per test session, read by every bench test.

The quick run takes about a minute; each suite's tests check the files it wrote (results.json,
report.md and the plots) instead of running their suite again.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class ReportTable:
    """One table of report.md, its cells as printed."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    notes: list[str]


@dataclass(frozen=True)
class QuickRun:
    out: Path
    results: dict[str, Any]
    report: str

    def figures(self, suite: str) -> dict[str, Any]:
        figures: dict[str, Any] = self.results["suites"][suite]
        return figures

    def section(self, suite: str) -> str:
        _, found, rest = self.report.partition(f"\n## {suite}\n")
        assert found, f"report.md has no section for suite {suite!r}"
        return rest.split("\n## ", 1)[0]

    def tables(self, suite: str) -> list[ReportTable]:
        return [parse_table(block) for block in self.section(suite).split("### ")[1:]]


def parse_table(block: str) -> ReportTable:
    """A table as bench.run.markdown_table writes it: title, header, rule, rows, `_note_` lines."""
    title, _, header, _, *lines = block.splitlines()

    def cells(line: str) -> list[str]:
        return [cell.strip() for cell in line.strip().strip("|").split("|")]

    rows = [cells(line) for line in lines if line.startswith("|")]
    notes = [line.strip().strip("_") for line in lines if line.startswith("_")]
    return ReportTable(title=title, columns=cells(header), rows=rows, notes=notes)


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> QuickRun:
    out = tmp_path_factory.mktemp("bench-quick")
    completed = subprocess.run(  # noqa: S603 - fixed argv
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return QuickRun(
        out=out,
        results=json.loads((out / "results.json").read_text()),
        report=(out / "report.md").read_text(),
    )
