"""The consent page: researchers see suppressed counts only, stewards their own registry."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from consent.models import ConsentForm, ConsentRecord, StudyConsentSettings
from consent.services import consent_records_record
from core.models import AuditEvent
from tests.portal.consent.conftest import record
from tests.portal.factories import AdminFactory, ResearcherFactory, StewardFactory, pseudonym

pytestmark = pytest.mark.django_db

P1 = pseudonym(1)


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def imported(registry, records, institution=None) -> None:
    consent_records_record(
        study=registry.study,
        institution=institution or registry.hospital_a,
        records=records,
        actor_label="node:test",
    )


@pytest.fixture
def filled(registry):
    """Hospital A: 12 consented (P1 among them) and 2 withdrawn; hospital B: 3 consented."""
    imported(registry, [record(pseudonym(i)) for i in range(1, 15)])
    imported(registry, [record(pseudonym(i), "withdrawn", "2026-02-01", None) for i in (13, 14)])
    imported(registry, [record(pseudonym(200 + i)) for i in range(3)], registry.hospital_b)
    return registry


def cells(html: str) -> str:
    return re.sub(r">\s+<", "><", " ".join(html.split()))


@pytest.mark.parametrize(
    "path", ["/studies/x/consent/", "/studies/x/consent/forms/", "/studies/x/consent/a/withdraw/"]
)
def test_anonymous_is_sent_to_the_login_page(path):
    response = Client().get(path)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_the_researcher_sees_suppressed_counts_and_never_a_pseudonym(filled):
    response = logged_in(filled.researcher).get(filled.page_url())
    assert response.status_code == 200
    html = response.content.decode()
    page = cells(html)
    assert '<td><strong>Hospital A</strong></td><td class="num">12</td>' in page
    assert '<td><strong>Hospital B</strong></td><td class="num">&lt;10</td>' in page
    assert ">3<" not in page, "the exact small count is never shown"
    for n in (*range(1, 15), 200, 201, 202):
        assert pseudonym(n) not in html
        assert pseudonym(n)[:12] not in html
    assert "Registry of" not in html
    assert "Publish a new version" in html


def test_history_is_aggregated_per_batch_and_suppressed(filled):
    page = cells(logged_in(filled.researcher).get(filled.page_url()).content.decode())
    assert "Consent history" in page
    assert '<td class="num">14</td><td class="num">&lt;10</td>' in page
    assert page.count("Node upload") == 3


def test_the_steward_sees_their_own_registry_in_full_but_not_another_hospitals(filled):
    html = logged_in(filled.steward_a).get(filled.page_url()).content.decode()
    assert "Registry of Hospital A" in html
    assert "Registry of Hospital B" not in html
    assert P1 in html
    assert pseudonym(14) in html
    for n in (200, 201, 202):
        assert pseudonym(n) not in html
    page = cells(html)
    assert '<td class="num">&lt;10</td>' in page, "other hospitals' counts stay suppressed"
    assert "Publish a new version" not in html


def test_the_registry_can_be_searched_by_prefix(filled):
    html = logged_in(filled.steward_a).get(filled.page_url(), {"q": P1[:10]}).content.decode()
    assert P1 in html
    assert pseudonym(2) not in html


def test_someone_outside_the_study_gets_a_404(filled):
    assert logged_in(ResearcherFactory()).get(filled.page_url()).status_code == 404
    assert logged_in(StewardFactory()).get(filled.page_url()).status_code == 404


def test_a_steward_withdraws_by_pseudonym(filled):
    client = logged_in(filled.steward_a)
    response = client.post(
        reverse("consent:withdraw", args=[filled.study.slug, "hospital-a"]),
        {"hospital-a-pseudonym": P1, "hospital-a-reason": "asked by phone"},
        follow=True,
    )
    assert response.status_code == 200
    assert "withdrawn in Hospital A" in response.content.decode()
    latest = ConsentRecord.objects.filter(pseudonym=P1).order_by("-decided_at", "-id").first()
    assert (latest.status, latest.source) == ("withdrawn", "steward")
    assert AuditEvent.objects.filter(action="consent.withdrawn_by_steward").count() == 1


def test_a_withdrawal_of_an_unknown_pseudonym_explains_itself(filled):
    response = logged_in(filled.steward_a).post(
        reverse("consent:withdraw", args=[filled.study.slug, "hospital-a"]),
        {"hospital-a-pseudonym": pseudonym(200)},
    )
    assert response.status_code == 200
    assert "Hospital A&#x27;s consent registry" in response.content.decode()
    assert not ConsentRecord.objects.filter(source="steward").exists()


def test_a_steward_cannot_withdraw_in_another_hospital(filled):
    response = logged_in(filled.steward_b).post(
        reverse("consent:withdraw", args=[filled.study.slug, "hospital-a"]),
        {"hospital-a-pseudonym": P1},
    )
    assert response.status_code == 403
    assert not ConsentRecord.objects.filter(source="steward").exists()


def test_withdrawal_needs_csrf(filled):
    client = Client(enforce_csrf_checks=True)
    client.force_login(filled.steward_a)
    response = client.post(
        reverse("consent:withdraw", args=[filled.study.slug, "hospital-a"]),
        {"hospital-a-pseudonym": P1},
    )
    assert response.status_code == 403
    assert not ConsentRecord.objects.filter(source="steward").exists()


def test_the_owner_publishes_a_version_and_sets_the_rule(registry):
    client = logged_in(registry.researcher)
    response = client.post(
        reverse("consent:publish", args=[registry.study.slug]),
        {"title": "Consent v2", "text": "New wording."},
        follow=True,
    )
    assert "Consent form version 2 published." in response.content.decode()
    assert ConsentForm.objects.filter(study=registry.study).count() == 2
    client.post(
        reverse("consent:settings", args=[registry.study.slug]), {"requires_current_form": "on"}
    )
    assert StudyConsentSettings.objects.get(study=registry.study).requires_current_form


def test_a_blank_form_is_shown_again_with_its_errors(registry):
    response = logged_in(registry.researcher).post(
        reverse("consent:publish", args=[registry.study.slug]), {"title": "", "text": ""}
    )
    assert response.status_code == 200
    assert "This field is required." in response.content.decode()
    assert ConsentForm.objects.filter(study=registry.study).count() == 1


def test_a_steward_cannot_publish(registry):
    response = logged_in(registry.steward_a).post(
        reverse("consent:publish", args=[registry.study.slug]), {"title": "t", "text": "x"}
    )
    assert response.status_code == 403
    assert ConsentForm.objects.filter(study=registry.study).count() == 1


def test_the_study_page_links_to_the_consent_page(registry):
    html = logged_in(registry.researcher).get(f"/studies/{registry.study.pk}/").content.decode()
    assert registry.page_url() in html


def test_the_session_api_gives_suppressed_counts(filled):
    client = APIClient()
    client.force_login(filled.researcher)
    body = client.get(f"/api/studies/{filled.study.slug}/consent/").json()
    assert body["current_version"] == 1
    assert body["forms"][0]["version"] == 1
    assert body["hospitals"] == [
        {"institution": "hospital-a", "name": "Hospital A", "consented": "12"},
        {"institution": "hospital-b", "name": "Hospital B", "consented": "<10"},
    ]
    assert P1 not in str(body)
    assert APIClient().get(f"/api/studies/{filled.study.slug}/consent/").status_code == 401


def test_the_admin_shows_records_read_only(filled):
    client = logged_in(AdminFactory())
    assert client.get("/admin/consent/consentrecord/").status_code == 200
    record_id = ConsentRecord.objects.first().pk
    response = client.post(f"/admin/consent/consentrecord/{record_id}/delete/", {"post": "yes"})
    assert response.status_code == 403
    assert client.get("/admin/consent/consentrecord/add/").status_code == 403
    assert ConsentRecord.objects.filter(pk=record_id).exists()


def test_the_steward_sees_the_snapshots_served_to_their_node(filled):
    sha256 = filled.node_a.get(filled.snapshot_url()).json()["sha256"]
    other = filled.node_b.get(filled.snapshot_url()).json()["sha256"]
    html = logged_in(filled.steward_a).get(filled.page_url()).content.decode()
    assert f'title="{sha256}"' in html
    assert other not in html
    assert sha256 not in logged_in(filled.researcher).get(filled.page_url()).content.decode()
