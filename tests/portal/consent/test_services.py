"""Consent services: publishing forms, the consent rule, steward withdrawals, suppression."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from django.utils import timezone

from consent.models import ConsentBatch, ConsentForm, ConsentRecord, StudyConsentSettings
from consent.selectors import consent_counts, consent_rules, suppressed
from consent.services import (
    consent_form_publish,
    consent_records_record,
    consent_settings_update,
    consent_snapshot,
    consent_withdraw_by_steward,
)
from core.errors import ConflictError, NotAllowedError, NotFoundError, ValidationError
from core.models import AuditEvent
from studies.models import Study
from tests.portal.consent.conftest import publish, record
from tests.portal.factories import ResearcherFactory, pseudonym

pytestmark = pytest.mark.django_db

P1, P2 = pseudonym(1), pseudonym(2)


def imported(registry, records, institution=None):
    return consent_records_record(
        study=registry.study,
        institution=institution or registry.hospital_a,
        records=records,
        actor_label="node:test",
    )


def granted(registry, institution=None) -> list[str]:
    return consent_snapshot(
        study=registry.study,
        institution=institution or registry.hospital_a,
        actor_label="node:test",
    ).granted


@pytest.mark.parametrize(
    ("count", "shown"), [(0, "<10"), (1, "<10"), (9, "<10"), (10, "10"), (1234, "1234")]
)
def test_counts_below_ten_are_suppressed(count, shown):
    assert suppressed(count) == shown


def test_versions_are_numbered_in_order_and_hashed(registry):
    second = publish(registry.study, "  Second text  ")
    assert second.version == 2
    assert second.text == "Second text"
    assert second.text_sha256 == hashlib.sha256(b"Second text").hexdigest()
    assert list(ConsentForm.objects.values_list("version", flat=True)) == [1, 2]
    event = AuditEvent.objects.filter(action="consent.form_published").latest("id")
    assert event.data["version"] == 2
    assert event.actor_id == registry.researcher.pk


def test_only_the_owner_publishes(registry):
    with pytest.raises(NotAllowedError):
        consent_form_publish(study=registry.study, title="t", text="x", actor=ResearcherFactory())
    with pytest.raises(NotAllowedError):
        consent_form_publish(study=registry.study, title="t", text="x", actor=registry.steward_a)
    assert ConsentForm.objects.count() == 1


def test_a_form_needs_a_title_and_text(registry):
    with pytest.raises(ValidationError) as raised:
        consent_form_publish(study=registry.study, title=" ", text="", actor=registry.researcher)
    assert set(raised.value.fields) == {"title", "text"}


def test_no_forms_are_published_once_a_study_is_over(registry):
    Study.objects.filter(pk=registry.study.pk).update(state=Study.State.COMPLETED)
    with pytest.raises(ConflictError):
        publish(registry.study, "late")


def test_the_rule_is_set_by_the_owner_and_audited_once(registry):
    with pytest.raises(NotAllowedError):
        consent_settings_update(
            study=registry.study, requires_current_form=True, actor=registry.steward_a
        )
    consent_settings_update(
        study=registry.study, requires_current_form=True, actor=registry.researcher
    )
    consent_settings_update(
        study=registry.study, requires_current_form=True, actor=registry.researcher
    )
    assert StudyConsentSettings.objects.get(study=registry.study).requires_current_form
    assert consent_rules(study=registry.study).required_form_version == 1
    assert AuditEvent.objects.filter(action="consent.settings_updated").count() == 1


def test_the_current_form_cannot_be_required_before_one_exists(registry):
    ConsentForm.objects.all().delete()
    with pytest.raises(ValidationError):
        consent_settings_update(
            study=registry.study, requires_current_form=True, actor=registry.researcher
        )


def test_a_steward_withdraws_a_patient_of_their_own_registry(registry):
    imported(registry, [record(P1), record(P2)])
    withdrawn = consent_withdraw_by_steward(
        study=registry.study,
        institution=registry.hospital_a,
        pseudonym=P1.upper(),
        steward=registry.steward_a,
        reason="patient called",
    )
    assert (withdrawn.status, withdrawn.source, withdrawn.form_version) == (
        "withdrawn",
        "steward",
        None,
    )
    assert granted(registry) == [P2]
    assert ConsentRecord.objects.filter(pseudonym=P1).count() == 2, "history is appended"
    batch = ConsentBatch.objects.get(source="steward")
    assert (batch.actor_label, batch.withdrawn) == (registry.steward_a.username, 1)
    event = AuditEvent.objects.get(action="consent.withdrawn_by_steward")
    assert event.actor_id == registry.steward_a.pk
    assert event.data["pseudonym"] == P1
    assert event.data["reason"] == "patient called"


def test_a_steward_cannot_withdraw_in_another_hospitals_registry(registry):
    imported(registry, [record(P1)])
    with pytest.raises(NotAllowedError):
        consent_withdraw_by_steward(
            study=registry.study,
            institution=registry.hospital_a,
            pseudonym=P1,
            steward=registry.steward_b,
        )
    assert granted(registry) == [P1]


def test_withdrawal_needs_a_known_pseudonym_in_that_registry(registry):
    imported(registry, [record(P2)], institution=registry.hospital_b)
    with pytest.raises(NotFoundError) as raised:
        consent_withdraw_by_steward(
            study=registry.study,
            institution=registry.hospital_a,
            pseudonym=P2,
            steward=registry.steward_a,
        )
    assert "Hospital A's consent registry" in raised.value.message
    with pytest.raises(ValidationError):
        consent_withdraw_by_steward(
            study=registry.study,
            institution=registry.hospital_a,
            pseudonym="patient-42",
            steward=registry.steward_a,
        )
    assert ConsentBatch.objects.filter(source="steward").count() == 0


def test_withdrawing_twice_is_a_conflict(registry):
    imported(registry, [record(P1, "withdrawn", form_version=None)])
    with pytest.raises(ConflictError):
        consent_withdraw_by_steward(
            study=registry.study,
            institution=registry.hospital_a,
            pseudonym=P1,
            steward=registry.steward_a,
        )


def test_a_later_node_grant_outranks_a_steward_withdrawal(registry):
    imported(registry, [record(P1, decided_at="2026-01-01")])
    consent_withdraw_by_steward(
        study=registry.study,
        institution=registry.hospital_a,
        pseudonym=P1,
        steward=registry.steward_a,
    )
    imported(registry, [record(P1, decided_at="2026-01-01")])
    assert granted(registry) == [], "re-sending the old grant does not undo the withdrawal"
    assert ConsentRecord.objects.filter(pseudonym=P1).count() == 2
    later = (timezone.now() + timedelta(minutes=5)).isoformat()
    imported(registry, [record(P1, decided_at=later)])
    assert granted(registry) == [P1], "the patient consented again after the withdrawal"


def test_counts_per_hospital_follow_current_consent(registry):
    imported(registry, [record(pseudonym(i)) for i in range(12)])
    imported(
        registry,
        [record(pseudonym(i), "withdrawn", "2026-02-01", None) for i in range(3)],
    )
    imported(registry, [record(pseudonym(100 + i)) for i in range(4)], registry.hospital_b)
    counts = {row.institution.slug: row.consented for row in consent_counts(study=registry.study)}
    assert counts == {"hospital-a": 9, "hospital-b": 4}
    assert [row.shown for row in consent_counts(study=registry.study)] == ["<10", "<10"]
