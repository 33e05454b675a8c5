"""`make bench-quick` end to end: every suite runs at small sizes and writes its outputs.

It proves the suites work; it asserts nothing about speed (figures are for `make bench`).
"""

from __future__ import annotations

import pytest

from bench.run import SUITES
from tests.bench.conftest import QuickRun, parse_table

pytestmark = pytest.mark.slow


def test_the_quick_suite_writes_every_suites_figures_tables_and_plots(quick_run: QuickRun):
    results = quick_run.results
    assert results["quick"] is True
    assert set(results["suites"]) == set(SUITES)
    assert results["machine"]["cpus"] >= 1
    report = quick_run.report
    for suite in SUITES:
        assert f"## {suite}" in report
    for image in (
        line.split("(")[1].rstrip(")") for line in report.splitlines() if line.startswith("![")
    ):
        assert (quick_run.out / image).stat().st_size > 0


def test_he_figures_compare_both_formats_on_the_same_updates(quick_run: QuickRun):
    cases = {case["format"]: case for case in quick_run.figures("he")["cases"]}
    packed, unpacked = cases["packed"], cases["unpacked"]
    assert packed["size_ratio_to_float32"] < unpacked["size_ratio_to_float32"] / 5
    assert unpacked["max_abs_error"] < 1e-6 and unpacked["error_bound"] is None
    assert 0 < packed["max_abs_error"] <= packed["error_bound"]
    assert packed["aggregate_ratio"] > 0 and unpacked["aggregate_ratio"] > 0


def test_each_federation_case_measures_its_idle_cpu(quick_run: QuickRun):
    (case,) = quick_run.figures("federation")["cases"]
    idle = case["idle_cpu_ms_per_s"]
    assert set(idle) == {"SuperNodes", "launchers", "SuperLink"}
    assert all(ms >= 0 for ms in idle.values())
    assert case["idle_node_ms_per_s"] >= 0


def test_planning_figures_put_both_searches_in_the_target_band(quick_run: QuickRun):
    plans = quick_run.figures("accounting")["planning"]
    assert {plan["accountant"] for plan in plans} == {"rdp", "prv"}
    for plan in plans:
        band = (0.995 * plan["target_epsilon"], plan["target_epsilon"])
        assert band[0] <= plan["cohort_epsilon"] <= band[1]
        assert band[0] <= plan["opacus_epsilon"] <= band[1]
        assert plan["cohort_seconds"] > 0 and plan["opacus_seconds"] > 0


def test_the_report_opens_with_every_goal_unjudged_in_a_quick_run(quick_run: QuickRun):
    goals = quick_run.results["goals"]
    names = [goal["name"] for goal in goals]
    assert names == [
        "HE update size",
        "DP training cost",
        *(
            f"Utility at ε = 3, {dataset}"
            for dataset in ("breast-cancer", "synthetic", "synthetic-mlp")
        ),
        "Framework overhead",
        "HE round",
        "Scale",
    ]
    assert all(goal["met"] is None for goal in goals)
    before_the_suites = quick_run.report.split("\n## ", 1)[0]
    table = parse_table(before_the_suites.split("### ", 1)[1])
    assert table.title == "Goals (issue 5), judged on this run"
    assert [row[0] for row in table.rows] == names
    assert {row[-1] for row in table.rows} == {"not judged"}
    assert "A quick run judges no goal" in table.notes[0]
