"""The ClientApp's replies name the consent basis and the ε conversion the node acted under."""

from __future__ import annotations

import dataclasses

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, ConfigRecordValues, Message, RecordDict

from demo.setup import DEMO_CONSENT_WAIVER, node_policy_toml
from federation.inprocess import InProcessGrid
from hospitals import wire
from hospitals.protocol import canonical_json


def ask(
    consortium,
    message_type: str,
    *,
    cpu_threads: int | None = None,
    round_config: dict[str, ConfigRecordValues] | None = None,
    records: dict[str, ArrayRecord] | None = None,
) -> Message:
    grid = InProcessGrid([dataclasses.replace(consortium.hospitals[0], cpu_threads=cpu_threads)])
    config: dict[str, ConfigRecordValues] = {
        "round": 1,
        "protocol": canonical_json(consortium.protocol.document),
        **(round_config or {}),
    }
    content = RecordDict({wire.ROUND_CONFIG: ConfigRecord(config), **(records or {})})
    message = Message(
        content,
        dst_node_id=grid.node_id(consortium.hospitals[0].hospital),
        message_type=message_type,
        group_id="1",
        ttl=60,
    )
    (reply,) = grid.send_and_receive([message])
    return reply


def test_train_and_evaluate_replies_carry_consent_and_conversion(make_consortium):
    consortium = make_consortium(rounds=1)

    for message_type in (wire.TRAIN, wire.EVALUATE):
        reply = ask(consortium, message_type)

        assert wire.REFUSAL not in reply.content.config_records
        identity = reply.content.config_records[wire.REPORT]
        assert identity["consent"] == f"waived: {DEMO_CONSENT_WAIVER}"
        assert identity["epsilon_conversion"] == "rdp-balle2020"
        assert identity["accountant"] == "rdp"


def test_a_node_without_consent_refuses_and_publishes_no_consent(make_consortium):
    consortium = make_consortium(rounds=1)
    consortium.hospitals[0].policy_path.write_text(
        node_policy_toml(study_id=consortium.protocol.study_id, max_lifetime_epsilon=10.0)
    )

    reply = ask(consortium, wire.TRAIN)

    refusal = reply.content.config_records[wire.REFUSAL]
    assert refusal["code"] == "consent-unavailable"
    identity = reply.content.config_records[wire.REPORT]
    assert "consent" not in identity
    assert identity["epsilon_conversion"] == "rdp-balle2020"


def test_a_task_trains_with_the_threads_its_node_config_gives(make_consortium):
    consortium = make_consortium(rounds=1)
    threads = torch.get_num_threads()
    try:
        reply = ask(consortium, wire.TRAIN, cpu_threads=threads + 1)
        assert wire.REFUSAL not in reply.content.config_records
        assert torch.get_num_threads() == threads + 1
    finally:
        torch.set_num_threads(threads)


def test_a_reply_is_one_report_that_carries_a_small_update(make_consortium):
    # Flower sends each record, Array and chunk as an object of its own, one request per hop: the
    # facts a reply reports travel in one record, and an update under 1 MiB travels in it too.
    consortium = make_consortium(rounds=1)

    train = ask(consortium, wire.TRAIN)
    evaluate = ask(consortium, wire.EVALUATE)

    assert set(train.content) == {wire.REPORT}
    report = train.content.config_records[wire.REPORT]
    assert 0 < len(report[wire.UPDATE]) <= wire.INLINE_MAX_BYTES
    assert report["hospital"] == consortium.hospitals[0].hospital
    assert report[wire.TRAIN_SECTION + "steps"] > 0
    assert 0 < report[wire.TRAIN_SECTION + "epsilon"] <= consortium.protocol.privacy.target_epsilon
    assert set(evaluate.content) == {wire.REPORT}
    evaluation = evaluate.content.config_records[wire.REPORT]
    assert evaluation[wire.EVAL_SECTION + "rows_rounded"] > 0
    assert 0 <= evaluation[wire.EVAL_SECTION + "roc_auc"] <= 1


def test_a_larger_update_travels_as_a_record_of_its_own(make_consortium, monkeypatch):
    monkeypatch.setattr(wire, "INLINE_MAX_BYTES", 0)
    consortium = make_consortium(rounds=1)

    train = ask(consortium, wire.TRAIN)

    assert set(train.content) == {wire.UPDATE, wire.REPORT}
    assert wire.UPDATE not in train.content.config_records[wire.REPORT]
    assert len(train.content.array_records[wire.UPDATE][wire.BLOB].data) > 0


def test_a_global_state_that_is_not_bytes_is_refused(make_consortium):
    consortium = make_consortium(rounds=1)

    reply = ask(consortium, wire.TRAIN, round_config={wire.GLOBAL_STATE: "not a ciphertext"})

    refusal = reply.content.config_records[wire.REFUSAL]
    assert refusal["code"] == "invalid-request"
    assert refusal["reason"] == "the round's global state: global is str, not bytes"


def test_a_global_state_record_without_its_blob_is_refused_not_taken_for_round_one(
    make_consortium,
):
    consortium = make_consortium(rounds=1)
    unnamed = Array(dtype="bytes", shape=(1,), stype="raw", data=b"x")

    reply = ask(consortium, wire.TRAIN, records={wire.GLOBAL_STATE: ArrayRecord({"x": unnamed})})

    refusal = reply.content.config_records[wire.REFUSAL]
    assert refusal["code"] == "invalid-request"
    assert refusal["reason"] == "the round's global state: the global record holds no 'bytes' array"
