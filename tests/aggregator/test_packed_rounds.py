"""A whole study with packed updates ends on the model that one-value-per-slot HE gives, and
each round tells hospitals the public weight unit their shares are measured in."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from aggregator.config import AggregatorConfig, ConfigError, weight_unit_for
from aggregator.results import JsonlResultsSink, read_events
from aggregator.rounds import run_study
from crypto import PACKED_PARAMS, CkksParams
from demo.setup import Consortium
from federation.inprocess import InProcessGrid
from hospitals import wire
from hospitals.client_app import round_request
from hospitals.participation import RoundRefusedError
from hospitals.protocol import canonical_json


def run(consortium: Consortium, results: Path) -> tuple[list[dict], InProcessGrid]:
    # Round 1's unit as a preflight would set it, so that both formats weigh hospitals by their
    # rows from the first round on.
    config = AggregatorConfig.from_run_config(
        {
            "protocol": canonical_json(consortium.protocol.document),
            "he-context": base64.b64encode(consortium.key.aggregator_context().to_bytes()).decode(),
            "results-path": str(results),
            "weight-unit": consortium.first_weight_unit(),
        }
    )
    grid = InProcessGrid(consortium.hospitals)
    run_study(grid, config, JsonlResultsSink(results))
    return [event for event in read_events(results) if event["event"] == "round"], grid


@pytest.mark.slow
def test_packed_and_unpacked_studies_end_within_a_tenth_of_a_point(make_consortium, tmp_path):
    unpacked, _ = run(make_consortium(rounds=3, he_params=CkksParams()), tmp_path / "u.jsonl")
    packed, grid = run(make_consortium(rounds=3, he_params=PACKED_PARAMS), tmp_path / "p.jsonl")

    for metric in ("roc_auc", "accuracy"):
        assert packed[-1]["metrics"][metric] == pytest.approx(
            unpacked[-1]["metrics"][metric], abs=1e-3
        )
    # One chunk each for the demo's 31 parameters: a seeded, single-prime one against a full one.
    sent = zip(packed[0]["hospitals"], unpacked[0]["hospitals"], strict=True)
    assert all(mine["bytes_up"] < theirs["bytes_up"] / 3 for mine, theirs in sent)

    units = [
        message.content.config_records[wire.ROUND_CONFIG]["weight_unit"]
        for message in grid.sent
        if message.metadata.message_type == wire.TRAIN
    ]
    published = [[h["rows_rounded"] for h in result["hospitals"]] for result in packed]
    first_unit = units[0]
    assert (
        units
        == [first_unit] * 3
        + [weight_unit_for(published[0])] * 3
        + [weight_unit_for(published[1])] * 3
    )


def test_the_weight_unit_leaves_room_above_the_largest_published_cohort():
    assert weight_unit_for([120, 400, 80]) == 500
    assert weight_unit_for([0, 0]) == 10  # cohorts published as 0 rows still get a share


@pytest.mark.parametrize("unit", [-1, 2.5, "100", True])
def test_a_malformed_weight_unit_is_refused_by_both_sides(make_consortium, unit):
    consortium = make_consortium(rounds=1)
    run_config = {
        "protocol": canonical_json(consortium.protocol.document),
        "he-context": base64.b64encode(consortium.key.aggregator_context().to_bytes()).decode(),
        "results-path": "results.jsonl",
        "weight-unit": unit,
    }
    with pytest.raises(ConfigError, match="weight-unit"):
        AggregatorConfig.from_run_config(run_config)

    InProcessGrid(consortium.hospitals)  # gives this process the task identity a Message needs
    message = Message(
        RecordDict(
            {
                wire.ROUND_CONFIG: ConfigRecord(
                    {"round": 1, "protocol": run_config["protocol"], "weight_unit": unit}
                )
            }
        ),
        dst_node_id=1,
        message_type=wire.TRAIN,
    )
    with pytest.raises(RoundRefusedError, match="weight unit must be a positive integer"):
        round_request(message)
