import pytest

from core.models import AuditEvent
from privacy.models import ReadinessReport
from studies.models import Enrollment
from tests.portal.factories import EnrollmentFactory, InstitutionFactory
from tests.portal.privacy.conftest import node_client

pytestmark = pytest.mark.django_db


def url(study) -> str:
    return f"/api/node/studies/{study.slug}/readiness/"


def report(study, **fields):
    return {
        "dataset_id": "data",
        "protocol_sha256": study.protocol_sha256,
        "consent_sha256": "a" * 64,
        "consent_waiver": None,
        "rows_train": 412,
        "rows_holdout": 103,
        "blockers": [],
        **fields,
    }


@pytest.fixture
def enrollment():
    return EnrollmentFactory(state=Enrollment.State.APPROVED)


def test_a_node_reports_its_readiness_and_each_report_replaces_the_last(enrollment):
    study, hospital = enrollment.study, enrollment.institution
    client = node_client(hospital)

    response = client.post(url(study), report(study), format="json")

    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["study"] == study.slug
    assert body["institution"] == hospital.slug
    assert body["for_current_protocol"] is True
    assert body["rows_train"] == 412

    blocker = {"code": "cohort-too-small", "reason": "40 usable rows is below 50"}
    stale = report(study, protocol_sha256="b" * 64, rows_train=40, blockers=[blocker])
    response = client.post(url(study), stale, format="json")

    assert response.status_code == 200
    assert response.json()["for_current_protocol"] is False
    (stored,) = ReadinessReport.objects.all()
    assert (stored.rows_train, stored.blockers) == (40, [blocker])
    assert stored.consent_sha256 == "a" * 64


def test_only_a_changed_report_is_audited(enrollment):
    study = enrollment.study
    client = node_client(enrollment.institution)
    for _ in range(3):
        assert client.post(url(study), report(study), format="json").status_code == 200
    waived = report(study, consent_sha256=None, consent_waiver="ethics board EB-17")
    assert client.post(url(study), waived, format="json").status_code == 200

    events = AuditEvent.objects.filter(action="privacy.readiness_reported")
    assert events.count() == 2
    assert events.first().data["consent_waiver"] == "ethics board EB-17"
    assert events.first().actor_label == f"node:{enrollment.institution.slug}"


@pytest.mark.parametrize("state", [Enrollment.State.INVITED, Enrollment.State.APPROVED])
def test_enrolled_hospitals_may_report(state):
    enrollment = EnrollmentFactory(state=state)
    response = node_client(enrollment.institution).post(
        url(enrollment.study), report(enrollment.study), format="json"
    )
    assert response.status_code == 200


def test_hospitals_outside_the_study_get_a_404(enrollment):
    study = enrollment.study
    declined = EnrollmentFactory(study=study, state=Enrollment.State.DECLINED).institution
    for institution in (declined, InstitutionFactory()):
        response = node_client(institution).post(url(study), report(study), format="json")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
    unknown = node_client(enrollment.institution).post(
        "/api/node/studies/no-such-study/readiness/", report(study), format="json"
    )
    assert unknown.status_code == 404
    assert not ReadinessReport.objects.exists()


def test_every_bad_field_is_named_and_nothing_is_written(enrollment):
    study = enrollment.study
    bad = report(
        study,
        protocol_sha256="ABC",
        consent_waiver="waived",
        rows_train=-1,
        rows_holdout=1.5,
        blockers=[{"code": "Not A Code", "reason": ""}, {"code": "x"}, "oops"],
        epsilon=1.0,
    )
    del bad["dataset_id"]

    response = node_client(enrollment.institution).post(url(study), bad, format="json")

    assert response.status_code == 400
    assert set(response.json()["error"]["fields"]) == {
        "dataset_id",
        "protocol_sha256",
        "consent_waiver",
        "rows_train",
        "rows_holdout",
        "blockers[0].code",
        "blockers[0].reason",
        "blockers[1].reason",
        "blockers[2]",
        "epsilon",
    }
    assert response.json()["error"]["fields"]["consent_waiver"] == [
        "send consent_sha256 or consent_waiver, not both"
    ]
    assert not ReadinessReport.objects.exists()
    assert not AuditEvent.objects.filter(action="privacy.readiness_reported").exists()
