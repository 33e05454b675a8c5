"""The dashboard at "/": one section per role the user holds."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group, User
from django.urls import reverse
from django.utils import timezone

from core.selectors import dashboard_for_user, user_roles
from institutions.models import Institution, Membership
from institutions.selectors import RESEARCHERS_GROUP
from runs.models import Round, Run
from studies.models import Enrollment, Study

pytestmark = pytest.mark.django_db


def make_researcher(username: str = "rita") -> User:
    user = User.objects.create_user(username, password="pw-researcher-1")
    group, _ = Group.objects.get_or_create(name=RESEARCHERS_GROUP)
    user.groups.add(group)
    return user


def make_steward(institution: Institution, username: str = "sam") -> User:
    user = User.objects.create_user(username, password="pw-steward-1")
    Membership.objects.create(user=user, institution=institution, role=Membership.STEWARD)
    return user


def make_study(owner: User, slug: str, state: str = Study.State.DRAFT) -> Study:
    return Study.objects.create(
        slug=slug,
        title=f"Study {slug}",
        owner=owner,
        state=state,
        protocol={},
        protocol_sha256="0" * 64,
    )


@pytest.fixture
def hospital() -> Institution:
    return Institution.objects.create(name="Hospital A", slug="hospital-a")


def test_anonymous_visitors_are_sent_to_the_login_page(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('login')}?next=/"


def test_the_login_page_renders_with_the_portal_stylesheet(client):
    response = client.get(reverse("login"))
    assert response.status_code == 200
    assert b"portal/portal.css" in response.content
    assert b'name="username"' in response.content


def test_a_wrong_password_is_explained_on_the_login_page(client):
    make_researcher()
    response = client.post(reverse("login"), {"username": "rita", "password": "wrong"})
    assert response.status_code == 200
    assert b"errorlist" in response.content


def test_a_researcher_sees_their_studies_with_state_and_latest_run_progress(client):
    researcher = make_researcher()
    other = make_researcher("otto")
    study = make_study(researcher, "sepsis-2026", Study.State.RUNNING)
    make_study(other, "not-mine")
    older = Run.objects.create(
        study=study, started_by=researcher, protocol_sha256="0" * 64, rounds_planned=3
    )
    Run.objects.filter(pk=older.pk).update(
        created_at=timezone.now() - timedelta(hours=1), state="failed"
    )
    latest = Run.objects.create(
        study=study,
        started_by=researcher,
        protocol_sha256="0" * 64,
        rounds_planned=4,
        state="running",
    )
    for number in (1, 2, 3):
        Round.objects.create(run=latest, number=number)

    client.force_login(researcher)
    response = client.get("/")

    assert response.status_code == 200
    page = response.content.decode()
    assert "sepsis-2026" in page and "not-mine" not in page
    assert 'class="badge badge-running"' in page
    assert reverse("studies:create") in page and "New study" in page
    assert reverse("runs:detail", args=[latest.pk]) in page
    assert "round 3 of 4" in page and "width: 75%" in page
    assert "Invitations waiting" not in page and "Admin console" not in page
    row = response.context["dashboard"].studies[0]
    assert row.latest_run.run == latest and row.latest_run.percent == 75


def test_the_dashboard_reads_in_a_bounded_number_of_queries(client, django_assert_max_num_queries):
    researcher = make_researcher()
    for n in range(5):
        study = make_study(researcher, f"study-{n}")
        run = Run.objects.create(
            study=study, started_by=researcher, protocol_sha256="0" * 64, rounds_planned=2
        )
        Round.objects.create(run=run, number=1)
    client.force_login(researcher)
    with django_assert_max_num_queries(15):
        client.get("/")


def test_a_steward_sees_pending_invitations_and_their_hospitals_nodes(client, hospital):
    steward = make_steward(hospital)
    other_hospital = Institution.objects.create(name="Hospital B", slug="hospital-b")
    researcher = make_researcher()
    waiting = make_study(researcher, "waiting", Study.State.RECRUITING)
    decided = make_study(researcher, "decided", Study.State.RECRUITING)
    cancelled = make_study(researcher, "called-off", Study.State.CANCELLED)
    elsewhere = make_study(researcher, "elsewhere", Study.State.RECRUITING)
    invitation = Enrollment.objects.create(study=waiting, institution=hospital)
    Enrollment.objects.create(study=decided, institution=hospital, state=Enrollment.State.APPROVED)
    Enrollment.objects.create(study=cancelled, institution=hospital)
    Enrollment.objects.create(study=elsewhere, institution=other_hospital)
    Institution.objects.filter(pk=hospital.pk).update(
        last_seen_at=timezone.now(), node_status={"version": "0.1.0"}
    )

    client.force_login(steward)
    response = client.get("/")

    page = response.content.decode()
    dashboard = response.context["dashboard"]
    assert [e.study.slug for e in dashboard.pending_invitations] == ["waiting"]
    assert reverse("studies:decide", args=[invitation.pk]) in page
    assert [node.institution.slug for node in dashboard.nodes] == ["hospital-a"]
    assert dashboard.nodes[0].online
    assert "badge badge-online" in page and "version" in page
    assert "Your studies" not in page and "New study" not in page
    assert (
        reverse("studies:invitations") in page
    )  # the navigation offers stewards their invitations


def test_a_steward_whose_node_went_quiet_sees_it_offline(client, hospital):
    steward = make_steward(hospital)
    Institution.objects.filter(pk=hospital.pk).update(
        last_seen_at=timezone.now() - timedelta(hours=1)
    )
    client.force_login(steward)
    assert b"badge badge-offline" in client.get("/").content


def test_an_admin_sees_counts_and_links_to_the_admin_console(client, hospital):
    admin = User.objects.create_user("ada", password="pw-admin-1", is_staff=True, is_superuser=True)
    researcher = make_researcher()
    make_study(researcher, "one", Study.State.DRAFT)
    make_study(researcher, "two", Study.State.COMPLETED)

    client.force_login(admin)
    response = client.get("/")

    counts = response.context["dashboard"].counts
    assert counts.studies == 2 and counts.studies_by_state == {"draft": 1, "completed": 1}
    assert counts.institutions == 1 and counts.users == 2
    page = response.content.decode()
    assert reverse("admin:index") in page and "Admin console" in page
    assert "Your studies" not in page


def test_roles_combine_for_a_steward_who_also_runs_studies(hospital):
    user = make_steward(hospital)
    make_study(user, "own-study")
    roles = user_roles(user=user)
    assert roles.steward and roles.researcher and not roles.admin
    assert [row.study.slug for row in dashboard_for_user(user=user).studies] == ["own-study"]


def test_a_user_without_a_role_is_told_how_to_get_one(client):
    user = User.objects.create_user("nobody", password="pw-nobody-1")
    client.force_login(user)
    response = client.get("/")
    assert response.status_code == 200
    assert b"no role yet" in response.content
