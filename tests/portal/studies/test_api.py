import base64
import json
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from core.models import AuditEvent
from crypto import SecretContext
from institutions.services import node_token_issue, node_token_revoke
from studies.models import Enrollment, Study
from tests.portal.factories import (
    AdminFactory,
    EnrollmentFactory,
    InstitutionFactory,
    ResearcherFactory,
    StewardFactory,
    StudyFactory,
    UserFactory,
    draft_protocol,
)

pytestmark = pytest.mark.django_db


def client_for(user=None) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_login(user)
    return client


def node_client(institution, **kwargs) -> APIClient:
    _, raw = node_token_issue(institution=institution, label="node", actor=AdminFactory(), **kwargs)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Node {raw}")
    return client


def approved(study, institution=None) -> Enrollment:
    return EnrollmentFactory(
        study=study,
        institution=institution or InstitutionFactory(),
        state=Enrollment.State.APPROVED,
    )


def test_a_researcher_creates_a_study():
    response = client_for(ResearcherFactory()).post(
        "/api/studies/",
        {"title": "Sepsis", "slug": "sepsis", "protocol": draft_protocol()},
        format="json",
    )
    assert response.status_code == 201, response.json()
    assert response.json()["protocol"]["study_id"] == "sepsis"
    assert Study.objects.filter(slug="sepsis").exists()


def test_a_non_researcher_cannot_create_a_study():
    response = client_for(UserFactory()).post(
        "/api/studies/", {"title": "t", "slug": "s", "protocol": draft_protocol()}, format="json"
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    assert Study.objects.count() == 0


def test_invalid_protocol_fields_are_named_and_nothing_is_written():
    protocol = draft_protocol()
    protocol["training"]["batch_size"] = -3
    response = client_for(ResearcherFactory()).post(
        "/api/studies/", {"title": "t", "slug": "s", "protocol": protocol}, format="json"
    )
    assert response.status_code == 400
    assert "protocol.training.batch_size" in response.json()["error"]["fields"]
    assert Study.objects.count() == 0
    assert AuditEvent.objects.count() == 0


def test_missing_fields_are_named():
    response = client_for(ResearcherFactory()).post("/api/studies/", {"title": "t"}, format="json")
    assert response.status_code == 400
    assert set(response.json()["error"]["fields"]) == {"slug", "protocol"}


def test_an_oversized_protocol_is_refused():
    protocol = draft_protocol()
    protocol["padding"] = "x" * (300 * 1024)
    response = client_for(ResearcherFactory()).post(
        "/api/studies/", {"title": "t", "slug": "s", "protocol": protocol}, format="json"
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"
    assert Study.objects.count() == 0


def test_a_wrong_content_type_is_415():
    response = client_for(ResearcherFactory()).post(
        "/api/studies/", "title=t&slug=s", content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code == 415
    assert Study.objects.count() == 0


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/studies/"),
        ("post", "/api/studies/"),
        ("get", "/api/studies/1/"),
        ("put", "/api/studies/1/protocol/"),
        ("post", "/api/studies/1/invitations/"),
        ("get", "/api/enrollments/"),
        ("post", "/api/enrollments/1/decision/"),
        ("get", "/api/node/protocols/"),
        ("post", "/api/node/studies/x/he-context/"),
        ("post", "/api/node/heartbeat/"),
    ],
)
def test_anonymous_gets_401(method, path):
    response = getattr(APIClient(), method)(path, {}, format="json")
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("get", "", None),
        ("put", "protocol/", {"protocol": {}}),
        ("post", "invitations/", {"institutions": ["x"]}),
    ],
)
def test_another_researchers_study_is_404(method, suffix, body):
    study = StudyFactory()
    response = getattr(client_for(ResearcherFactory()), method)(
        f"/api/studies/{study.pk}/{suffix}", body, format="json"
    )
    assert response.status_code == 404


def test_the_list_shows_only_visible_studies():
    mine = StudyFactory()
    StudyFactory()
    response = client_for(mine.owner).get("/api/studies/")
    assert [s["slug"] for s in response.json()] == [mine.slug]
    admin_view = client_for(AdminFactory()).get("/api/studies/")
    assert len(admin_view.json()) == 2


def test_a_steward_sees_only_studies_that_invited_them():
    invited = EnrollmentFactory()
    steward = StewardFactory(institution=invited.institution)
    other = StudyFactory()
    client = client_for(steward)
    assert [s["slug"] for s in client.get("/api/studies/").json()] == [invited.study.slug]
    assert client.get(f"/api/studies/{other.pk}/").status_code == 404
    assert [e["id"] for e in client.get("/api/enrollments/").json()] == [invited.pk]


def test_invite_protocol_update_and_decision_through_the_api():
    study = StudyFactory(min_hospitals=1)
    hospital = InstitutionFactory()
    owner = client_for(study.owner)
    response = owner.post(
        f"/api/studies/{study.pk}/invitations/", {"institutions": [hospital.slug]}, format="json"
    )
    assert response.status_code == 200, response.json()
    assert response.json()["state"] == "recruiting"
    enrollment = Enrollment.objects.get(study=study)
    steward = client_for(StewardFactory(institution=hospital))
    decision = {"approve": True, "protocol_sha256": study.protocol_sha256, "comment": "fine"}
    response = steward.post(f"/api/enrollments/{enrollment.pk}/decision/", decision, format="json")
    assert response.status_code == 200, response.json()
    assert owner.get(f"/api/studies/{study.pk}/").json()["state"] == "ready"
    protocol = draft_protocol(min_hospitals=1)
    protocol["training"]["local_epochs"] = 2
    response = owner.put(
        f"/api/studies/{study.pk}/protocol/", {"protocol": protocol}, format="json"
    )
    assert response.status_code == 200, response.json()
    assert response.json()["state"] == "recruiting"
    stale = steward.post(f"/api/enrollments/{enrollment.pk}/decision/", decision, format="json")
    assert stale.status_code == 409
    assert "the protocol changed since you read it" in stale.json()["error"]["message"]


def test_inviting_unknown_hospitals_is_400():
    study = StudyFactory()
    response = client_for(study.owner).post(
        f"/api/studies/{study.pk}/invitations/", {"institutions": ["nope"]}, format="json"
    )
    assert response.status_code == 400
    assert study.enrollments.count() == 0


def test_a_steward_cannot_decide_for_another_hospital_403():
    enrollment = EnrollmentFactory()
    stranger = StewardFactory()
    decision = {"approve": True, "protocol_sha256": enrollment.study.protocol_sha256, "comment": ""}
    response = client_for(stranger).post(
        f"/api/enrollments/{enrollment.pk}/decision/", decision, format="json"
    )
    assert response.status_code == 403
    enrollment.refresh_from_db()
    assert enrollment.state == Enrollment.State.INVITED


def test_a_non_steward_gets_403_on_enrollments():
    assert client_for(ResearcherFactory()).get("/api/enrollments/").status_code == 403


def test_a_node_reads_only_its_own_approved_protocols():
    study = StudyFactory(state=Study.State.RECRUITING)
    mine = approved(study)
    theirs = approved(StudyFactory(state=Study.State.RECRUITING))
    EnrollmentFactory(institution=mine.institution)  # invited, not approved: not readable
    response = node_client(mine.institution).get("/api/node/protocols/")
    assert response.status_code == 200
    assert [s["slug"] for s in response.json()] == [study.slug]
    assert response.json()[0]["protocol_sha256"] == study.protocol_sha256
    other = node_client(theirs.institution).get("/api/node/protocols/")
    assert [s["slug"] for s in other.json()] == [theirs.study.slug]


def test_a_node_token_cannot_use_session_endpoints():
    response = node_client(InstitutionFactory()).get("/api/studies/")
    assert response.status_code == 401


@pytest.mark.parametrize("how", ["revoked", "expired", "garbage"])
def test_revoked_expired_or_unknown_node_tokens_get_401(how):
    institution = InstitutionFactory()
    token, raw = node_token_issue(institution=institution, label="n", actor=AdminFactory())
    if how == "revoked":
        node_token_revoke(token=token, actor=AdminFactory())
    elif how == "expired":
        type(token).objects.filter(pk=token.pk).update(
            expires_at=timezone.now() - timedelta(seconds=1)
        )
    else:
        raw = raw[:-4] + "AAAA"
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Node {raw}")
    assert client.get("/api/node/protocols/").status_code == 401


@pytest.fixture(scope="module")
def study_key():
    return SecretContext.generate()


def test_a_node_pins_the_he_context(study_key):
    study = StudyFactory(state=Study.State.RECRUITING)
    enrollment = approved(study)
    client = node_client(enrollment.institution)
    payload = {
        "aggregator_context": base64.b64encode(study_key.aggregator_context().to_bytes()).decode()
    }
    response = client.post(f"/api/node/studies/{study.slug}/he-context/", payload, format="json")
    assert response.status_code == 200, response.json()
    assert response.json()["he_context_fingerprint"] == study_key.fingerprint
    listed = client.get("/api/node/protocols/").json()[0]
    assert listed["protocol"]["encryption"]["context_fingerprint"] == study_key.fingerprint


def test_he_context_refusals(study_key):
    study = StudyFactory(state=Study.State.RECRUITING)
    enrollment = approved(study)
    client = node_client(enrollment.institution)
    url = f"/api/node/studies/{study.slug}/he-context/"
    secret = base64.b64encode(study_key.to_bytes()).decode()
    assert client.post(url, {"aggregator_context": secret}, format="json").status_code in (400, 413)
    big = base64.b64encode(b"\0" * 5000).decode()
    assert client.post(url, {"aggregator_context": big}, format="json").status_code == 413
    assert client.post(url, {"aggregator_context": "%%%"}, format="json").status_code == 400
    stranger = node_client(InstitutionFactory())
    good = base64.b64encode(study_key.aggregator_context().to_bytes()).decode()
    assert stranger.post(url, {"aggregator_context": good}, format="json").status_code == 404
    study.refresh_from_db()
    assert study.he_context_fingerprint == ""


def test_the_schema_documents_the_endpoints():
    response = client_for(UserFactory()).get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    paths = json.loads(response.content)["paths"]
    for path in [
        "/api/studies/",
        "/api/studies/{study_id}/protocol/",
        "/api/enrollments/{enrollment_id}/decision/",
        "/api/node/protocols/",
        "/api/node/heartbeat/",
        "/api/node/studies/{slug}/he-context/",
    ]:
        assert path in paths
