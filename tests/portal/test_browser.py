"""The portal end to end in a real browser, on real parts: create, invite, approve, start, watch.

A researcher signs in and fills the create form with the demo consortium's protocol (its study id,
schema, model, training, privacy and federation settings, two rounds), invites the consortium's
three hospitals (hospital-a, -b, -c: the names in their SuperNodes' node config), and their
stewards, each in their own browser context, approve on the decision page. Hospital A's node
uploads the study's keyless HE context with its node token (`hospitals.portal_client.PortalClient`,
the node's own client); the key is the consortium's, the one the hospital nodes hold.

Behind the portal everything is real (`tests.portal.stack`): embedded Redis, a `celery -A portal
worker` process on the test's PostgreSQL database, and a local Flower federation (SuperLink and
three SuperNodes whose policies allow the study). "Start run" enqueues `run_study_task`; the worker
submits the run to the SuperLink, the hospitals train with differential privacy, and the ServerApp
reports each round to the live portal over HTTP with the run's token.

The open run page follows the run without reloading (a marker set in the page's JavaScript must
survive) and, when the run has finished, shows its charts (server-side SVG). Screenshots go to
var/screenshots/. At the end every process the test started has been stopped by PID.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.db import connections

from demo.setup import STUDY_ID, Consortium
from hospitals.portal_client import PortalClient
from institutions.selectors import RESEARCHERS_GROUP
from runs.models import HospitalRound, Round, Run
from studies.models import Study
from tests.portal.stack import (
    RUN_TIMEOUT_S,
    Hospital,
    draft_protocol,
    leftovers,
    log_of,
    nodes_report,
    pids_matching,
    portal_stack,
    seed_hospitals,
    settled,
)
from tests.servers import wait_until

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
ROUNDS = 2
UI_TIMEOUT_MS = 15_000
STRAYS = "flower-super|flwr-serverapp|flwr-clientapp|celery -A portal worker"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="Debian's chromium is needed at /usr/bin/chromium (make setup installs it)",
    ),
]


@pytest.fixture
def consortium(make_consortium) -> Consortium:
    """The demo consortium: three hospitals' data, node policies and the study's HE key."""
    return make_consortium(rounds=ROUNDS)


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
def people(transactional_db, consortium) -> dict[str, Any]:
    admin = User.objects.create_superuser("ada", password=PASSWORD)
    researcher = User.objects.create_user("rita", password=PASSWORD, first_name="Rita")
    researcher.groups.add(Group.objects.get_or_create(name=RESEARCHERS_GROUP)[0])
    hospitals = seed_hospitals(consortium, admin=admin, password=PASSWORD)
    return {"researcher": researcher, "hospitals": hospitals}


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


def fill_protocol(page: Any, protocol: dict[str, Any]) -> None:
    """The create form's protocol fields, set to `protocol` (the consortium's, without HE)."""
    training, privacy, federation = (
        protocol["training"],
        protocol["privacy"],
        protocol["federation"],
    )
    page.locator("#id_model").select_option(protocol["model"]["name"])
    page.locator("#id_accountant").select_option(privacy["accountant"])
    fields = {
        "rounds": federation["rounds"],
        "min_hospitals": federation["min_hospitals"],
        "round_timeout_s": federation["round_timeout_s"],
        "target_epsilon": privacy["target_epsilon"],
        "delta": privacy["delta"],
        "max_grad_norm": privacy["max_grad_norm"],
        "local_epochs": training["local_epochs"],
        "batch_size": training["batch_size"],
        "learning_rate": training["learning_rate"],
        "seed": training["seed"],
        "holdout_fraction": training["holdout_fraction"],
        "schema": json.dumps(protocol["schema"], indent=2),
    }
    for name, value in fields.items():
        page.locator(f"#id_{name}").fill(str(value))


def wait_on_run(page: Any, selector: str, run: Run, stack_log: Any, *, timeout_s: float) -> None:
    """Wait for `selector` on the run page; fail early, with the worker log, if the run fails."""

    def shown() -> bool:
        if page.locator(selector).count() > 0:
            return True
        run.refresh_from_db()
        assert run.state != Run.State.FAILED, (run.reason, stack_log())
        return False

    wait_until(shown, timeout_s=timeout_s, what=f"{selector!r} on the page of run {run.pk}")


def test_a_study_from_creation_to_its_charts_in_the_browser(
    live_server, browser, people, consortium, tmp_path, no_proxy
):
    base = live_server.url
    hospitals: dict[str, Hospital] = people["hospitals"]
    protocol = draft_protocol(consortium)
    assert protocol["study_id"] == STUDY_ID
    assert sorted(hospitals) == ["hospital-a", "hospital-b", "hospital-c"]
    before = pids_matching(STRAYS)

    with portal_stack(consortium, tmp_path, live_server.url) as stack:
        worker = stack.worker("worker")
        try:
            run, elapsed = drive_a_study(browser, base, hospitals, consortium, protocol, worker)
        finally:
            worker.stop()
        assert not worker.alive()

    # Every process the stack started (workers, SuperNodes, the SuperLink and theirs) is gone.
    assert leftovers(stack, pattern=STRAYS, before=before) == []

    # The run was real: the three hospitals trained, each with its own growing privacy budget.
    assert run.state == Run.State.COMPLETED, (run.reason, log_of(worker))
    assert run.flower_run_id is not None
    assert run.aggregator_facts["flower_status"]["status"] == "finished:completed"
    assert run.aggregator_facts["has_secret_key"] is False
    assert run.aggregator_facts["he_context_fingerprint"] == consortium.key.fingerprint
    assert list(Round.objects.filter(run=run).values_list("number", flat=True)) == [1, 2]
    by_hospital: dict[str, list[float]] = {}
    for row in HospitalRound.objects.filter(round__run=run).order_by("round__number"):
        by_hospital.setdefault(row.hospital, []).append(row.epsilon)
    assert sorted(by_hospital) == ["hospital-a", "hospital-b", "hospital-c"]
    assert all(0 < first < second <= 3.003 for first, second in by_hospital.values())
    print(f"two-round run, from Start run to the charts, in {elapsed:.1f} s")


def drive_a_study(
    browser: Any,
    base: str,
    hospitals: dict[str, Hospital],
    consortium: Consortium,
    protocol: dict[str, Any],
    worker: Any,
) -> tuple[Run, float]:
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

    # ... creates the consortium's study with the form ...
    page.get_by_role("link", name="New study").first.click()
    page.get_by_label("Title").fill("Breast cancer risk")
    page.get_by_label("Slug").fill(STUDY_ID)
    fill_protocol(page, protocol)
    shot(page, "study-create.png")
    page.get_by_role("button", name="Create").click()
    page.wait_for_url(f"{base}/studies/*/")
    study = Study.objects.get(slug=STUDY_ID)
    assert study.state == Study.State.DRAFT
    assert study.protocol == protocol, "the form did not submit the consortium's protocol"

    # ... and invites the three hospitals.
    for hospital in hospitals.values():
        page.get_by_label(hospital.institution.name).check()
    page.get_by_role("button", name="Invite").click()
    page.get_by_text("Hospitals invited.").wait_for()
    shot(page, "study-invited.png")

    # Each steward, in a browser of their own, finds the invitation and approves the protocol.
    for slug, hospital in hospitals.items():
        steward_context = browser.new_context(viewport={"width": 1280, "height": 900})
        steward_page = steward_context.new_page()
        steward_page.set_default_timeout(UI_TIMEOUT_MS)
        sign_in(steward_page, base, hospital.steward.username)
        if slug == "hospital-a":
            shot(steward_page, "dashboard-steward.png")
        steward_page.get_by_role("link", name="Review").click()
        steward_page.get_by_text(STUDY_ID).first.wait_for()
        if slug == "hospital-a":
            shot(steward_page, "steward-decision.png")
        steward_page.get_by_role("button", name="Approve").click()
        steward_page.get_by_text("Decision recorded").wait_for()
        steward_context.close()

    # Hospital A's node pins the study's keyless HE context (its own client, its token): the
    # public half of the key the hospital nodes hold.
    node = PortalClient(base_url=base, token=hospitals["hospital-a"].node_token)
    node.upload_he_context(
        study_slug=STUDY_ID, aggregator_context=consortium.key.aggregator_context().to_bytes()
    )
    study.refresh_from_db()
    assert study.state == Study.State.READY
    assert study.he_context_fingerprint == consortium.key.fingerprint

    # Every node reports its ledger and readiness; the study page shows the privacy preflight.
    nodes_report(consortium, hospitals, base)

    # The researcher starts the run from the study page and lands on the live run page.
    page.reload()
    page.get_by_text("Privacy preflight").first.wait_for()
    shot(page, "study-preflight.png")
    started = time.monotonic()
    page.get_by_role("button", name="Start run").click()
    page.wait_for_url(f"{base}/runs/*/")
    page.evaluate("window.__cohortNotReloaded = true")
    run = Run.objects.get(study=study)

    # The worker submits to the SuperLink, the hospitals train, the ServerApp reports each round,
    # and the open page follows without reloading.
    def stack_log() -> str:
        return log_of(worker)

    # Rounds can end faster than the page refreshes, so it need not show every count.
    some_rounds = f".progress-label:text-matches('^[1-9][0-9]* of {ROUNDS} rounds$')"
    all_rounds = f".progress-label:text('{ROUNDS} of {ROUNDS} rounds')"
    for label in (some_rounds, all_rounds):
        wait_on_run(page, label, run, stack_log, timeout_s=RUN_TIMEOUT_S)
        assert page.evaluate("window.__cohortNotReloaded === true"), "the page reloaded"
        if label == some_rounds:
            shot(page, "run-page-live.png")

    # The finished run shows its charts.
    completed = ".run-live[data-state='completed']"
    wait_on_run(page, completed, run, stack_log, timeout_s=RUN_TIMEOUT_S)
    page.locator(".chart svg").first.wait_for()
    assert page.evaluate("window.__cohortNotReloaded === true"), "the page reloaded"
    elapsed = time.monotonic() - started
    wait_until(lambda: settled(run), timeout_s=60, what=f"the worker to settle run {run.pk}")
    run.refresh_from_db()
    assert run.state == Run.State.COMPLETED
    assert run.rounds.count() == ROUNDS
    # Each round has a row per hospital with the ε it has spent so far.
    rows = page.locator("tr.hospital-row td:nth-child(2)").all_inner_texts()
    assert sorted(rows) == sorted(list(hospitals) * ROUNDS), rows
    epsilons = [float(text) for text in page.locator("td.epsilon").all_inner_texts()]
    assert len(epsilons) == len(hospitals) * ROUNDS and all(0 < e <= 3.003 for e in epsilons)
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
    return run, elapsed
