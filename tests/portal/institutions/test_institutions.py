from datetime import timedelta

import pytest
from django.contrib.admin.sites import site
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from core.errors import ValidationError
from core.models import AuditEvent
from core.tokens import digest_matches
from institutions.models import Institution, Membership, NodeToken
from institutions.selectors import institutions_of_steward, is_researcher
from institutions.services import (
    institution_create,
    node_heartbeat,
    node_token_issue,
    node_token_revoke,
    steward_add,
)
from studies.models import Enrollment, Study
from tests.portal.factories import (
    AdminFactory,
    EnrollmentFactory,
    InstitutionFactory,
    ResearcherFactory,
    StewardFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_institution_create_and_steward_add_are_audited():
    admin = AdminFactory()
    hospital = institution_create(name="St Mary", slug="st-mary", actor=admin)
    user = UserFactory()
    steward_add(user=user, institution=hospital, actor=admin)
    steward_add(user=user, institution=hospital, actor=admin)
    assert list(institutions_of_steward(user=user)) == [hospital]
    assert Membership.objects.count() == 1
    assert AuditEvent.objects.filter(action="institution.steward_added").count() == 1
    with pytest.raises(ValidationError):
        institution_create(name="Again", slug="st-mary", actor=admin)
    with pytest.raises(ValidationError):
        institution_create(name="Bad", slug="not a slug", actor=admin)


def test_is_researcher_follows_the_group():
    assert is_researcher(ResearcherFactory())
    assert not is_researcher(UserFactory())


def test_node_tokens_are_stored_hashed_and_revocable():
    admin = AdminFactory()
    hospital = InstitutionFactory()
    token, raw = node_token_issue(institution=hospital, label="node-1", actor=admin)
    assert raw.startswith("node_") and raw not in token.digest
    assert digest_matches(raw, token.digest)
    assert token.active
    node_token_revoke(token=token, actor=admin)
    node_token_revoke(token=token, actor=admin)
    token.refresh_from_db()
    assert not token.active
    assert AuditEvent.objects.filter(action="node_token.revoked").count() == 1
    with pytest.raises(ValidationError):
        node_token_issue(
            institution=hospital,
            label="x",
            actor=admin,
            expires_at=timezone.now() - timedelta(days=1),
        )


@pytest.mark.parametrize(
    "status",
    [
        [1, 2],
        {"nested": {"a": 1}},
        {"list": [1]},
        {f"k{i}": i for i in range(40)},
        {"long": "x" * 600},
        {"": 1},
    ],
)
def test_heartbeat_refuses_anything_but_a_small_flat_object(status):
    hospital = InstitutionFactory(last_seen_at=None)
    with pytest.raises(ValidationError):
        node_heartbeat(institution=hospital, status=status)
    hospital.refresh_from_db()
    assert hospital.last_seen_at is None


def node_client(institution) -> APIClient:
    _, raw = node_token_issue(institution=institution, label="node", actor=AdminFactory())
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Node {raw}")
    return client


def test_the_heartbeat_api_updates_only_the_tokens_institution():
    mine, other = InstitutionFactory(last_seen_at=None), InstitutionFactory(last_seen_at=None)
    response = node_client(mine).post(
        "/api/node/heartbeat/", {"status": {"version": "1.0", "studies": 2}}, format="json"
    )
    assert response.status_code == 200, response.json()
    mine.refresh_from_db()
    other.refresh_from_db()
    assert mine.node_status == {"version": "1.0", "studies": 2}
    assert mine.node_online()
    assert other.last_seen_at is None


def test_the_heartbeat_api_refuses_bad_and_oversized_status():
    client = node_client(InstitutionFactory())
    assert (
        client.post("/api/node/heartbeat/", {"status": {"a": {"b": 1}}}, format="json").status_code
        == 400
    )
    big = {"status": {"a": "x" * 20000}}
    assert client.post("/api/node/heartbeat/", big, format="json").status_code == 413
    assert (
        client.post("/api/node/heartbeat/", "status", content_type="text/plain").status_code == 415
    )


def test_session_users_cannot_post_heartbeats():
    response = APIClient()
    response.force_login(StewardFactory())
    assert response.post("/api/node/heartbeat/", {"status": {}}, format="json").status_code == 401


def test_the_hospital_page_is_visible_to_its_stewards_enrolled_researchers_and_admins():
    enrollment = EnrollmentFactory(
        state=Enrollment.State.INVITED, institution=InstitutionFactory(last_seen_at=None)
    )
    hospital = enrollment.institution
    url = reverse("institutions:detail", args=[hospital.slug])
    steward = StewardFactory(institution=hospital)
    for user in [steward, enrollment.study.owner, AdminFactory()]:
        response = logged_in(user).get(url)
        assert response.status_code == 200
        assert "offline" in response.content.decode()
    assert steward.get_username() in logged_in(steward).get(url).content.decode()


@pytest.mark.parametrize("who", ["stranger", "other-steward", "other-researcher"])
def test_the_hospital_page_is_404_for_everyone_else(who):
    hospital = EnrollmentFactory().institution
    user = {
        "stranger": UserFactory,
        "other-steward": StewardFactory,
        "other-researcher": ResearcherFactory,
    }[who]()
    assert (
        logged_in(user).get(reverse("institutions:detail", args=[hospital.slug])).status_code == 404
    )


def test_the_admin_issues_a_token_once_and_revokes_it():
    admin = AdminFactory()
    hospital = InstitutionFactory()
    client = logged_in(admin)
    response = client.post(
        reverse("admin:institutions_nodetoken_add"),
        {"institution": hospital.pk, "label": "node-a"},
        follow=True,
    )
    assert response.status_code == 200
    token = NodeToken.objects.get()
    shown = [str(m) for m in response.context["messages"]]
    assert any(f"node_{token.prefix}_" in m for m in shown)
    change = client.get(
        reverse("admin:institutions_nodetoken_change", args=[token.pk])
    ).content.decode()
    assert f"node_{token.prefix}_" not in change
    client.post(
        reverse("admin:institutions_nodetoken_changelist"),
        {"action": "revoke", "_selected_action": [token.pk]},
    )
    token.refresh_from_db()
    assert token.revoked_at is not None


@pytest.mark.parametrize("model", [Study, Enrollment, AuditEvent])
def test_history_is_read_only_in_the_admin(model, rf):
    request = rf.get("/")
    request.user = AdminFactory()
    model_admin = site._registry[model]
    assert not model_admin.has_add_permission(request)
    assert not model_admin.has_change_permission(request)
    assert not model_admin.has_delete_permission(request)
    assert model_admin.has_view_permission(request)


def test_admin_pages_render():
    client = logged_in(AdminFactory())
    EnrollmentFactory()
    for name in [
        "admin:institutions_institution_changelist",
        "admin:institutions_nodetoken_changelist",
        "admin:institutions_nodetoken_add",
        "admin:studies_study_changelist",
        "admin:studies_enrollment_changelist",
        "admin:core_auditevent_changelist",
    ]:
        assert client.get(reverse(name)).status_code == 200, name
    study = Study.objects.get()
    assert client.get(reverse("admin:studies_study_change", args=[study.pk])).status_code == 200
    assert (
        client.get(
            reverse("admin:institutions_institution_change", args=[Institution.objects.first().pk])
        ).status_code
        == 200
    )
