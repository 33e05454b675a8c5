"""The plaintext baseline (bench/plaintext): it trains as the product's node does, its aggregator
averages what the hospitals sent, it runs on a real federation, and the product cannot reach it."""

from __future__ import annotations

import ast
import base64
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from flwr.app import Message, RecordDict

from aggregator.config import AggregatorConfig
from aggregator.results import JsonlResultsSink, read_events
from bench import plaintext
from bench.plaintext import client_app as plaintext_client
from bench.plaintext import wire as plain
from bench.plaintext.server_app import run_plaintext_study
from demo.setup import Consortium
from federation.control import APP_DIR
from federation.inprocess import RUN_ID, InProcessGrid
from hospitals import wire
from hospitals.models import get_flat_parameters
from hospitals.participation import RoundRequest, _global_model, released_model_path, train_round
from hospitals.protocol import canonical_json
from tests.bench.conftest import QuickRun

REPOSITORY = Path(__file__).resolve().parents[2]
PRODUCT = ("hospitals", "platform", "crypto")

MakeConsortium = Callable[..., Consortium]


def aggregator_config(consortium: Consortium, results: Path) -> AggregatorConfig:
    context = consortium.key.aggregator_context().to_bytes()
    return AggregatorConfig.from_run_config(
        {
            "protocol": canonical_json(consortium.protocol.document),
            "he-context": base64.b64encode(context).decode(),
            "results-path": str(results),
        }
    )


def released(consortium: Consortium, hospital: str) -> npt.NDArray[np.float64]:
    path = released_model_path(
        consortium.nodes[hospital], study_id=consortium.protocol.study_id, run_id=str(RUN_ID)
    )
    parameters: npt.NDArray[np.float64] = np.load(path)["parameters"]
    return parameters


def run_plaintext(
    consortium: Consortium, tmp_path: Path
) -> tuple[InProcessGrid, list[dict[str, Any]]]:
    grid = InProcessGrid(consortium.hospitals, client_app=plaintext_client.app)
    results = tmp_path / "plaintext.jsonl"
    # InProcessGrid has the two Grid methods the round loop calls.
    run_plaintext_study(grid, aggregator_config(consortium, results), JsonlResultsSink(results))  # type: ignore[arg-type]
    return grid, [event for event in read_events(results) if event["event"] == "round"]


def train_replies(grid: InProcessGrid) -> list[Message]:
    return [m for m in grid.received if wire.UPDATE in m.content.config_records[wire.REPORT]]


def model_of(train_reply: RecordDict) -> npt.NDArray[np.float32]:
    return plain.from_bytes(wire.blob_of(train_reply, wire.UPDATE, inline_in=wire.REPORT))


@pytest.mark.slow
def test_the_global_model_is_the_row_weighted_mean_of_the_hospitals_models(
    make_consortium: MakeConsortium, tmp_path: Path
) -> None:
    consortium = make_consortium(rounds=1)

    grid, (result,) = run_plaintext(consortium, tmp_path)

    replies = train_replies(grid)
    models = [model_of(m.content) for m in replies]
    rows = [m.content.config_records[wire.REPORT][plain.ROWS] for m in replies]
    assert len(replies) == 3 and len(set(rows)) > 1  # unequal weights, so weighting shows
    expected = np.average(np.stack(models), axis=0, weights=rows).astype(np.float32)
    for hospital in ("hospital-a", "hospital-b", "hospital-c"):
        np.testing.assert_array_equal(released(consortium, hospital), expected)
    assert sorted(result["participants"]) == ["hospital-a", "hospital-b", "hospital-c"]
    assert result["metrics"]["roc_auc"] > 0.8
    assert all(h["bytes_up"] == 4 * expected.size for h in result["hospitals"])


@pytest.mark.slow
def test_a_plaintext_node_trains_the_model_the_product_node_trains(
    make_consortium: MakeConsortium,
) -> None:
    consortium = make_consortium(rounds=1)
    node = consortium.nodes["hospital-a"]
    protocol = consortium.protocol

    def request(run_id: str, global_state: bytes | None = None) -> RoundRequest:
        return RoundRequest(
            run_id=run_id, round_number=1, protocol=protocol, global_state=global_state
        )

    # Two runs, so each is charged to the ledger as a run of its own; the seeds do not depend
    # on the run.
    encrypted = train_round(node, request("he")).update
    he_model = _global_model(consortium.key, request("he", encrypted))
    content, _ = plaintext_client.train_plaintext(node, request("plaintext"))

    # Same rows, model, seeds and DP-SGD: only HE's rounding tells the two apart.
    np.testing.assert_allclose(model_of(content), get_flat_parameters(he_model), atol=1e-3)


@pytest.mark.slow
@pytest.mark.integration
def test_the_quick_run_compares_both_apps_on_a_real_federation(quick_run: QuickRun) -> None:
    figures = quick_run.figures("federation")["he_vs_plaintext"]

    (pair,) = figures["pairs"]
    for side in ("he", "plaintext"):
        assert [r["round"] for r in pair[side]["rounds"]] == [1, 2]
        assert all(r["participants"] == figures["hospitals"] for r in pair[side]["rounds"])
    assert figures["he_to_plaintext_round_ratio"] == pair["ratio"] > 0
    assert figures["ratio_min"] == figures["ratio_max"] == pair["ratio"]
    plaintext_bytes = pair["plaintext"]["rounds"][0]["update_bytes"]
    assert plaintext_bytes == 4 * figures["parameters"]
    assert pair["he"]["rounds"][0]["update_bytes"] > plaintext_bytes
    (table,) = [t for t in quick_run.tables("federation") if t.title.startswith("HE round vs")]
    assert len(table.rows) == 1 and len(table.rows[0]) == len(table.columns)


def run_config_keys(app_dir: Path) -> set[str]:
    manifest = tomllib.loads((app_dir / "pyproject.toml").read_text(encoding="utf-8"))
    return set(manifest["tool"]["flwr"]["app"]["config"])


def test_the_baseline_takes_the_products_run_config() -> None:
    # Flower refuses a run config with a key its app's manifest lacks.
    assert run_config_keys(plaintext.APP_DIR) == run_config_keys(APP_DIR)


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_product_module_imports_bench() -> None:
    offenders = [
        str(path.relative_to(REPOSITORY))
        for root in PRODUCT
        for path in (REPOSITORY / root).rglob("*.py")
        if any(name == "bench" or name.startswith("bench.") for name in imported_modules(path))
    ]
    assert offenders == []
