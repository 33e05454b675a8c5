"""A real Flower deployment: a SuperLink and three SuperNodes as separate processes on loopback."""

from __future__ import annotations

import numpy as np
import pytest

from aggregator.rounds import MESSAGE_TTL_MARGIN_S
from demo.setup import Consortium
from federation.deployment import LocalFederation
from federation.runner import StudyRequest, run_and_follow
from hospitals.ledger import PrivacyLedger
from hospitals.participation import released_model_path
from hospitals.protocol import canonical_json
from tests.federation.fleet_proxy import CuttingFleetProxy

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def study_request(consortium: Consortium, tmp_path) -> StudyRequest:
    return StudyRequest(
        protocol_json=canonical_json(consortium.protocol.document),
        aggregator_context=consortium.key.aggregator_context().to_bytes(),
        results_path=tmp_path / "results.jsonl",
        join_timeout_s=60,
    )


def test_six_rounds_with_dp_and_he_survive_a_hospital_killed_mid_run(make_consortium, tmp_path):
    consortium = make_consortium(rounds=6, round_timeout_s=45)
    with LocalFederation(
        workdir=tmp_path / "federation", hospitals=consortium.hospitals
    ) as federation:

        def kill_c_after_round_one(event: dict) -> None:
            if event["event"] == "round" and event["round"] == 1:
                federation.supernodes["hospital-c"].kill()

        outcome = run_and_follow(
            federation.control,
            study_request(consortium, tmp_path),
            on_event=kill_c_after_round_one,
            timeout_s=480,
        )
        processes = [federation.superlink, *federation.supernodes.values()]

    assert not any(process.alive() for process in processes)
    assert outcome.status.status == "finished:completed", outcome.failure_reason
    first, *_, last = outcome.rounds
    # Round 1 is reported once round 2's replies brought its evaluation, and the follower reads
    # it within a poll (0.5 s): the kill races the next round or two, whose messages reach a
    # SuperNode within milliseconds, so hospital-c may have trained in them. It is gone by the
    # last round.
    assert sorted(first["participants"]) == ["hospital-a", "hospital-b", "hospital-c"]
    assert sorted(last["participants"]) == ["hospital-a", "hospital-b"]
    assert last["dropped"]["hospital-c"].startswith(
        (
            "no reply within 45 s",
            "disconnected from the SuperLink",
            "failed: Error: Node Unavailable",  # the SuperLink's, once c missed its heartbeats
        )
    )
    assert last["metrics"]["roc_auc"] > 0.8
    assert all(
        h["bytes_up"] > 0 and 0 < h["epsilon"] <= 3.003
        for r in outcome.rounds
        for h in r["hospitals"]
    )

    run_id = str(outcome.run_id)
    node = consortium.nodes
    recorded = {
        name: len(PrivacyLedger(n.ledger_path).entries(dataset_id=n.dataset_id, run_id=run_id))
        for name, n in node.items()
    }
    # A node charges before it trains, so that a reply lost afterwards still counts: hospital-c
    # charged each round it contributed to, and at most the one it was killed in.
    contributed = sum("hospital-c" in r["participants"] for r in outcome.rounds)
    assert recorded["hospital-a"] == recorded["hospital-b"] == 6
    assert recorded["hospital-c"] in (contributed, contributed + 1)
    assert contributed >= 2
    study = consortium.protocol.study_id
    model_a = np.load(released_model_path(node["hospital-a"], study_id=study, run_id=run_id))[
        "parameters"
    ]
    model_b = np.load(released_model_path(node["hospital-b"], study_id=study, run_id=run_id))[
        "parameters"
    ]
    np.testing.assert_array_equal(model_a, model_b)


def test_a_hospital_killed_inside_its_upload_costs_the_others_nothing_past_the_deadline(
    make_consortium, tmp_path, monkeypatch
):
    round_timeout_s = 20
    consortium = make_consortium(rounds=2, round_timeout_s=round_timeout_s)
    federation = LocalFederation(workdir=tmp_path / "federation", hospitals=consortium.hospitals)
    # hospital-c's SuperNode dies as it starts to push its round-1 reply's objects: the SuperLink
    # already lists the reply, whose objects never come.
    with CuttingFleetProxy(
        superlink=federation.address,
        cut_at="/v1/fleet/push-object",
        on_cut=lambda: federation.supernodes["hospital-c"].kill(),
    ) as proxy:
        monkeypatch.setattr(
            federation,
            "superlink_address_for",
            lambda spec: proxy.address if spec.hospital == "hospital-c" else federation.address,
        )
        with federation:
            outcome = run_and_follow(
                federation.control, study_request(consortium, tmp_path), timeout_s=300
            )

    assert proxy.cut.is_set() and "/v1/fleet/push-messages" in proxy.forwarded
    assert outcome.status.status == "finished:completed", outcome.failure_reason
    first, second = outcome.rounds
    survivors = ["hospital-a", "hospital-b"]
    assert sorted(first["participants"]) == sorted(second["participants"]) == survivors
    # c never named itself in a reply: Flower's error stands for it under its node id.
    (reason,) = first["dropped"].values()
    assert reason.startswith("failed: Reply message objects are unavailable"), reason
    # Round 1 waited for c's objects until its deadline, not until the SuperLink expired them
    # (182 s, measured without aggregator.rounds.ObjectPullDeadline).
    assert round_timeout_s <= first["seconds"] < round_timeout_s + MESSAGE_TTL_MARGIN_S
    assert second["metrics"]["roc_auc"] > 0.8


def test_flower_reports_a_failed_run_with_the_aggregators_reason(make_consortium, tmp_path):
    consortium = make_consortium(rounds=1, min_hospitals=3, round_timeout_s=45)
    consortium.hospitals[0].policy_path.write_text('allowed_studies = ["another-study"]\n')
    with LocalFederation(
        workdir=tmp_path / "federation", hospitals=consortium.hospitals
    ) as federation:
        outcome = run_and_follow(
            federation.control, study_request(consortium, tmp_path), timeout_s=300
        )

    assert outcome.status.status == "finished:failed"
    assert "round 1 needs at least 3 hospitals but 2 contributed" in outcome.failure_reason
    assert "node policy does not allow study" in outcome.failure_reason
