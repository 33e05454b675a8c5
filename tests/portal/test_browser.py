"""The portal end to end in a real browser: create, invite, approve, start, watch, read the result.

Everything up to "Start run" is real: a researcher signs in and fills the create form, invites two
hospitals, their stewards (each in their own browser context) approve on the decision page, and a
hospital node uploads the study's keyless HE context over the node API with its node token
(`hospitals.portal_client.PortalClient`, the node's own client).

The federation is played by the test, through the same interfaces the real one uses:

* "Start run" commits the run and enqueues `run_study_task` on commit. Here `delay` runs the task's
  body, `runs.services.run_drive`, in a thread (what a Celery worker does) with a fake Flower
  Control API: it accepts the submission, keeps the run config the portal wrote (the events URL and
  the run-scoped token) and reports the Flower run as running until the test lets it finish.
* The aggregator's progress reaches the portal exactly as the ServerApp sends it:
  `aggregator.results.HttpResultsSink` POSTs `run-started`, one `round` event per round and
  `run-finished` to `/api/runs/{id}/events/` with `Authorization: Run <token>`.

The test posts one round at a time and waits for the open run page to show it, with a marker set in
the page's JavaScript to prove that the page updated in place, never reloading. When the run is
finished the page shows its charts (server-side SVG). Screenshots go to var/screenshots/.
"""

from __future__ import annotations

import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.db import connection, connections

from aggregator.results import HospitalRound, HttpResultsSink, RoundResult
from crypto.keys import SecretContext
from federation.control import RunStatus
from hospitals.portal_client import PortalClient
from institutions.selectors import RESEARCHERS_GROUP
from institutions.services import institution_create, node_token_issue, steward_add
from runs import services as run_services
from runs.models import Run
from studies.models import Study

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "var" / "screenshots"
PASSWORD = "browser-test-password-1"
ROUNDS = 3
HOSPITALS = ("hospital-a", "hospital-b")
UI_TIMEOUT_MS = 15_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="Debian's chromium is needed at /usr/bin/chromium (make setup installs it)",
    ),
]


@dataclass
class FakeFlower:
    """The SuperLink's Control API as runs.services sees it; the test decides when the run ends."""

    submitted: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    run_config: dict[str, Any] = field(default_factory=dict)
    flower_run_id: int = 4242

    def submit(self, run_config: Path) -> int:
        self.run_config = tomllib.loads(run_config.read_text())
        self.submitted.set()
        return self.flower_run_id

    def status(self, run_id: int) -> RunStatus:
        status = "finished:completed" if self.finished.is_set() else "running"
        return RunStatus(run_id=run_id, status=status, details="")

    def stop(self, run_id: int) -> None:
        self.finished.set()


@pytest.fixture
def fake_worker(live_server, monkeypatch, settings, tmp_path) -> Iterator[FakeFlower]:
    """`run_study_task.delay` runs the task body in a thread, against a fake Flower."""
    from runs.tasks import run_study_task

    settings.COHORT_FLWR_HOME = tmp_path / "flwr-home"
    settings.COHORT_PORTAL_URL = live_server.url
    flower = FakeFlower()
    threads: list[threading.Thread] = []

    def drive(run_id: int) -> None:
        try:
            run_services.run_drive(run_id=run_id, control=flower, poll_s=0.2)
        finally:
            connection.close()

    def delay(run_id: int) -> None:
        thread = threading.Thread(target=drive, args=(run_id,), name=f"worker-run-{run_id}")
        threads.append(thread)
        thread.start()

    monkeypatch.setattr(run_study_task, "delay", delay)
    yield flower
    flower.finished.set()
    for thread in threads:
        thread.join(timeout=10)


@pytest.fixture
def browser(monkeypatch) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop on this thread, where Django would refuse the
    # test's own ORM reads; they are plain synchronous calls, so they are safe here.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()
            # Code that runs while Playwright is active has its own context, and so its own
            # database connections: close them here, or the test database cannot be dropped.
            connections.close_all()


@pytest.fixture
def people(transactional_db) -> dict[str, Any]:
    admin = User.objects.create_superuser("ada", password=PASSWORD)
    researcher = User.objects.create_user("rita", password=PASSWORD, first_name="Rita")
    researcher.groups.add(Group.objects.get_or_create(name=RESEARCHERS_GROUP)[0])
    stewards, node_tokens = {}, {}
    for slug in HOSPITALS:
        label = slug.split("-")[1].upper()
        hospital = institution_create(name=f"Hospital {label}", slug=slug, actor=admin)
        steward = User.objects.create_user(f"steward-{slug}", password=PASSWORD)
        steward_add(user=steward, institution=hospital, actor=admin)
        stewards[slug] = steward
        node_tokens[slug] = node_token_issue(institution=hospital, label="node", actor=admin)[1]
    return {"researcher": researcher, "stewards": stewards, "node_tokens": node_tokens}


def sign_in(page: Any, base_url: str, username: str, *, screenshot: str = "") -> None:
    page.goto(f"{base_url}/")
    if screenshot:
        shot(page, screenshot)
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{base_url}/")


def shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name), full_page=True)


def round_event(number: int) -> RoundResult:
    auc = 0.80 + 0.04 * number
    return RoundResult(
        round=number,
        participants=list(HOSPITALS),
        dropped={},
        metrics={"loss": 0.7 - 0.1 * number, "accuracy": auc - 0.05, "roc_auc": auc},
        hospitals=[
            HospitalRound(
                hospital=slug,
                epsilon=(0.9 if slug == HOSPITALS[0] else 0.7) * number,
                noise_multiplier=1.1,
                sample_rate=0.05,
                steps=20 * number,
                delta=1e-5,
                accountant="rdp",
                rows_rounded=200,
                bytes_up=1_200_000,
                train_seconds=1.5,
                metrics={"loss": 0.7 - 0.1 * number, "accuracy": auc - 0.06, "roc_auc": auc},
            )
            for slug in HOSPITALS
        ],
        bytes_down=2_400_000,
        seconds=4.0,
    )


def test_a_study_from_creation_to_its_charts_in_the_browser(
    live_server, browser, people, fake_worker
):
    base = live_server.url
    researcher_context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = researcher_context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)

    # The researcher signs in: the dashboard is styled by the portal's stylesheet.
    sign_in(page, base, "rita", screenshot="login.png")
    stylesheet = page.request.get(f"{base}/static/portal/portal.css")
    assert stylesheet.ok and "--accent" in stylesheet.text()
    topbar_border = "getComputedStyle(document.querySelector('.topbar')).borderBottomStyle"
    assert page.evaluate(topbar_border) == "solid", "portal.css is not applied"
    shot(page, "dashboard-researcher-empty.png")

    # ... creates a study with the form (its defaults are the demo's protocol) ...
    page.get_by_role("link", name="New study").first.click()
    page.get_by_label("Title").fill("Sepsis early warning")
    page.get_by_label("Slug").fill("sepsis-2026")
    page.get_by_label("Rounds").fill(str(ROUNDS))
    page.get_by_label("Min hospitals").fill(str(len(HOSPITALS)))
    shot(page, "study-create.png")
    page.get_by_role("button", name="Create").click()
    page.wait_for_url(f"{base}/studies/*/")
    study = Study.objects.get(slug="sepsis-2026")
    assert study.state == Study.State.DRAFT

    # ... and invites both hospitals.
    for slug in HOSPITALS:
        page.get_by_label(f"Hospital {slug.split('-')[1].upper()}").check()
    page.get_by_role("button", name="Invite").click()
    page.get_by_text("Hospitals invited.").wait_for()
    shot(page, "study-invited.png")

    # Each steward, in a browser of their own, finds the invitation and approves the protocol.
    for slug, steward in people["stewards"].items():
        steward_context = browser.new_context(viewport={"width": 1280, "height": 900})
        steward_page = steward_context.new_page()
        steward_page.set_default_timeout(UI_TIMEOUT_MS)
        sign_in(steward_page, base, steward.username)
        if slug == HOSPITALS[0]:
            shot(steward_page, "dashboard-steward.png")
        steward_page.get_by_role("link", name="Review").click()
        steward_page.get_by_text("sepsis-2026").first.wait_for()
        if slug == HOSPITALS[0]:
            shot(steward_page, "steward-decision.png")
        steward_page.get_by_role("button", name="Approve").click()
        steward_page.get_by_text("Decision recorded").wait_for()
        steward_context.close()

    # The first hospital's node pins the study's keyless HE context (its own client, its token).
    node = PortalClient(base_url=base, token=people["node_tokens"][HOSPITALS[0]])
    node.upload_he_context(
        study_slug="sepsis-2026",
        aggregator_context=SecretContext.generate().aggregator_context().to_bytes(),
    )
    study.refresh_from_db()
    assert study.state == Study.State.READY

    # The researcher starts the run from the study page and lands on the live run page.
    page.reload()
    page.get_by_role("button", name="Start run").click()
    page.wait_for_url(f"{base}/runs/*/")
    run = Run.objects.get(study=study)
    assert fake_worker.submitted.wait(timeout=20), "the worker never submitted the run"
    config = fake_worker.run_config
    assert config["results-url"] == f"{base}/api/runs/{run.pk}/events/"

    # From here the aggregator reports, and the open page follows without reloading.
    page.evaluate("window.__cohortNotReloaded = true")
    sink = HttpResultsSink(config["results-url"], config["results-token"])
    sink.run_started(
        study_id="sepsis-2026",
        run_id=str(fake_worker.flower_run_id),
        rounds=ROUNDS,
        min_hospitals=len(HOSPITALS),
        aggregator={
            "he_context_fingerprint": study.he_context_fingerprint,
            "he_context_bytes": len(bytes(study.he_aggregator_context or b"")),
            "has_secret_key": False,
        },
    )
    for number in range(1, ROUNDS + 1):
        sink.round_completed(round_event(number))
        page.get_by_text(f"{number} of {ROUNDS} rounds").wait_for()
        assert page.evaluate("window.__cohortNotReloaded === true"), "the page reloaded"
        if number == 2:
            shot(page, "run-page-live.png")
    sink.run_finished(status="completed")
    fake_worker.finished.set()

    # The finished run shows its charts.
    page.locator(".run-live[data-state='completed']").wait_for()
    page.locator(".chart svg").first.wait_for()
    assert page.evaluate("window.__cohortNotReloaded === true"), "the page reloaded"
    run.refresh_from_db()
    assert run.state == Run.State.COMPLETED
    assert run.rounds.count() == ROUNDS
    shot(page, "run-page.png")

    # Back on the dashboard, the study is completed and its latest run is at 100 %.
    page.get_by_role("link", name="Dashboard", exact=True).click()
    page.get_by_text(f"round {ROUNDS} of {ROUNDS}").wait_for()
    shot(page, "dashboard-researcher.png")
    researcher_context.close()

    # The administrator's dashboard counts what happened.
    admin_context = browser.new_context(viewport={"width": 1280, "height": 900})
    admin_page = admin_context.new_page()
    sign_in(admin_page, base, "ada")
    admin_page.get_by_role("link", name="Admin console").wait_for()
    shot(admin_page, "dashboard-admin.png")
    admin_context.close()
