"""The DP suite's quick run: one row per catalog model and DP mode, with sane figures.

It asserts the shape of the results, never a speed: timings belong to `make bench`.
"""

from __future__ import annotations

import json

import pytest

from bench import dp
from bench.core import SuiteResult
from hospitals.models import CATALOG

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def result() -> SuiteResult:
    return dp.run(quick=True)


def test_one_row_per_model_and_dp_mode(result: SuiteResult) -> None:
    (table,) = result.tables
    pairs = [(row[0], row[2]) for row in table.rows]
    assert pairs == [(model, mode) for model in dp.MODELS for mode in dp.DP_MODES]
    assert all(len(row) == len(table.columns) for row in table.rows)
    assert {row[-1] for row in table.rows} <= {"yes", "no"}


def test_every_catalog_model_and_both_modes_are_measured(result: SuiteResult) -> None:
    specs = {model["spec"]["name"] for model in result.figures["models"].values()}
    assert specs == set(CATALOG)
    assert set(dp.DP_MODES) == {"hooks", "functorch"}


def test_ratios_and_timings_are_positive(result: SuiteResult) -> None:
    for model in result.figures["models"].values():
        assert model["parameters"] > 0
        for figures in model["modes"].values():
            assert figures["epoch_ratio"] > 0
            assert figures["memory_ratio"] is None or figures["memory_ratio"] > 0
            for side in ("non_dp", "dp"):
                seconds = figures[side]["epoch_seconds"]
                assert 0 < seconds["min"] <= seconds["median"] <= seconds["max"]
                assert figures[side]["peak_growth_kib"] >= 0


def test_figures_are_json_and_the_plot_is_a_figure(result: SuiteResult) -> None:
    json.dumps(result.figures, allow_nan=False)
    assert list(result.plots) == ["dp-epoch-ratio.png"]
    assert result.plots["dp-epoch-ratio.png"].axes


def test_the_notes_say_what_was_not_measured(result: SuiteResult) -> None:
    notes = " ".join(result.tables[0].notes)
    assert "Ghost clipping" in notes
    assert "GPU" in notes
