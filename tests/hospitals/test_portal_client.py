"""The node's portal client: its calls, its errors, and the transcript of what left the node."""

from __future__ import annotations

import json
import stat

import pytest

from demo.setup import STUDY_ID
from hospitals.consent import import_consent_export, withdraw_consent
from hospitals.node import TOKEN_VARIABLE
from hospitals.participation import evaluate_round, train_round
from hospitals.portal_client import PortalClient, PortalError
from hospitals.reporting import report_to_portal
from tests.hospitals.fake_portal import TOKEN, FakePortal, running
from tests.hospitals.test_consent_rounds import consented_node, patient_ids
from tests.hospitals.test_participation import request


def transcript_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_request_is_in_the_transcript_before_it_is_sent(tmp_path):
    transcript = tmp_path / "outbound.jsonl"
    with running(FakePortal(institution="hospital-a")) as portal:
        client = PortalClient(base_url=portal.url, token=TOKEN, transcript=transcript)
        client.heartbeat({"supernode": "online"})
        client.consent_forms(study_slug="s")
        client.record_consent(
            study_slug="s",
            records=[
                {
                    "pseudonym": "a" * 64,
                    "status": "granted",
                    "decided_at": "2025-01-06",
                    "form_version": 1,
                }
            ],
        )
        client.consent_snapshot(study_slug="s")
        client.report_ledger({"datasets": []})
        client.report_readiness(study_slug="s", report={"rows_train": 1})
        client.approved_protocols()
        refused = PortalClient(base_url=portal.url, token="wrong", transcript=transcript)
        with pytest.raises(PortalError, match="401 not-authenticated"):
            refused.heartbeat({"supernode": "online"})
    unreachable = PortalClient(base_url="http://127.0.0.1:9", token=TOKEN, transcript=transcript)
    with pytest.raises(PortalError, match="unreachable"):
        unreachable.consent_snapshot(study_slug="s")

    lines = transcript_lines(transcript)
    assert [(line["method"], line["path"], line["body"]) for line in lines[:-2]] == [
        request for request in portal.requests
    ]
    assert [line["path"] for line in lines[-2:]] == [
        "/api/node/heartbeat/",
        "/api/node/studies/s/consent/snapshot/",
    ]
    assert all(line["time"] and line["url"].endswith(line["path"]) for line in lines)
    assert stat.S_IMODE(transcript.stat().st_mode) == 0o600
    assert TOKEN not in transcript.read_text()


def test_the_portals_field_errors_are_kept(tmp_path):
    portal = FakePortal(institution="hospital-a")
    with running(portal):
        client = PortalClient(base_url=portal.url, token=TOKEN)
        with pytest.raises(PortalError) as raised:
            client.record_consent(
                study_slug="s",
                records=[
                    {
                        "pseudonym": "a" * 64,
                        "status": "granted",
                        "decided_at": "2025-01-06",
                        "form_version": 7,
                    }
                ],
            )

    assert raised.value.status == 400
    assert raised.value.fields == {"records[0].form_version": ["unknown form version 7"]}
    assert "records[0].form_version" in str(raised.value)


def test_no_patient_id_ever_leaves_the_node(make_consortium, tmp_path, monkeypatch):
    consortium = make_consortium(rounds=2)
    monkeypatch.setenv(TOKEN_VARIABLE, TOKEN)
    listed = {
        "slug": STUDY_ID,
        "protocol": dict(consortium.protocol.document),
        "protocol_sha256": consortium.protocol.approval_sha256,
    }
    with running(FakePortal(institution="hospital-a", protocols=[listed])) as portal:
        node = consented_node(consortium, tmp_path / "node", portal_url=portal.url, secret=False)
        ids = patient_ids(node.data_path)
        export = tmp_path / "consent.csv"
        export.write_text(
            "patient_id,status,date,form_version\n"
            + "".join(f"{pid},granted,2025-02-01,1\n" for pid in ids)
        )
        client = PortalClient.for_node(node)
        import_consent_export(node, study=STUDY_ID, path=export, portal=client)
        train_round(node, request(consortium, 1))
        withdraw_consent(node, study=STUDY_ID, patient_id=ids[0], portal=client)
        evaluate_round(node, request(consortium, 1))
        report_to_portal(node, client)

    sent = node.outbound_log_path.read_text()
    assert len(transcript_lines(node.outbound_log_path)) == len(portal.requests)
    assert not [pid for pid in ids if pid in sent]
    assert len(portal.records[STUDY_ID]) == len(ids) + 1
