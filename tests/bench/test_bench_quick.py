"""`make bench-quick` end to end: every suite runs at small sizes and writes its outputs.

It proves the suites work; it asserts nothing about speed (figures are for `make bench`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.run import SUITES

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def test_the_quick_suite_writes_every_suites_figures_tables_and_plots(tmp_path):
    completed = subprocess.run(  # noqa: S603 - fixed argv
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["quick"] is True
    assert set(results["suites"]) == set(SUITES)
    assert results["machine"]["cpus"] >= 1
    report = (tmp_path / "report.md").read_text()
    for suite in SUITES:
        assert f"## {suite}" in report
    for image in (
        line.split("(")[1].rstrip(")") for line in report.splitlines() if line.startswith("![")
    ):
        assert (tmp_path / image).stat().st_size > 0


def test_he_figures_compare_the_same_updates():
    from bench import he

    result = he.run(quick=True)
    (case,) = result.figures["cases"]
    assert case["size_ratio_to_float32"] > 1
    assert case["max_abs_error"] < 1e-6
    assert case["aggregate_ratio"] > 0
