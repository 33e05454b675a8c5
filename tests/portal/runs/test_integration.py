"""Fully real: a Celery worker process on embedded Redis drives a study on a local Flower
federation (SuperLink + three SuperNodes), and the ServerApp reports rounds to a live portal."""

from __future__ import annotations

import re
import time

import pytest
from django.contrib.auth.models import User

from core.models import AuditEvent
from demo.setup import Consortium
from runs.models import HospitalRound, Round, Run
from runs.services import run_start
from studies.models import Study
from tests.portal.stack import (
    RUN_TIMEOUT_S,
    approved_study,
    log_of,
    nodes_report,
    portal_stack,
    seed_hospitals,
    settled,
)
from tests.servers import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def ready_study(consortium: Consortium, portal_url: str) -> Study:
    """The demo study up to `ready` with its HE key, and every node's report in (ledger,
    readiness) so the privacy preflight can pass."""
    hospitals = seed_hospitals(consortium, admin=User.objects.create_superuser("admin"))
    study = approved_study(consortium, hospitals)
    nodes_report(consortium, hospitals, portal_url)
    study.refresh_from_db()
    assert study.state == Study.State.READY
    return study


@pytest.mark.django_db(transaction=True)
def test_a_worker_drives_a_two_round_run_reported_live(
    make_consortium, tmp_path, live_server, no_proxy
):
    consortium = make_consortium(rounds=2, round_timeout_s=45)
    study = ready_study(consortium, live_server.url)
    with portal_stack(consortium, tmp_path, live_server.url) as stack:
        worker = stack.worker("worker")
        try:
            started = time.monotonic()
            run = run_start(study=study, actor=study.owner)
            wait_until(lambda: settled(run), timeout_s=RUN_TIMEOUT_S, what=f"run {run.pk}")
            elapsed = time.monotonic() - started
        finally:
            worker.stop()
        assert not worker.alive()

    run.refresh_from_db()
    study.refresh_from_db()
    assert run.state == Run.State.COMPLETED, (run.reason, log_of(worker))
    assert study.state == Study.State.COMPLETED
    assert run.flower_run_id is not None
    assert run.aggregator_facts["has_secret_key"] is False
    assert run.aggregator_facts["he_context_fingerprint"] == study.he_context_fingerprint
    assert run.aggregator_facts["flower_status"]["status"] == "finished:completed"
    assert list(Round.objects.filter(run=run).values_list("number", flat=True)) == [1, 2]
    epsilons = HospitalRound.objects.filter(round__run=run)
    assert epsilons.count() == 6
    assert all(0 < row.epsilon <= 3.003 and row.institution is not None for row in epsilons)
    by_hospital = {}
    for row in epsilons.order_by("round__number"):
        by_hospital.setdefault(row.hospital, []).append(row.epsilon)
    assert sorted(by_hospital) == ["hospital-a", "hospital-b", "hospital-c"]
    assert all(first < second for first, second in by_hospital.values())
    assert Round.objects.get(run=run, number=2).metrics["roc_auc"] > 0.8
    print(f"two-round run driven by the worker in {elapsed:.1f} s")


@pytest.mark.django_db(transaction=True)
def test_a_killed_worker_is_replaced_and_the_run_completes_once(
    make_consortium, tmp_path, live_server, no_proxy
):
    consortium = make_consortium(rounds=2, round_timeout_s=45)
    study = ready_study(consortium, live_server.url)
    visibility = {"COHORT_CELERY_VISIBILITY_TIMEOUT_S": "8"}
    with portal_stack(consortium, tmp_path, live_server.url) as stack:
        first = stack.worker("worker-1", **visibility)
        second = None
        try:
            run = run_start(study=study, actor=study.owner)
            wait_until(
                lambda: Run.objects.filter(pk=run.pk, flower_run_id__isnull=False).exists(),
                timeout_s=120,
                what="submission to Flower",
            )
            first.kill()  # mid-run: the task was never acknowledged
            assert not first.alive()
            second = stack.worker("worker-2", **visibility)
            wait_until(lambda: settled(run), timeout_s=RUN_TIMEOUT_S, what=f"run {run.pk}")
            rounds_when_finished = Round.objects.filter(run=run).count()
        finally:
            first.stop()
            if second is not None:
                second.stop()

    run.refresh_from_db()
    assert run.state == Run.State.COMPLETED, (run.reason, log_of(first), log_of(second))
    assert rounds_when_finished == 2
    assert list(Round.objects.filter(run=run).values_list("number", flat=True)) == [1, 2]
    assert HospitalRound.objects.filter(round__run=run).count() == 6
    # Submitted once; the redelivered task followed the same Flower run to its end.
    assert AuditEvent.objects.filter(action="run.submitted", target_id=str(run.pk)).count() == 1
    assert run.aggregator_facts["flower_status"]["status"] == "finished:completed"
    # The very task that died with the first worker, redelivered to the second.
    (task_id,) = re.findall(r"run_study_task\[([0-9a-f-]+)\] received", log_of(first))
    assert f"run_study_task[{task_id}] received" in log_of(second)
    assert f"run_study_task[{task_id}] succeeded" in log_of(second)
