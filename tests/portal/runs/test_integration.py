"""Fully real: a Celery worker process on embedded Redis drives a study on a local Flower
federation (SuperLink + three SuperNodes), and the ServerApp reports rounds to a live portal."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings

from core.models import AuditEvent
from demo.setup import STUDY_ID, Consortium
from federation.deployment import LocalFederation, ManagedProcess
from hospitals.protocol import ENCRYPTION, canonical_json
from institutions.models import Institution
from institutions.services import steward_add
from portal.celery import app as celery_app
from portal.embedded import EmbeddedRedis
from runs.models import HospitalRound, Round, Run
from runs.services import run_start
from studies.models import Study
from studies.services import enrollment_decide, study_create, study_invite, study_set_he_context
from tests.portal.factories import ResearcherFactory, UserFactory
from tests.servers import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]
CELERY = Path(sys.executable).parent / "celery"
RUN_TIMEOUT_S = 300


@dataclass
class Stack:
    redis: EmbeddedRedis
    federation: LocalFederation
    portal_url: str
    workdir: Path

    def worker(self, name: str, **env: str) -> ManagedProcess:
        db = settings.DATABASES["default"]
        return ManagedProcess(
            name,
            [str(CELERY), "-A", "portal", "worker", "--pool=solo", "--concurrency=1", "-l", "info"],
            log_path=self.workdir / f"{name}.log",
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join([str(REPO / "platform"), str(REPO)]),
                "DJANGO_SETTINGS_MODULE": "portal.settings.test",
                "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
                "COHORT_REDIS_URL": self.redis.url,
                "COHORT_SUPERLINK_ADDRESS": self.federation.address,
                "COHORT_FLWR_HOME": str(self.federation.flwr_home),
                "COHORT_PORTAL_URL": self.portal_url,
                **env,
            },
        )


@contextmanager
def portal_stack(consortium: Consortium, workdir: Path, portal_url: str) -> Iterator[Stack]:
    with ExitStack() as stack:
        redis = stack.enter_context(EmbeddedRedis(workdir=workdir))
        federation = stack.enter_context(
            LocalFederation(workdir=workdir / "federation", hospitals=consortium.hospitals)
        )
        # This process enqueues run_study_task (run_start); point its producer at the same Redis.
        previous = celery_app.conf.broker_url
        _reset_producers(broker_url=redis.url)
        try:
            yield Stack(redis, federation, portal_url, workdir)
        finally:
            _reset_producers(broker_url=previous)


def _reset_producers(*, broker_url: str) -> None:
    """Point this process's Celery producers at `broker_url`, dropping pooled connections."""
    if celery_app._pool is not None:
        celery_app._pool.force_close_all()
    celery_app._pool = None
    celery_app.amqp._producer_pool = None
    celery_app.conf.broker_url = broker_url


def ready_study(consortium: Consortium) -> Study:
    """The demo study set up through the portal's own services, up to `ready` with its HE key."""
    owner = ResearcherFactory()
    document = {k: v for k, v in consortium.protocol.document.items() if k != ENCRYPTION}
    study = study_create(
        owner=owner,
        title="Breast cancer demo",
        slug=STUDY_ID,
        protocol=json.loads(canonical_json(document)),
    )
    institutions = [
        Institution.objects.create(slug=spec.hospital, name=spec.hospital.title())
        for spec in consortium.hospitals
    ]
    enrollments = study_invite(study=study, institutions=institutions, actor=owner)
    for enrollment in enrollments:
        steward = UserFactory()
        steward_add(user=steward, institution=enrollment.institution)
        enrollment_decide(
            enrollment=enrollment,
            steward=steward,
            approve=True,
            protocol_sha256=study.protocol_sha256,
            comment="",
        )
    study_set_he_context(
        study=study,
        aggregator_context=consortium.key.aggregator_context().to_bytes(),
        institution=institutions[0],
    )
    study.refresh_from_db()
    assert study.state == Study.State.READY
    return study


def settled(run: Run) -> bool:
    """Finished, and the worker read Flower's final status (the aggregator may report first)."""
    run.refresh_from_db()
    return run.finished and "flower_status" in run.aggregator_facts


def log_of(process: ManagedProcess) -> str:
    return process.log_path.read_text(errors="replace")[-4000:]


@pytest.fixture
def no_proxy(monkeypatch):
    # The ServerApp reaches the live portal on loopback; a proxy from the environment must not.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.mark.django_db(transaction=True)
def test_a_worker_drives_a_two_round_run_reported_live(
    make_consortium, tmp_path, live_server, no_proxy
):
    consortium = make_consortium(rounds=2, round_timeout_s=45)
    study = ready_study(consortium)
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
    study = ready_study(consortium)
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
