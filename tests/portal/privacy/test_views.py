import re

import pytest
from django.urls import reverse

from hospitals.dp import PrivacyStep
from privacy.models import ReadinessReport
from runs.models import Run
from tests.portal.factories import (
    AdminFactory,
    InstitutionFactory,
    ResearcherFactory,
    StewardFactory,
    ledger_entry,
    mirror_ledger,
)
from tests.portal.runs.conftest import make_run, ready_study

pytestmark = pytest.mark.django_db


def spent(noise: float) -> PrivacyStep:
    return PrivacyStep(
        sample_rate=0.08, noise_multiplier=noise, steps=12, delta=1e-5, accountant="rdp"
    )


@pytest.fixture
def ledgers():
    """hospital-a's dataset spent ε in two runs of a portal study; hospital-b's in one other."""
    study = ready_study(slug="sepsis-2026")
    run, _ = make_run(study, state=Run.State.COMPLETED, flower_run_id="900")
    a = InstitutionFactory(slug="hospital-a")
    b = InstitutionFactory(slug="hospital-b")
    mirror_ledger(
        a,
        dataset_id="a-cohort-2025",
        cap=8.0,
        entries=tuple(
            ledger_entry(spent(noise), study_id="sepsis-2026", run_id=run_id, round_number=n)
            for run_id, noise in (("900", 1.1), ("901", 1.3))
            for n in (1, 2, 3)
        ),
    )
    mirror_ledger(
        b,
        dataset_id="b-secret-registry",
        entries=(ledger_entry(spent(1.0), study_id="other-study", run_id="55"),),
    )
    return study, run, a, b


def test_anonymous_users_are_sent_to_log_in(client):
    response = client.get("/privacy/")
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_a_steward_sees_only_their_hospitals_ledgers(client, ledgers):
    study, run, a, _ = ledgers
    client.force_login(StewardFactory(institution=a))

    html = client.get("/privacy/").content.decode()

    assert "a-cohort-2025" in html
    assert "b-secret-registry" not in html and "hospital-b" not in html
    assert "of the lifetime cap 8.00" in html
    assert html.count("<svg") == 1
    assert "rdp-balle2020" in html
    # The steward's hospital took part in run 900: it links to the portal's run page.
    assert f'href="/runs/{run.pk}/"' in html
    assert "Flower 901" in html
    assert 'aria-current="page">Privacy budgets' in html


def test_admins_see_every_hospital(client, ledgers):
    client.force_login(AdminFactory())
    html = client.get("/privacy/").content.decode()
    assert "a-cohort-2025" in html and "b-secret-registry" in html


def test_researchers_see_no_ledger(client, ledgers):
    study, *_ = ledgers
    client.force_login(study.owner)
    response = client.get("/privacy/")
    html = response.content.decode()
    assert response.status_code == 200
    assert "a-cohort-2025" not in html and "b-secret-registry" not in html
    assert "shown to the data stewards" in html
    assert "Privacy budgets</a>" not in client.get("/").content.decode()


def test_the_study_page_shows_the_preflight_to_its_owner_with_rounded_rows(client):
    study = ready_study()
    ReadinessReport.objects.filter(study=study).update(rows_train=403)
    client.force_login(study.owner)

    html = client.get(f"/studies/{study.pk}/").content.decode()

    assert "Privacy preflight" in html
    assert "Every hospital that approved the current protocol is ready" in html
    assert "≈400" in html and "403" not in html
    assert html.count('<span class="badge badge-approved">ready</span>') == 2
    assert "rdp · rdp-balle2020" in html
    assert "Start is blocked" not in html
    assert re.search(r"<button type=\"submit\">Start run</button>", html)


def test_a_blocked_start_says_why(client):
    study = ready_study()
    ReadinessReport.objects.filter(institution__slug="hospital-b").delete()
    client.force_login(study.owner)

    html = client.get(f"/studies/{study.pk}/").content.decode()

    assert "Start is blocked because…" in html
    assert "hospital-b: its node has not reported its readiness for this study" in html
    assert "disabled" in html.split("Start run")[0].rsplit("<button", 1)[1]

    response = client.post(f"/runs/start/{study.pk}/", follow=True)
    assert "Start is blocked because the privacy preflight" in response.content.decode()
    assert not Run.objects.exists()


def test_a_steward_sees_exact_rows_of_their_own_hospital_only(client):
    study = ready_study()
    ReadinessReport.objects.filter(study=study).update(rows_train=403)
    ReadinessReport.objects.filter(institution__slug="hospital-b").update(
        blockers=[{"code": "missing-key", "reason": "no key"}]
    )
    client.force_login(StewardFactory(institution=InstitutionFactory(slug="hospital-a")))

    html = client.get(f"/studies/{study.pk}/").content.decode()

    assert 'data-hospital="hospital-a"' in html and 'data-hospital="hospital-b"' not in html
    assert "403" in html
    assert "1 other hospital of this study is not shown to you" in html
    assert "other hospitals of this study still block the start" in html
    assert "missing-key" not in html


def test_other_users_see_no_preflight(client):
    study = ready_study()
    client.force_login(ResearcherFactory())
    assert client.get(f"/studies/{study.pk}/").status_code == 404
