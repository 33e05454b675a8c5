import pytest

from runs.charts import Series, epsilon_chart, line_chart
from runs.models import Round, Run
from runs.services import run_record_event
from tests.portal.factories import AdminFactory, ResearcherFactory
from tests.portal.runs.conftest import make_run, round_event, steward_of

pytestmark = pytest.mark.django_db


def test_the_live_run_page_shows_progress_rounds_and_charts(client, study):
    run, _ = make_run(study)
    run_record_event(run=run, event=round_event(1))
    client.force_login(study.owner)

    page = client.get(f"/runs/{run.pk}/")
    html = page.content.decode()
    assert page.status_code == 200
    assert f'data-live-url="/runs/{run.pk}/live/"' in html
    assert "1 of 2 rounds" in html
    assert 'style="width: 50%"' in html
    assert "dropped: no reply within 60 s" in html
    assert html.count("<svg") == 2
    assert "Cancel run" in html
    assert "cdn" not in html.lower()

    fragment = client.get(f"/runs/{run.pk}/live/")
    assert fragment.status_code == 200
    assert fragment["Cache-Control"] == "no-store"
    assert 'data-finished="false"' in fragment.content.decode()
    assert "<html" not in fragment.content.decode()


def test_who_sees_a_run_page(client, study):
    run, _ = make_run(study)
    for user, status in [
        (ResearcherFactory(), 404),
        (steward_of("hospital-unrelated"), 404),
        (steward_of("hospital-a"), 200),
        (AdminFactory(), 200),
    ]:
        client.force_login(user)
        assert client.get(f"/runs/{run.pk}/").status_code == status
        assert client.get(f"/runs/{run.pk}/live/").status_code == status


def test_start_redirects_to_the_run_page_and_cancel_finishes_it(client, study, monkeypatch):
    monkeypatch.setattr("runs.tasks.run_study_task.delay", lambda run_id: None)
    client.force_login(study.owner)
    response = client.post(f"/runs/start/{study.pk}/")
    run = Run.objects.get(study=study)
    assert response.status_code == 302
    assert response["Location"] == f"/runs/{run.pk}/"

    assert client.post(f"/runs/{run.pk}/cancel/").status_code == 302
    run.refresh_from_db()
    assert run.state == Run.State.CANCELLED
    finished = client.get(f"/runs/{run.pk}/live/").content.decode()
    assert 'data-finished="true"' in finished
    assert "Cancel run" not in finished


def test_a_refused_start_goes_back_to_the_study_with_the_reason(client, study):
    client.force_login(ResearcherFactory())
    assert client.post(f"/runs/start/{study.pk}/").status_code == 404
    client.force_login(study.owner)
    study.state = "recruiting"
    study.save()
    response = client.post(f"/runs/start/{study.pk}/", follow=True)
    assert "starts only from ready" in response.content.decode()
    assert not Run.objects.exists()


def test_stewards_approve_the_release_from_the_page(client, study):
    run, _ = make_run(study)
    for number in (1, 2):
        run_record_event(run=run, event=round_event(number))
    Run.objects.filter(pk=run.pk).update(state=Run.State.COMPLETED)
    client.force_login(steward_of("hospital-a"))
    assert "Approve release for" in client.get(f"/runs/{run.pk}/").content.decode()
    client.post(f"/runs/{run.pk}/release/approve/", {"institution": "hospital-a"})
    assert run.release_approvals.get().institution.slug == "hospital-a"
    assert "Approve release for" not in client.get(f"/runs/{run.pk}/").content.decode()
    assert client.get(f"/runs/{run.pk}/release/model/").status_code == 404


def test_charts_are_escaped_svg_without_scripts(study):
    svg = line_chart(
        title="<script>x</script>",
        series=[Series("<b>a</b>", [(1.0, 0.5), (2.0, 0.7)])],
        x_label="Round",
        y_label="ε",
    )
    assert svg.startswith("<svg") and "<script>" not in svg and "&lt;b&gt;" in svg
    assert "no data yet" in line_chart(title="t", series=[], x_label="x", y_label="y")
    run, _ = make_run(study)
    run_record_event(run=run, event=round_event(1))
    run_record_event(run=run, event=round_event(2))
    chart = epsilon_chart(list(Round.objects.prefetch_related("hospitals")))
    assert chart.count("<polyline") == 2 and "hospital-a" in chart
