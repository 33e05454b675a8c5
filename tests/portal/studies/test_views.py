import pytest
from django.test import Client
from django.urls import reverse

from studies.models import Enrollment, Study
from tests.portal.factories import (
    AdminFactory,
    EnrollmentFactory,
    InstitutionFactory,
    ResearcherFactory,
    StewardFactory,
    StudyFactory,
)

pytestmark = pytest.mark.django_db


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


FORM = {
    "title": "Sepsis",
    "slug": "sepsis-web",
    "model": "mlp",
    "hidden_sizes": "16,8",
    "rounds": 3,
    "min_hospitals": 2,
    "round_timeout_s": 300,
    "target_epsilon": 3.0,
    "delta": 1e-5,
    "max_grad_norm": 1.0,
    "accountant": "rdp",
    "local_epochs": 1,
    "batch_size": 32,
    "learning_rate": 0.5,
    "seed": 7,
    "holdout_fraction": 0.2,
}


@pytest.mark.parametrize(
    "url",
    [
        "/studies/",
        "/studies/new/",
        "/studies/1/",
        "/studies/invitations/",
        "/studies/invitations/1/",
        "/hospitals/x/",
    ],
)
def test_anonymous_is_sent_to_the_login_page(url):
    response = Client().get(url)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_the_create_form_is_prefilled_with_the_demo_schema_and_creates_a_study():
    researcher = ResearcherFactory()
    client = logged_in(researcher)
    page = client.get(reverse("studies:create"))
    assert page.status_code == 200
    schema = page.context["form"].fields["schema"].initial
    response = client.post(reverse("studies:create"), {**FORM, "schema": schema})
    study = Study.objects.get(slug="sepsis-web")
    assert response.status_code == 302
    assert study.protocol["model"] == {"name": "mlp", "hyperparameters": {"hidden": [16, 8]}}
    detail = client.get(reverse("studies:detail", args=[study.pk]))
    assert study.protocol_sha256 in detail.content.decode()
    assert "no HE key yet" in detail.content.decode()


def test_the_create_form_shows_errors_next_to_fields():
    client = logged_in(ResearcherFactory())
    response = client.post(
        reverse("studies:create"), {**FORM, "batch_size": 0, "schema": "{not json"}
    )
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert "batch_size" in errors and "schema" in errors
    bad_schema = '{"features": [], "label": "y"}'
    response = client.post(reverse("studies:create"), {**FORM, "schema": bad_schema})
    assert response.status_code == 200
    assert "schema" in response.context["form"].errors
    assert Study.objects.count() == 0


def test_only_researchers_get_the_create_form():
    assert logged_in(StewardFactory()).get(reverse("studies:create")).status_code == 404


def test_another_researchers_study_is_404():
    study = StudyFactory()
    client = logged_in(ResearcherFactory())
    assert client.get(reverse("studies:detail", args=[study.pk])).status_code == 404
    response = client.post(
        reverse("studies:invite", args=[study.pk]), {"institutions": [InstitutionFactory().pk]}
    )
    assert response.status_code == 404
    assert study.enrollments.count() == 0


def test_the_owner_invites_hospitals_from_the_detail_page():
    study = StudyFactory()
    hospital = InstitutionFactory()
    client = logged_in(study.owner)
    response = client.post(
        reverse("studies:invite", args=[study.pk]), {"institutions": [hospital.pk]}
    )
    assert response.status_code == 302
    study.refresh_from_db()
    assert study.state == Study.State.RECRUITING
    assert hospital.name in client.get(reverse("studies:detail", args=[study.pk])).content.decode()


def test_a_steward_reviews_and_approves_the_hash_they_saw():
    enrollment = EnrollmentFactory(study__min_hospitals=1)
    steward = StewardFactory(institution=enrollment.institution)
    client = logged_in(steward)
    inbox = client.get(reverse("studies:invitations")).content.decode()
    assert enrollment.study.title in inbox
    url = reverse("studies:decide", args=[enrollment.pk])
    page = client.get(url).content.decode()
    assert enrollment.study.protocol_sha256 in page
    response = client.post(
        url,
        {
            "decision": "approve",
            "protocol_sha256": enrollment.study.protocol_sha256,
            "comment": "ok",
        },
    )
    assert response.status_code == 302
    enrollment.refresh_from_db()
    assert enrollment.state == Enrollment.State.APPROVED
    enrollment.study.refresh_from_db()
    assert enrollment.study.state == Study.State.READY


def test_a_stale_hash_from_the_page_is_refused():
    enrollment = EnrollmentFactory()
    client = logged_in(StewardFactory(institution=enrollment.institution))
    url = reverse("studies:decide", args=[enrollment.pk])
    response = client.post(
        url, {"decision": "approve", "protocol_sha256": "a" * 64, "comment": ""}, follow=True
    )
    assert "the protocol changed since you read it" in response.content.decode()
    enrollment.refresh_from_db()
    assert enrollment.state == Enrollment.State.INVITED


def test_a_steward_of_another_hospital_gets_404_on_the_decision_page():
    enrollment = EnrollmentFactory()
    client = logged_in(StewardFactory())
    assert client.get(reverse("studies:decide", args=[enrollment.pk])).status_code == 404
    assert client.get(reverse("studies:detail", args=[enrollment.study.pk])).status_code == 404


def test_admins_see_every_study():
    study = StudyFactory()
    assert (
        logged_in(AdminFactory()).get(reverse("studies:detail", args=[study.pk])).status_code == 200
    )
