"""What a node reports to the portal: its ledger mirror and its readiness per study."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from demo.setup import DEMO_CONSENT_WAIVER, STUDY_ID
from hospitals.keys import study_key_path
from hospitals.ledger import PrivacyLedger
from hospitals.node import TOKEN_VARIABLE
from hospitals.participation import prepare, published_rows, train_round
from hospitals.policy import load_policy
from hospitals.portal_client import PortalClient
from hospitals.protocol import StudyProtocol
from hospitals.reporting import ledger_report, readiness_report, report_to_portal
from tests.hospitals.fake_portal import TOKEN, FakePortal, running
from tests.hospitals.test_consent_rounds import consented_node, granting, patient_ids
from tests.hospitals.test_participation import node_of, request


def test_the_ledger_report_mirrors_the_ledger_exactly(make_consortium):
    consortium = make_consortium(rounds=3)
    node = node_of(consortium)
    train_round(node, request(consortium, 1, run_id="11"))
    train_round(node, request(consortium, 2, run_id="11"))
    train_round(node, request(consortium, 1, run_id="12"))
    policy = load_policy(node.policy_path)

    (dataset,) = ledger_report(node, policy)["datasets"]

    entries = PrivacyLedger(node.ledger_path).entries(dataset_id=node.dataset_id)
    assert dataset["dataset_id"] == node.dataset_id
    assert dataset["max_lifetime_epsilon"] == policy.max_lifetime_epsilon == 10.0
    assert (dataset["delta"], dataset["accountant"], dataset["min_cohort_size"]) == (
        1e-5,
        "rdp",
        50,
    )
    assert dataset["entries"] == [
        {
            "study_id": entry.study_id,
            "run_id": entry.run_id,
            "round": entry.round_number,
            "sample_rate": entry.step.sample_rate,
            "noise_multiplier": entry.step.noise_multiplier,
            "steps": entry.step.steps,
            "delta": entry.step.delta,
            "accountant": entry.step.accountant.value,
            "recorded_at": entry.recorded_at.isoformat(),
        }
        for entry in entries
    ]
    assert [(e["run_id"], e["round"]) for e in dataset["entries"]] == [
        ("11", 1),
        ("11", 2),
        ("12", 1),
    ]
    json.dumps(dataset, allow_nan=False)  # what is posted is plain JSON


def test_readiness_counts_the_rows_a_round_then_uses(make_consortium, tmp_path):
    consortium = make_consortium(rounds=1)
    node = consented_node(consortium, tmp_path / "node")
    source = granting(node, patient_ids(node.data_path)[:170])

    report = readiness_report(node, consortium.protocol, consent=source)

    prepared = prepare(node, request(consortium, 1), consent=source)
    assert report == {
        "dataset_id": node.dataset_id,
        "protocol_sha256": consortium.protocol.approval_sha256,
        "consent_sha256": source.fixed.sha256,
        "consent_waiver": None,
        "rows_train": len(prepared.train),
        "rows_holdout": len(prepared.holdout),
        "blockers": [],
    }
    assert report["rows_train"] + report["rows_holdout"] == 170
    outcome = train_round(node, request(consortium, 1), consent=source)
    assert outcome.rows_rounded == published_rows(report["rows_train"])
    assert outcome.consent == report["consent_sha256"]


def test_a_waived_node_reports_its_waiver(make_consortium):
    consortium = make_consortium(rounds=1)

    report = readiness_report(node_of(consortium), consortium.protocol)

    assert report["consent_waiver"] == DEMO_CONSENT_WAIVER
    assert report["consent_sha256"] is None
    assert report["rows_train"] + report["rows_holdout"] == 226
    assert report["blockers"] == []


def test_readiness_lists_every_blocker_without_needing_the_key(make_consortium, tmp_path):
    consortium = make_consortium(rounds=1)
    node = consented_node(consortium, tmp_path / "node", secret=False)
    study_key_path(node.keys_dir, STUDY_ID).unlink()
    node.policy_path.write_text('allowed_studies = ["another-study"]\n')

    report = readiness_report(node, consortium.protocol)

    assert [b["code"] for b in report["blockers"]] == [
        "study-not-allowed",
        "missing-key",
        "consent-unavailable",
    ]
    assert (report["rows_train"], report["rows_holdout"]) == (0, 0)
    assert report["consent_sha256"] is None and report["consent_waiver"] is None


def test_readiness_reports_a_small_cohort_and_a_foreign_key(make_consortium, tmp_path):
    other = make_consortium(rounds=1)  # a consortium with another key
    consortium = make_consortium(rounds=1)
    node = consented_node(consortium, tmp_path / "node")
    source = granting(node, patient_ids(node.data_path)[:30])

    report = readiness_report(node, other.protocol, consent=source)

    assert [b["code"] for b in report["blockers"]] == ["key-mismatch", "cohort-too-small"]
    assert "30 consented rows" in report["blockers"][1]["reason"]
    assert report["rows_train"] + report["rows_holdout"] == 30  # how far off the cohort is


def test_a_draft_protocol_is_assessed_before_its_key_exists(make_consortium, tmp_path):
    consortium = make_consortium(rounds=1)
    draft = {k: v for k, v in consortium.protocol.document.items() if k != "encryption"}
    protocol = StudyProtocol.from_dict(draft, require_encryption=False)
    node = consented_node(consortium, tmp_path / "node")
    source = granting(node, patient_ids(node.data_path))

    assert readiness_report(node, protocol, consent=source)["blockers"] == []
    study_key_path(node.keys_dir, STUDY_ID).unlink()
    assert [b["code"] for b in readiness_report(node, protocol, consent=source)["blockers"]] == [
        "missing-key"
    ]


def test_report_to_portal_sends_heartbeat_ledger_and_readiness(
    make_consortium, tmp_path, monkeypatch
):
    consortium = make_consortium(rounds=1)
    monkeypatch.setenv(TOKEN_VARIABLE, TOKEN)
    listed = {
        "slug": STUDY_ID,
        "state": "approved",
        "protocol": dict(consortium.protocol.document),
        "protocol_sha256": consortium.protocol.approval_sha256,
        "he_context_fingerprint": consortium.key.fingerprint,
    }
    with running(FakePortal(institution="hospital-a", protocols=[listed])) as portal:
        node = consented_node(consortium, tmp_path / "node", portal_url=portal.url)
        train_round(
            node, request(consortium, 1), consent=granting(node, patient_ids(node.data_path))
        )

        report = report_to_portal(node, PortalClient.for_node(node))

    assert portal.heartbeats == [{"supernode": "online"}]
    assert portal.ledger_reports == [ledger_report(node, load_policy(node.policy_path))]
    assert len(portal.ledger_reports[0]["datasets"][0]["entries"]) == 1
    # Nobody consented at this portal yet: the node says so instead of failing.
    assert [b["code"] for b in portal.readiness[STUDY_ID]["blockers"]] == ["cohort-too-small"]
    assert portal.readiness[STUDY_ID]["rows_train"] == 0
    assert portal.readiness[STUDY_ID]["consent_sha256"] == portal.snapshot(STUDY_ID)["sha256"]
    assert report.ok and report.studies[0].readiness == portal.readiness[STUDY_ID]
    assert report.ledger is not None
    assert report.ledger["datasets"][0]["dataset_id"] == node.dataset_id


def test_a_failing_part_of_the_report_does_not_stop_the_others(
    make_consortium, tmp_path, monkeypatch
):
    consortium = make_consortium(rounds=1)
    monkeypatch.setenv(TOKEN_VARIABLE, TOKEN)
    listed = {
        "slug": STUDY_ID,
        "protocol": dict(consortium.protocol.document),
        "protocol_sha256": consortium.protocol.approval_sha256,
    }
    broken = {"slug": "broken", "protocol": {"study_id": "broken"}, "protocol_sha256": "0" * 64}
    portal = FakePortal(institution="hospital-a", protocols=[broken, listed])
    portal.failures["/api/node/ledger/"] = (
        503,
        {"error": {"code": "unavailable", "message": "try later", "fields": {}}},
    )
    with running(portal):
        node = replace(node_of(consortium), portal_url=portal.url)

        report = report_to_portal(node, PortalClient.for_node(node))

    assert not report.ok
    assert report.ledger is None and "503 unavailable: try later" in (report.ledger_error or "")
    assert report.studies[0].study == "broken" and report.studies[0].error
    assert report.studies[1].readiness == portal.readiness[STUDY_ID]
    assert portal.readiness[STUDY_ID]["consent_waiver"] == DEMO_CONSENT_WAIVER


@pytest.mark.parametrize("token_file", [True, False])
def test_the_node_token_comes_from_the_environment_or_the_state_dir(
    make_consortium, tmp_path, monkeypatch, token_file
):
    consortium = make_consortium(rounds=1)
    monkeypatch.delenv(TOKEN_VARIABLE, raising=False)
    with running(FakePortal(institution="hospital-a")) as portal:
        node = consented_node(consortium, tmp_path / "node", portal_url=portal.url)
        if token_file:
            node.portal_token_path.write_text(TOKEN + "\n")
        else:
            monkeypatch.setenv(TOKEN_VARIABLE, TOKEN)

        report_to_portal(node, PortalClient.for_node(node))

    assert portal.heartbeats == [{"supernode": "online"}]
