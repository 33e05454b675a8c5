"""The utility suite's quick run: every method scored on the common test set, with sane figures.

It asserts the shape of the results, never a score or a speed: those belong to `make bench`. It
reads the session's one quick run (conftest.py) rather than running the suite again.
"""

from __future__ import annotations

from typing import Any

import pytest

from bench import utility
from bench.core import Goal
from tests.bench.conftest import QuickRun

pytestmark = pytest.mark.slow


@pytest.fixture
def figures(quick_run: QuickRun) -> dict[str, Any]:
    return quick_run.figures("utility")


def test_one_auc_and_one_accuracy_table_for_the_breast_cancer_split(quick_run: QuickRun) -> None:
    tables = quick_run.tables("utility")
    assert len(tables) == 2
    assert all(utility.BREAST_CANCER in table.title for table in tables)
    for table in tables:
        (row,) = table.rows
        assert len(row) == len(table.columns)
        assert row[0] == "3"
        assert row[-1].startswith(("met", "not met"))


def test_every_method_is_scored_on_the_test_set(figures: dict[str, Any]) -> None:
    (run,) = figures["runs"]
    assert (run["dataset"], run["epsilon"]) == ("breast-cancer", 3.0)
    assert run["design"] == {"rounds": 2, "local_epochs": 1, "model": None}
    assert set(run["local_only"]) == {"hospital-a", "hospital-b", "hospital-c"}
    models = [run["federated"], run["centralized"], *run["local_only"].values()]
    for scores in models:
        assert set(scores) == {"roc_auc", "accuracy"}
        assert all(0.0 <= value <= 1.0 for value in scores.values())
    assert run["test_rows"] > 0


def test_the_federated_run_spent_the_studys_budget(figures: dict[str, Any]) -> None:
    (run,) = figures["runs"]
    assert set(run["epsilon_spent"]) == set(run["local_only"])
    assert all(0 < spent <= 3.0 * 1.001 for spent in run["epsilon_spent"].values())


def test_summary_gives_each_method_with_the_goal_at_epsilon_3(figures: dict[str, Any]) -> None:
    summary = figures["summary"]["breast-cancer"]["3"]
    for metric in ("roc_auc", "accuracy"):
        scores = summary[metric]
        for method in ("federated", "centralized", "best_local"):
            assert 0.0 <= scores[method]["mean"] <= 1.0
            assert scores[method]["sd"] is None  # one seed in the quick run
        assert scores["goal"].startswith(("met", "not met"))


def test_the_plot_is_written(quick_run: QuickRun) -> None:
    assert "![utility.png](utility.png)" in quick_run.section("utility")
    assert (quick_run.out / "utility.png").stat().st_size > 0


def at_goal_epsilon(dataset: str, *, federated: float, best_local: float) -> dict[str, Any]:
    """One seed's scores at ε = 3: centralized half a point above federated."""
    return {
        "dataset": dataset,
        "epsilon": utility.GOAL_EPSILON,
        "federated": {"roc_auc": federated},
        "centralized": {"roc_auc": federated + 0.005},
        "local_only": {"h1": {"roc_auc": best_local}, "h2": {"roc_auc": best_local - 0.1}},
    }


def test_on_the_non_iid_cohort_the_utility_goal_also_needs_a_gain_over_the_best_hospital():
    def goal(dataset: str, best_local: float) -> Goal:
        runs = [at_goal_epsilon(dataset, federated=0.8, best_local=best_local)]
        return utility.utility_goal(runs, dataset=dataset)

    assert goal(utility.BREAST_CANCER, best_local=0.79).met is True
    assert goal(utility.SYNTHETIC, best_local=0.79).met is False  # +1 pp, 3 needed
    assert goal(utility.SYNTHETIC, best_local=0.76).met is True
    assert goal(utility.SYNTHETIC, best_local=0.76).measured == (
        "-0.5 pp vs centralized, +4.0 pp vs best local-only, where centralized is +4.5 pp "
        "(mean of 1 seed(s))"
    )
    assert "where centralized" not in goal(utility.BREAST_CANCER, best_local=0.79).measured
    assert utility.utility_goal([], dataset=utility.SYNTHETIC).met is None
