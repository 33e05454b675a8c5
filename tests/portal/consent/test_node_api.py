"""The consent node API: forms, records (all or nothing, idempotent) and snapshots."""

from __future__ import annotations

import hashlib
import json

import pytest

from consent.apis import RECORDS_BODY_MAX_BYTES
from consent.models import ConsentBatch, ConsentRecord, ConsentSnapshot
from consent.services import consent_settings_update
from core.models import AuditEvent
from hospitals.protocol import canonical_json
from studies.models import Enrollment
from tests.portal.consent.conftest import Registry, node_client, publish, record
from tests.portal.factories import EnrollmentFactory, InstitutionFactory, StudyFactory, pseudonym

pytestmark = pytest.mark.django_db

P1, P2, P3 = pseudonym(1), pseudonym(2), pseudonym(3)


def post_records(registry: Registry, records, client=None, slug=None):
    return (client or registry.node_a).post(
        registry.records_url(slug), {"records": records}, format="json"
    )


def snapshot(registry: Registry, client=None) -> dict:
    response = (client or registry.node_a).get(registry.snapshot_url())
    assert response.status_code == 200, response.content
    return response.json()


def error_of(response, status: int) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "fields"}
    return body["error"]


def expected_sha256(study: str, institution: str, required: int | None, granted: list[str]) -> str:
    document = {
        "study": study,
        "institution": institution,
        "required_form_version": required,
        "granted": granted,
    }
    return hashlib.sha256(canonical_json(document).encode()).hexdigest()


def test_forms_lists_versions_and_the_rule(registry):
    publish(registry.study, "I agree, v2.")
    response = registry.node_a.get(registry.forms_url())
    assert response.status_code == 200
    assert response.json() == {
        "study": registry.study.slug,
        "current_version": 2,
        "requires_current": False,
        "versions": [1, 2],
    }


def test_forms_of_a_study_without_forms():
    study = StudyFactory(state="recruiting")
    hospital = InstitutionFactory()
    EnrollmentFactory(study=study, institution=hospital)
    response = node_client(hospital).get(f"/api/node/studies/{study.slug}/consent/forms/")
    assert response.json() == {
        "study": study.slug,
        "current_version": None,
        "requires_current": False,
        "versions": [],
    }


def test_a_post_records_the_batch_and_a_repost_changes_nothing(registry):
    records = [record(P1), record(P2, "withdrawn", "2026-01-03", None)]
    response = post_records(registry, records)
    assert response.status_code == 201, response.content
    first = response.json()
    assert first["created"] == 2 and first["unchanged"] == 0
    assert ConsentRecord.objects.count() == 2
    batch = ConsentBatch.objects.get(pk=first["batch"])
    assert (batch.granted, batch.withdrawn, batch.source) == (1, 1, "node-import")
    assert batch.actor_label.startswith("node:hospital-a/")

    again = post_records(registry, records)
    assert again.status_code == 201
    assert again.json()["created"] == 0 and again.json()["unchanged"] == 2
    assert ConsentRecord.objects.count() == 2, "an identical re-post adds no record"


def test_equal_instants_in_other_notations_are_unchanged(registry):
    post_records(registry, [record(P1, decided_at="2026-01-02T09:00:00Z")])
    again = post_records(registry, [record(P1, decided_at="2026-01-02T10:00:00+01:00")])
    assert again.json()["unchanged"] == 1
    date_only = post_records(registry, [record(P2, decided_at="2026-01-02")])
    assert date_only.json()["created"] == 1
    assert ConsentRecord.objects.get(pseudonym=P2).decided_at.isoformat() == (
        "2026-01-02T00:00:00+00:00"
    )
    assert (
        post_records(registry, [record(P2, decided_at="2026-01-02T00:00:00")]).json()["unchanged"]
        == 1
    ), "a date is midnight UTC, and so is a datetime without offset"


def test_history_is_kept_and_the_latest_record_wins(registry):
    post_records(registry, [record(P1, decided_at="2026-01-01")])
    assert snapshot(registry)["granted"] == [P1]
    post_records(registry, [record(P1, "withdrawn", "2026-02-01", None)])
    assert snapshot(registry)["granted"] == []
    post_records(registry, [record(P1, decided_at="2026-03-01")])
    assert snapshot(registry)["granted"] == [P1]
    history = list(ConsentRecord.objects.filter(pseudonym=P1).values_list("status", flat=True))
    assert history == ["granted", "withdrawn", "granted"]


def test_an_older_decision_sent_later_does_not_override_a_newer_one(registry):
    post_records(registry, [record(P1, "withdrawn", "2026-02-01", None)])
    post_records(registry, [record(P1, decided_at="2026-01-01")])
    assert ConsentRecord.objects.filter(pseudonym=P1).count() == 2
    assert snapshot(registry)["granted"] == []


def test_same_instant_falls_back_to_insertion_order(registry):
    post_records(registry, [record(P1, decided_at="2026-01-01")])
    post_records(registry, [record(P1, "withdrawn", "2026-01-01", None)])
    assert snapshot(registry)["granted"] == []


def test_snapshot_hash_is_recomputable_and_rows_are_sorted(registry):
    post_records(registry, [record(P3), record(P1), record(P2, "withdrawn", form_version=None)])
    body = snapshot(registry)
    assert set(body) == {
        "study",
        "institution",
        "required_form_version",
        "granted",
        "sha256",
        "taken_at",
    }
    assert body["granted"] == sorted([P1, P3])
    assert body["institution"] == "hospital-a"
    assert body["required_form_version"] is None
    assert body["sha256"] == expected_sha256(
        registry.study.slug, "hospital-a", None, body["granted"]
    )


def test_each_hospital_sees_only_its_own_pseudonyms(registry):
    post_records(registry, [record(P1)])
    post_records(registry, [record(P2)], client=registry.node_b)
    assert snapshot(registry)["granted"] == [P1]
    assert snapshot(registry, registry.node_b)["granted"] == [P2]


def test_requiring_the_current_form_drops_older_versions_and_changes_the_hash(registry):
    publish(registry.study, "I agree, v2.")
    post_records(registry, [record(P1, form_version=1), record(P2, form_version=2)])
    before = snapshot(registry)
    assert before["granted"] == sorted([P1, P2])

    consent_settings_update(
        study=registry.study, requires_current_form=True, actor=registry.researcher
    )
    after = snapshot(registry)
    assert after["granted"] == [P2]
    assert after["required_form_version"] == 2
    assert after["sha256"] != before["sha256"]
    assert after["sha256"] == expected_sha256(registry.study.slug, "hospital-a", 2, [P2])

    publish(registry.study, "I agree, v3.")
    assert snapshot(registry)["granted"] == [], "a new version needs new consent"


def test_each_distinct_snapshot_is_kept_with_its_serving_times(registry):
    post_records(registry, [record(P1)])
    first = snapshot(registry)
    assert snapshot(registry)["sha256"] == first["sha256"]
    post_records(registry, [record(P2)])
    second = snapshot(registry)
    rows = {row.sha256: row for row in ConsentSnapshot.objects.all()}
    assert set(rows) == {first["sha256"], second["sha256"]}
    kept = rows[first["sha256"]]
    assert (kept.granted_count, kept.served_count) == (1, 2)
    assert kept.first_served_at < kept.last_served_at
    assert rows[second["sha256"]].granted_count == 2
    served = AuditEvent.objects.filter(action="consent.snapshot_served")
    assert served.count() == 2, "one audit event per distinct snapshot, not per pull"


@pytest.mark.parametrize(
    ("bad", "field", "says"),
    [
        (record("ABC"), "records[1].pseudonym", "64 lowercase hexadecimal"),
        (record(P2.upper()), "records[1].pseudonym", "64 lowercase hexadecimal"),
        (record(P2, status="maybe"), "records[1].status", "'granted' or 'withdrawn'"),
        (record(P2, decided_at="yesterday"), "records[1].decided_at", "not an ISO 8601"),
        (record(P2, decided_at="2999-01-01"), "records[1].decided_at", "in the future"),
        (record(P2, form_version=None), "records[1].form_version", "required when status"),
        (record(P2, form_version=4), "records[1].form_version", "unknown form version 4"),
        (record(P2, form_version="1"), "records[1].form_version", "integer"),
        ({**record(P2), "patient_id": "x"}, "records[1].patient_id", "unknown field"),
        ("not an object", "records[1]", "must be an object"),
    ],
)
def test_one_invalid_record_refuses_the_whole_payload(registry, bad, field, says):
    response = post_records(registry, [record(P1), bad, record(P3)])
    error = error_of(response, 400)
    assert error["code"] == "invalid"
    assert field in error["fields"], error
    assert says in error["fields"][field][0]
    assert "nothing was recorded" in error["message"]
    assert ConsentRecord.objects.count() == 0
    assert ConsentBatch.objects.count() == 0
    assert not AuditEvent.objects.filter(action="consent.records_imported").exists()


def test_unknown_version_names_the_study_versions(registry):
    publish(registry.study, "v2")
    error = error_of(post_records(registry, [record(P1, form_version=4)]), 400)
    assert error["fields"]["records[0].form_version"] == ["unknown form version 4; study has 1, 2"]


def test_a_withdrawal_may_name_a_known_version_but_not_an_unknown_one(registry):
    assert post_records(registry, [record(P1, "withdrawn", form_version=1)]).status_code == 201
    error = error_of(post_records(registry, [record(P2, "withdrawn", form_version=9)]), 400)
    assert "records[0].form_version" in error["fields"]


def test_duplicate_pseudonyms_in_one_payload_are_refused(registry):
    response = post_records(registry, [record(P1), record(P2), record(P1, "withdrawn", None)])
    error = error_of(response, 400)
    assert error["fields"]["records[2].pseudonym"] == [
        "duplicate of records[0]; send one record per pseudonym per request"
    ]
    assert ConsentRecord.objects.count() == 0


def test_many_errors_are_listed_up_to_a_limit(registry):
    response = post_records(registry, [record(f"{i:x}") for i in range(120)])
    error = error_of(response, 400)
    assert len(error["fields"]) == 50
    assert error["message"].startswith("120 of 120 consent records are invalid")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "records"),
        ({"records": {"a": 1}}, "records"),
        ({"records": [], "study": "x"}, "study"),
        ([], "records"),
    ],
)
def test_the_body_shape_is_checked(registry, body, field):
    response = registry.node_a.post(registry.records_url(), body, format="json")
    assert field in error_of(response, 400)["fields"]


def test_an_empty_list_is_an_empty_batch(registry):
    response = post_records(registry, [])
    assert response.status_code == 201
    assert response.json()["created"] == 0


def test_a_body_that_is_not_json_is_a_415(registry):
    response = registry.node_a.post(
        registry.records_url(), data="records=1", content_type="text/plain"
    )
    assert error_of(response, 415)["code"] == "unsupported_media_type"


def test_malformed_json_is_a_parse_error(registry):
    response = registry.node_a.post(
        registry.records_url(), data="{nope", content_type="application/json"
    )
    assert error_of(response, 400)["code"] == "parse_error"


def test_an_oversized_body_is_a_413_before_it_is_read(registry):
    response = registry.node_a.generic(
        "POST",
        registry.records_url(),
        data=b"{}",
        content_type="application/json",
        CONTENT_LENGTH=str(RECORDS_BODY_MAX_BYTES + 1),
    )
    error = error_of(response, 413)
    assert error["code"] == "too_large"
    assert str(RECORDS_BODY_MAX_BYTES) in error["message"]


def test_a_body_larger_than_djangos_default_limit_is_accepted(registry):
    """Consent uploads may exceed DATA_UPLOAD_MAX_MEMORY_SIZE (5 MiB); the endpoint allows 32."""
    records = [record(pseudonym(i)) for i in range(40_000)]
    body = json.dumps({"records": records}, indent=4)
    assert len(body) > 5 * 1024 * 1024
    response = registry.node_a.generic(
        "POST", registry.records_url(), data=body, content_type="application/json"
    )
    assert response.status_code == 201, response.content[:500]
    assert response.json()["created"] == 40_000
    assert len(snapshot(registry)["granted"]) == 40_000
    again = registry.node_a.generic(
        "POST", registry.records_url(), data=body, content_type="application/json"
    )
    assert again.json()["unchanged"] == 40_000


def test_a_hospital_not_enrolled_in_the_study_gets_a_clear_404(registry):
    outsider = node_client(InstitutionFactory(slug="hospital-c"))
    for response in (
        post_records(registry, [record(P1)], client=outsider),
        outsider.get(registry.snapshot_url()),
        outsider.get(registry.forms_url()),
    ):
        error = error_of(response, 404)
        assert "hospital-c is enrolled in" in error["message"]
    assert ConsentRecord.objects.count() == 0


def test_an_unknown_study_is_a_404(registry):
    error = error_of(post_records(registry, [record(P1)], slug="no-such-study"), 404)
    assert "no-such-study" in error["message"]


def test_a_hospital_that_declined_is_refused(registry):
    Enrollment.objects.filter(institution=registry.hospital_b).update(
        state=Enrollment.State.DECLINED
    )
    error = error_of(post_records(registry, [record(P1)], client=registry.node_b), 403)
    assert "declined" in error["message"]


def test_consent_endpoints_need_a_node_token(registry, client):
    assert client.get(registry.snapshot_url()).status_code == 401
    client.force_login(registry.steward_a)
    assert client.get(registry.snapshot_url()).status_code == 401, "a session is not a node"


def test_an_import_is_audited_with_counts_only(registry):
    post_records(registry, [record(P1), record(P2)])
    event = AuditEvent.objects.get(action="consent.records_imported")
    assert event.data["created"] == 2
    assert event.data["institution"] == "hospital-a"
    assert P1 not in json.dumps(event.data)
    assert event.actor_label.startswith("node:hospital-a/")
