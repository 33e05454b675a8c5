import base64
import io

import numpy as np
import pytest
from rest_framework.test import APIClient

from core.tokens import issue_token
from institutions.models import Institution, NodeToken
from runs.models import ModelRelease, ReleaseApproval, Round, Run
from runs.services import run_record_event
from tests.portal.factories import AdminFactory, ResearcherFactory
from tests.portal.runs.conftest import make_run, ready_study, round_event, steward_of

pytestmark = pytest.mark.django_db


def aggregator(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Run {token}")
    return client


def logged_in(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def node(slug: str) -> APIClient:
    token = issue_token("node")
    NodeToken.objects.create(
        institution=Institution.objects.get(slug=slug),
        label="node",
        prefix=token.prefix,
        digest=token.digest,
        created_by=AdminFactory(),
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Node {token.raw}")
    return client


def test_the_aggregator_posts_its_rounds(study):
    run, token = make_run(study)
    url = f"/api/runs/{run.pk}/events/"
    for _ in range(2):
        response = aggregator(token).post(url, round_event(1), format="json")
        assert response.status_code == 202, response.json()
    assert Round.objects.filter(run=run).count() == 1


def test_a_malformed_event_is_a_400_in_the_error_shape(study):
    run, token = make_run(study)
    response = aggregator(token).post(
        f"/api/runs/{run.pk}/events/", round_event(1) | {"seconds": -1}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["error"]["fields"]["seconds"]
    assert not Round.objects.exists()


def test_a_run_token_cannot_report_for_another_run(study):
    run_a, token_a = make_run(study)
    run_b, _ = make_run(ready_study())
    response = aggregator(token_a).post(
        f"/api/runs/{run_b.pk}/events/", round_event(1), format="json"
    )
    assert response.status_code == 403
    assert not Round.objects.exists()


@pytest.mark.parametrize("state", [Run.State.COMPLETED, Run.State.FAILED, Run.State.CANCELLED])
def test_a_finished_runs_token_is_spent(study, state):
    run, token = make_run(study, state=state)
    response = aggregator(token).post(f"/api/runs/{run.pk}/events/", round_event(1), format="json")
    assert response.status_code == 401


def test_unknown_or_missing_tokens_and_session_users_are_refused(study):
    run, token = make_run(study)
    url = f"/api/runs/{run.pk}/events/"
    assert aggregator(token[:-2] + "xx").post(url, round_event(1), format="json").status_code == 401
    assert APIClient().post(url, round_event(1), format="json").status_code == 401
    owner = logged_in(study.owner).post(url, round_event(1), format="json")
    assert owner.status_code in (401, 403)


def test_the_owner_starts_reads_and_cancels_a_run_over_the_api(study, monkeypatch):
    monkeypatch.setattr("runs.tasks.run_study_task.delay", lambda run_id: None)
    client = logged_in(study.owner)
    started = client.post("/api/runs/", {"study": study.pk}, format="json")
    assert started.status_code == 201, started.json()
    run_id = started.json()["id"]
    run_record_event(run=Run.objects.get(pk=run_id), event=round_event(1))

    detail = client.get(f"/api/runs/{run_id}/").json()
    assert detail["state"] == "running"
    assert detail["rounds_done"] == 1
    (round_,) = detail["rounds"]
    assert {h["hospital"]: h["epsilon"] for h in round_["hospitals"]} == {
        "hospital-a": 1.0,
        "hospital-b": 1.0,
    }
    cancelled = client.post(f"/api/runs/{run_id}/cancel/", {"reason": "enough"}, format="json")
    assert cancelled.status_code == 200
    assert cancelled.json()["state"] == "cancelled"
    again = client.post(f"/api/runs/{run_id}/cancel/", {}, format="json")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "conflict"


def test_outsiders_get_404_and_stewards_cannot_cancel(study):
    run, _ = make_run(study)
    assert logged_in(ResearcherFactory()).get(f"/api/runs/{run.pk}/").status_code == 404
    steward = logged_in(steward_of("hospital-a"))
    assert steward.get(f"/api/runs/{run.pk}/").status_code == 200
    assert steward.post(f"/api/runs/{run.pk}/cancel/", {}, format="json").status_code == 403


def npz_b64() -> str:
    buffer = io.BytesIO()
    np.savez(buffer, parameters=np.arange(4.0))
    return base64.b64encode(buffer.getvalue()).decode()


def test_release_needs_approvals_then_the_owner_downloads(study):
    run, _ = make_run(study)
    for number in (1, 2):
        run_record_event(run=run, event=round_event(number))
    Run.objects.filter(pk=run.pk).update(state=Run.State.COMPLETED)
    release = {"parameters": npz_b64(), "privacy_report": {"hospital-a": {"epsilon": 2.0}}}
    release_url = f"/api/node/runs/{run.pk}/release/"

    early = node("hospital-a").post(release_url, release, format="json")
    assert early.status_code == 409
    assert "0 of the 1 steward approvals" in early.json()["error"]["message"]

    outsider = steward_of("hospital-z")
    assert (
        logged_in(outsider)
        .post(f"/api/runs/{run.pk}/release-approvals/", {}, format="json")
        .status_code
        == 404
    )
    approved = logged_in(steward_of("hospital-b")).post(
        f"/api/runs/{run.pk}/release-approvals/", {}, format="json"
    )
    assert approved.status_code == 201, approved.json()
    assert ReleaseApproval.objects.get(run=run).institution.slug == "hospital-b"

    bad = node("hospital-a").post(
        release_url, release | {"parameters": "bm90IGEgemlw"}, format="json"
    )
    assert bad.status_code == 400
    uploaded = node("hospital-a").post(release_url, release, format="json")
    assert uploaded.status_code == 201, uploaded.json()
    assert node("hospital-a").post(release_url, release, format="json").status_code == 409

    download = logged_in(study.owner).get(f"/api/runs/{run.pk}/release/model/")
    assert download.status_code == 200
    assert download.content == bytes(ModelRelease.objects.get(run=run).parameters)
    assert np.load(io.BytesIO(download.content))["parameters"].tolist() == [0.0, 1.0, 2.0, 3.0]
    steward = logged_in(steward_of("hospital-b"))
    assert steward.get(f"/api/runs/{run.pk}/release/model/").status_code == 404


def test_a_node_that_did_not_take_part_cannot_release(study):
    run, _ = make_run(study, state=Run.State.COMPLETED)
    Institution.objects.create(slug="hospital-c", name="C")
    response = node("hospital-c").post(
        f"/api/node/runs/{run.pk}/release/",
        {"parameters": npz_b64(), "privacy_report": {"x": 1}},
        format="json",
    )
    assert response.status_code == 403


def test_the_schema_documents_the_run_endpoints(admin_client):
    schema = admin_client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    for path in (
        "/api/runs/",
        "/api/runs/{run_id}/",
        "/api/runs/{run_id}/events/",
        "/api/runs/{run_id}/cancel/",
        "/api/runs/{run_id}/release-approvals/",
        "/api/runs/{run_id}/release/model/",
        "/api/node/runs/{run_id}/release/",
    ):
        assert path in schema["paths"], path
