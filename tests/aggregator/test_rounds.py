"""The round loop with the real ClientApp, DP-SGD and CKKS; messages are delivered in-process."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Error, Message, Metadata
from flwr.app.message import make_message
from flwr.common.constant import ErrorCode
from flwr.supercore.constant import SYSTEM_MESSAGE_TYPE

from aggregator.config import AggregatorConfig, ConfigError
from aggregator.results import JsonlResultsSink, read_events
from aggregator.rounds import RunFailedError, run_study
from crypto import Quantization
from crypto.codec import Update, read_update
from demo.setup import DEMO_CONSENT_WAIVER, Consortium, node_policy_toml
from federation.inprocess import RUN_ID, InProcessGrid
from hospitals import wire
from hospitals.ledger import PrivacyLedger
from hospitals.participation import released_model_path
from hospitals.protocol import canonical_json


def aggregator_config(
    consortium: Consortium, results: Path, *, he_context: bytes | None = None
) -> AggregatorConfig:
    context = (
        he_context if he_context is not None else consortium.key.aggregator_context().to_bytes()
    )
    return AggregatorConfig.from_run_config(
        {
            "protocol": canonical_json(consortium.protocol.document),
            "he-context": base64.b64encode(context).decode(),
            "results-path": str(results),
        }
    )


def run(consortium: Consortium, tmp_path: Path, grid: InProcessGrid) -> list[dict]:
    results = tmp_path / "results.jsonl"
    run_study(grid, aggregator_config(consortium, results), JsonlResultsSink(results))
    return [event for event in read_events(results) if event["event"] == "round"]


def released(consortium: Consortium, hospital: str) -> np.ndarray:
    path = released_model_path(
        consortium.nodes[hospital], study_id=consortium.protocol.study_id, run_id=str(RUN_ID)
    )
    return np.load(path)["parameters"]


def carries_blob(message: Message) -> bool:
    """Whether `message` carries a global state or an update, inline or as a record."""
    content = message.content
    return bool(content.array_records) or any(
        name in content.config_records.get(record, {})
        for name, record in ((wire.GLOBAL_STATE, wire.ROUND_CONFIG), (wire.UPDATE, wire.REPORT))
    )


@pytest.mark.parametrize("inline_max_bytes", [wire.INLINE_MAX_BYTES, 0])
def test_every_hospital_contributes_and_all_decrypt_the_same_model(
    make_consortium, tmp_path, monkeypatch, inline_max_bytes
):
    # Both parties follow the wire's limit; at 0 every blob travels as a record of its own.
    monkeypatch.setattr(wire, "INLINE_MAX_BYTES", inline_max_bytes)
    consortium = make_consortium(rounds=2)
    grid = InProcessGrid(consortium.hospitals)
    rounds = run(consortium, tmp_path, grid)

    carrying = [message for message in grid.sent + grid.received if carries_blob(message)]
    # To each hospital: round 2's global state and the final model; from each: two updates.
    assert len(carrying) == 3 * 4
    as_records = {bool(message.content.array_records) for message in carrying}
    assert as_records == {inline_max_bytes == 0}

    assert [r["round"] for r in rounds] == [1, 2]
    for result in rounds:
        assert sorted(result["participants"]) == ["hospital-a", "hospital-b", "hospital-c"]
        assert result["dropped"] == {}
        assert result["metrics"]["roc_auc"] > 0.8
    epsilons = [[h["epsilon"] for h in r["hospitals"]] for r in rounds]
    assert all(0 < first < second <= 3.0 * 1.001 for first, second in zip(*epsilons, strict=True))
    models = [released(consortium, name) for name in ("hospital-a", "hospital-b", "hospital-c")]
    np.testing.assert_array_equal(models[0], models[1])
    np.testing.assert_array_equal(models[0], models[2])


def evaluated_losses(grid: InProcessGrid, message_type: str, round_number: int) -> list[float]:
    """The losses hospitals reported in their replies to one round's messages of a type."""
    return sorted(
        reply.content.config_records[wire.REPORT][wire.EVAL_SECTION + "loss"]
        for reply in grid.received
        if reply.metadata.message_type == message_type
        and reply.metadata.group_id == str(round_number)
        and wire.EVAL_SECTION + "loss" in reply.content.config_records[wire.REPORT]
    )


def hospital_losses(result: dict) -> list[float]:
    return sorted(hospital["metrics"]["loss"] for hospital in result["hospitals"])


def test_each_model_is_evaluated_by_the_next_rounds_training_and_the_last_on_its_own(
    make_consortium, tmp_path
):
    consortium = make_consortium(rounds=3)
    grid = InProcessGrid(consortium.hospitals)

    rounds = run(consortium, tmp_path, grid)

    # One message per hospital and round, and one more for the final model.
    assert [m.metadata.message_type for m in grid.sent] == [wire.TRAIN] * 9 + [wire.EVALUATE] * 3
    assert evaluated_losses(grid, wire.TRAIN, 1) == []  # nothing to evaluate before round 1
    assert hospital_losses(rounds[0]) == evaluated_losses(grid, wire.TRAIN, 2)
    assert hospital_losses(rounds[1]) == evaluated_losses(grid, wire.TRAIN, 3)
    assert hospital_losses(rounds[2]) == evaluated_losses(grid, wire.EVALUATE, 3)
    assert len(set(hospital_losses(rounds[0]) + hospital_losses(rounds[2]))) == 6


def test_a_hospital_that_declines_the_next_round_still_counts_in_the_last_ones_metrics(
    make_consortium, tmp_path
):
    consortium = make_consortium(rounds=2)
    node = consortium.nodes["hospital-a"]

    def spend_all_but_round_1(reply: Message) -> Message:
        ledger = PrivacyLedger(node.ledger_path)
        (entry,) = ledger.entries(dataset_id=node.dataset_id)
        spent = ledger.epsilon(
            dataset_id=node.dataset_id, delta=entry.step.delta, accountant=entry.step.accountant
        )
        node.policy_path.write_text(
            node_policy_toml(
                study_id=consortium.protocol.study_id,
                max_lifetime_epsilon=spent * 1.05,
                consent_waiver=DEMO_CONSENT_WAIVER,
            )
        )
        grid.hooks.clear()
        return reply

    grid = InProcessGrid(consortium.hospitals, hooks={"hospital-a": spend_all_but_round_1})

    first, second = run(consortium, tmp_path, grid)

    assert first["participants"] == ["hospital-a", "hospital-b", "hospital-c"]
    assert all(hospital["metrics"] for hospital in first["hospitals"])
    assert second["participants"] == ["hospital-b", "hospital-c"]
    assert second["dropped"]["hospital-a"].startswith("refused: ")


def test_a_round_is_reported_without_metrics_when_the_run_fails_before_its_evaluation(
    make_consortium, tmp_path
):
    consortium = make_consortium(rounds=2, min_hospitals=3)

    def leave(reply: Message) -> Message:
        del grid.nodes[grid.node_id("hospital-c")]
        return reply

    grid = InProcessGrid(consortium.hospitals, hooks={"hospital-c": leave})
    results = tmp_path / "results.jsonl"

    with pytest.raises(RunFailedError, match="only 2 hospital node"):
        run_study(grid, aggregator_config(consortium, results), JsonlResultsSink(results))

    (first,) = [event for event in read_events(results) if event["event"] == "round"]
    assert first["participants"] == ["hospital-a", "hospital-b", "hospital-c"]
    assert first["metrics"] == {}


def test_a_silent_hospital_is_dropped_and_the_round_completes(make_consortium, tmp_path):
    # The round loop waits the protocol's round timeout for the lost reply.
    consortium = make_consortium(rounds=1, round_timeout_s=2)
    grid = InProcessGrid(consortium.hospitals, hooks={"hospital-c": lambda reply: None})

    (result,) = run(consortium, tmp_path, grid)

    assert sorted(result["participants"]) == ["hospital-a", "hospital-b"]
    assert result["dropped"] == {f"node {grid.node_id('hospital-c')}": "no reply within 2 s"}


def lost_in_upload(reply: Message) -> Message:
    """What Flower's grid hands the round loop in place of a reply whose sender died while
    uploading it: an error from the aggregator's own node (flwr 1.41, http_grid.pull_messages)."""
    return make_message(
        metadata=Metadata(
            run_id=RUN_ID,
            message_id="",
            src_node_id=0,
            dst_node_id=0,
            reply_to_message_id=reply.metadata.reply_to_message_id,
            group_id="",
            created_at=0.0,
            ttl=0,
            message_type=SYSTEM_MESSAGE_TYPE,
        ),
        error=Error(code=ErrorCode.MESSAGE_UNAVAILABLE, reason="Reply objects are unavailable."),
    )


def test_an_error_flower_sent_in_place_of_a_reply_names_the_hospital(make_consortium, tmp_path):
    consortium = make_consortium(rounds=1)
    grid = InProcessGrid(consortium.hospitals, hooks={"hospital-c": lost_in_upload})

    (result,) = run(consortium, tmp_path, grid)

    assert sorted(result["participants"]) == ["hospital-a", "hospital-b"]
    # Not "node 0: failed: ..." beside "node 3: no reply".
    assert result["dropped"] == {
        f"node {grid.node_id('hospital-c')}": "failed: Reply objects are unavailable."
    }


def junk_update(update: Update) -> bytes:
    return b"COHE" + bytes(100)


def junk_ciphertext(update: Update) -> bytes:
    """Sound framing around a chunk that is no ciphertext: found once the sum loads it."""
    return replace(update, chunks=(b"not a ciphertext", *update.chunks[1:])).to_bytes()


def sent_update(reply: Message) -> bytes | None:
    """The update a train reply carries; None for an evaluation or a refusal."""
    try:
        return wire.blob_of(reply.content, wire.UPDATE, inline_in=wire.REPORT)
    except KeyError:
        return None


def replace_update(reply: Message, blob: bytes) -> None:
    wire.put_blob(reply.content, wire.UPDATE, blob, inline_in=wire.REPORT)


@pytest.mark.parametrize("garbled", [junk_update, junk_ciphertext])
def test_a_malformed_update_is_rejected_without_stopping_the_round(
    make_consortium, tmp_path, garbled: Callable[[Update], bytes]
):
    def garble(reply: Message) -> Message:
        if (blob := sent_update(reply)) is not None:
            update = read_update(blob, context=consortium.key, max_bytes=1 << 20)
            replace_update(reply, garbled(update))
        return reply

    consortium = make_consortium(rounds=1)
    (result,) = run(
        consortium, tmp_path, InProcessGrid(consortium.hospitals, hooks={"hospital-b": garble})
    )

    assert sorted(result["participants"]) == ["hospital-a", "hospital-c"]
    assert result["dropped"]["hospital-b"].startswith("rejected its update: ")


def test_an_update_that_is_not_bytes_is_rejected_by_name(make_consortium, tmp_path):
    def stringify(reply: Message) -> Message:
        if sent_update(reply) is not None:
            reply.content.config_records[wire.REPORT][wire.UPDATE] = "not a ciphertext"
        return reply

    consortium = make_consortium(rounds=1)
    grid = InProcessGrid(consortium.hospitals, hooks={"hospital-b": stringify})

    (result,) = run(consortium, tmp_path, grid)

    assert sorted(result["participants"]) == ["hospital-a", "hospital-c"]
    assert result["dropped"] == {"hospital-b": "rejected its update: update is str, not bytes"}


def test_an_update_in_another_quantization_is_dropped_and_the_others_summed(
    make_consortium, tmp_path
):
    # Parses as a sound update, but cannot be summed with the others: their fields differ.
    def requantize(reply: Message) -> Message:
        if (blob := sent_update(reply)) is not None:
            update = read_update(blob, context=consortium.key, max_bytes=1 << 20)
            replace_update(reply, replace(update, quantization=Quantization(clip=4.0)).to_bytes())
        return reply

    consortium = make_consortium(rounds=1)
    grid = InProcessGrid(consortium.hospitals, hooks={"hospital-b": requantize})

    (result,) = run(consortium, tmp_path, grid)

    assert sorted(result["participants"]) == ["hospital-a", "hospital-c"]
    assert result["dropped"] == {
        "hospital-b": "sent 31 values quantized to 15 bits within ±4 with 6 headroom bits where "
        "the others sent 31 values quantized to 15 bits within ±8 with 6 headroom bits"
    }


def test_the_run_fails_with_reasons_when_too_few_hospitals_contribute(make_consortium, tmp_path):
    consortium = make_consortium(rounds=1, min_hospitals=3)
    # A node whose policy does not allow the study refuses, with a reason it is safe to publish.
    consortium.hospitals[0].policy_path.write_text('allowed_studies = ["another-study"]\n')
    grid = InProcessGrid(consortium.hospitals)

    with pytest.raises(
        RunFailedError, match="round 1 needs at least 3 hospitals but 2 contributed"
    ) as failure:
        run(consortium, tmp_path, grid)

    assert "hospital-a: refused: node policy does not allow study 'breast-cancer-demo'" in str(
        failure.value
    )


def test_the_aggregator_refuses_a_context_that_carries_the_secret_key(make_consortium, tmp_path):
    consortium = make_consortium(rounds=1)
    with pytest.raises(ConfigError, match="not a usable aggregator context"):
        aggregator_config(consortium, tmp_path / "r.jsonl", he_context=consortium.key.to_bytes())


def test_the_aggregator_refuses_another_studys_context(make_consortium, tmp_path):
    from crypto import SecretContext

    consortium = make_consortium(rounds=1)
    stranger = SecretContext.generate().aggregator_context().to_bytes()
    with pytest.raises(ConfigError, match="another study's context"):
        aggregator_config(consortium, tmp_path / "r.jsonl", he_context=stranger)


def test_no_message_to_the_aggregator_carries_a_patient_identifier_or_raw_value(
    make_consortium, tmp_path
):
    consortium = make_consortium(rounds=1)
    grid = InProcessGrid(consortium.hospitals)
    run(consortium, tmp_path, grid)

    payload = b"".join(serialized(reply) for reply in grid.received)
    for spec in consortium.hospitals:
        rows = spec.data_path.read_text().splitlines()[1:]
        for row in rows[:25]:
            patient_id, *values = row.split(",")
            assert patient_id.encode() not in payload
            assert row.encode() not in payload


def serialized(message: Message) -> bytes:
    parts = [repr(dict(record)).encode() for record in message.content.config_records.values()]
    parts += [repr(dict(record)).encode() for record in message.content.metric_records.values()]
    parts += [
        bytes(array.data)
        for record in message.content.array_records.values()
        for array in record.values()
    ]
    return b"".join(parts)
