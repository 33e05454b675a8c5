"""The DP suite's quick run: one row per catalog model and DP mode, with sane figures.

It asserts the shape of the results, never a speed: timings belong to `make bench`. It reads the
session's one quick run (conftest.py) rather than running the suite again.
"""

from __future__ import annotations

import pytest
import torch

from bench import dp
from hospitals.dp import GradSampleMode
from hospitals.models import CATALOG
from tests.bench.conftest import QuickRun

pytestmark = pytest.mark.slow


def test_one_table_per_device_with_one_row_per_model_and_dp_mode(quick_run: QuickRun) -> None:
    tables = quick_run.tables("dp")
    assert len(tables) == len(quick_run.figures("dp")["devices"])
    for table in tables:
        pairs = [(row[0], str(row[2]).removesuffix(" *")) for row in table.rows]
        assert pairs == [(model, mode.value) for model in dp.MODELS for mode in dp.DP_MODES]
        # One mode per model is the one nodes train it in.
        marked = [(row[0], str(row[2]).removesuffix(" *")) for row in table.rows if "*" in row[2]]
        node_modes = quick_run.figures("dp")["models"]
        assert marked == [(model, node_modes[model]["node_mode"]) for model in dp.MODELS]
        assert all(len(row) == len(table.columns) for row in table.rows)
        assert {row[-1] for row in table.rows} <= {"yes", "no"}


def test_every_catalog_model_and_every_mode_is_measured(quick_run: QuickRun) -> None:
    figures = quick_run.figures("dp")
    specs = {model["spec"]["name"] for model in figures["models"].values()}
    assert specs == set(CATALOG)
    assert figures["dp_modes"] == [mode.value for mode in GradSampleMode]
    assert figures["dp_modes"] == ["hooks", "functorch", "ew", "ghost", "bk"]
    assert all(set(model["modes"]) == set(GradSampleMode) for model in figures["models"].values())


def test_ratios_and_timings_are_positive(quick_run: QuickRun) -> None:
    for model in quick_run.figures("dp")["models"].values():
        assert model["parameters"] > 0
        for figures in model["modes"].values():
            assert figures["epoch_ratio"] > 0
            assert figures["memory_ratio"] is None or figures["memory_ratio"] > 0
            for side in ("non_dp", "dp"):
                seconds = figures[side]["epoch_seconds"]
                assert 0 < seconds["min"] <= seconds["median"] <= seconds["max"]
                assert figures[side]["peak_growth_kib"] >= 0


def test_the_plot_is_written(quick_run: QuickRun) -> None:
    assert "![dp-epoch-ratio.png](dp-epoch-ratio.png)" in quick_run.section("dp")
    assert (quick_run.out / "dp-epoch-ratio.png").stat().st_size > 0


def test_cuda_is_measured_or_recorded_as_unavailable(quick_run: QuickRun) -> None:
    figures = quick_run.figures("dp")
    notes = " ".join(quick_run.tables("dp")[0].notes)
    if torch.cuda.is_available():
        assert figures["devices"] == ["cpu", "cuda"]
        for model in figures["models"].values():
            assert set(model["cuda_modes"]) == set(GradSampleMode)
    else:
        assert figures["devices"] == ["cpu"]
        assert figures["cuda"] == "unavailable"
        assert "CUDA: unavailable" in notes
    assert "book-keeping" in notes  # the notes say what each mode is and which one nodes use
