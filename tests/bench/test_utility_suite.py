"""The utility suite's quick run: every method scored on the common test set, with sane figures.

It asserts the shape of the results, never a score or a speed: those belong to `make bench`.
"""

from __future__ import annotations

import json

import pytest

from bench import utility
from bench.core import SuiteResult

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def result() -> SuiteResult:
    return utility.run(quick=True)


def test_one_auc_and_one_accuracy_table_for_the_breast_cancer_split(result: SuiteResult) -> None:
    titles = [table.title for table in result.tables]
    assert len(titles) == 2
    assert all(utility.BREAST_CANCER in title for title in titles)
    for table in result.tables:
        (row,) = table.rows
        assert len(row) == len(table.columns)
        assert row[0] == "3"
        assert isinstance(row[-1], str) and row[-1].startswith(("met", "not met"))


def test_every_method_is_scored_on_the_test_set(result: SuiteResult) -> None:
    (run,) = result.figures["runs"]
    assert (run["dataset"], run["epsilon"], run["rounds"]) == ("breast-cancer", 3.0, 2)
    assert set(run["local_only"]) == {"hospital-a", "hospital-b", "hospital-c"}
    models = [run["federated"], run["centralized"], *run["local_only"].values()]
    for scores in models:
        assert set(scores) == {"roc_auc", "accuracy"}
        assert all(0.0 <= value <= 1.0 for value in scores.values())
    assert run["test_rows"] > 0


def test_the_federated_run_spent_the_studys_budget(result: SuiteResult) -> None:
    (run,) = result.figures["runs"]
    assert set(run["epsilon_spent"]) == set(run["local_only"])
    assert all(0 < spent <= 3.0 * 1.001 for spent in run["epsilon_spent"].values())


def test_summary_gives_each_method_with_the_goal_at_epsilon_3(result: SuiteResult) -> None:
    summary = result.figures["summary"]["breast-cancer"]["3"]
    for metric in ("roc_auc", "accuracy"):
        figures = summary[metric]
        for method in ("federated", "centralized", "best_local"):
            assert 0.0 <= figures[method]["mean"] <= 1.0
            assert figures[method]["sd"] is None  # one seed in the quick run
        assert figures["goal"].startswith(("met", "not met"))


def test_figures_are_json_and_the_plot_is_a_figure(result: SuiteResult) -> None:
    json.dumps(result.figures, allow_nan=False)
    assert list(result.plots) == ["utility.png"]
    assert result.plots["utility.png"].axes
