"""The real parts behind the portal for end-to-end tests, shared by the worker and browser tests.

`portal_stack` starts embedded Redis and the demo consortium's local Flower federation (SuperLink
and one SuperNode per hospital); `Stack.worker` starts a real `celery -A portal worker` process
pointed at that Redis, that SuperLink, the test's PostgreSQL database and the live portal. Every
process runs in its own process group and is stopped by PID when the stack closes.

`seed_hospitals` gives each of the consortium's hospitals (hospital-a, -b, -c: the names in the
SuperNodes' node config) its institution, a data steward and a node token; `draft_protocol` is the
consortium's protocol as a researcher submits it (no encryption block: a hospital adds the key);
`approved_study` takes it through creation, approvals and the key pin; `nodes_report` sends each
node's ledger and readiness, as `cohort-hospital heartbeat` does, so the privacy preflight passes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User

from demo.setup import STUDY_ID, Consortium
from federation.deployment import LocalFederation, ManagedProcess
from hospitals.portal_client import PortalClient
from hospitals.protocol import ENCRYPTION, canonical_json
from hospitals.reporting import report_to_portal
from institutions.models import Institution
from institutions.services import (
    institution_create,
    node_heartbeat,
    node_token_issue,
    steward_add,
)
from portal.celery import app as celery_app
from portal.embedded import EmbeddedRedis
from runs.models import Run
from studies.models import Study
from studies.services import enrollment_decide, study_create, study_invite, study_set_he_context
from tests.portal.factories import ResearcherFactory

REPO = Path(__file__).resolve().parents[2]
CELERY = Path(sys.executable).parent / "celery"
RUN_TIMEOUT_S = 300


@dataclass
class Stack:
    redis: EmbeddedRedis
    federation: LocalFederation
    portal_url: str
    workdir: Path
    workers: list[ManagedProcess] = field(default_factory=list)
    stopped: set[int] = field(default_factory=set)  # every PID `stop` saw, for the final check

    def worker(self, name: str, **env: str) -> ManagedProcess:
        db = settings.DATABASES["default"]
        process = ManagedProcess(
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
        self.workers.append(process)
        return process

    def processes(self) -> list[ManagedProcess]:
        """Every child this stack started: workers, SuperNodes and the SuperLink."""
        federation = [*self.federation.supernodes.values(), self.federation.superlink]
        return [*self.workers, *(p for p in federation if p is not None)]

    def stop_workers(self) -> None:
        for worker in self.workers:
            worker.stop()

    def stop(self) -> None:
        """Workers, then the federation, then whatever they started outside their own groups.

        The SuperLink's SuperExec runs in a session of its own (Flower starts it so), out of
        reach of the SuperLink's process group: it is found as a descendant and stopped by PID.
        """
        started = {p.pid for p in self.processes()}
        spawned = set().union(*(descendants(pid) for pid in started)) - started
        self.stopped |= started | spawned
        self.stop_workers()
        self.federation.stop()
        stop_pids(spawned)


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
        running = Stack(redis, federation, portal_url, workdir)
        try:
            yield running
        finally:
            running.stop()  # a no-op for the processes the test stopped itself
            _reset_producers(broker_url=previous)


def _reset_producers(*, broker_url: str) -> None:
    """Point this process's Celery producers at `broker_url`, dropping pooled connections."""
    if celery_app._pool is not None:
        celery_app._pool.force_close_all()
    celery_app._pool = None
    celery_app.amqp._producer_pool = None
    celery_app.conf.broker_url = broker_url


def descendants(pid: int) -> set[int]:
    """The PIDs of `pid`'s children, their children and so on (`pgrep -P`)."""
    found: set[int] = set()
    frontier = [pid]
    while frontier:
        answer = subprocess.run(  # noqa: S603 - fixed argv
            ["/usr/bin/pgrep", "-P", str(frontier.pop())],
            capture_output=True,
            text=True,
            check=False,
        )
        children = {int(line) for line in answer.stdout.split()} - found
        found |= children
        frontier.extend(children)
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def stop_pids(pids: set[int], *, grace_s: float = 10.0) -> None:
    """Give `pids` (orphans whose parents were stopped) `grace_s` to exit, then TERM, then KILL."""
    deadline = time.monotonic() + grace_s
    for signum in (None, signal.SIGTERM, signal.SIGKILL):
        if signum is not None:
            for pid in pids:
                if running(pid):
                    try:
                        os.kill(pid, signum)
                    except ProcessLookupError:
                        pass
            deadline = time.monotonic() + grace_s
        while any(running(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not any(running(pid) for pid in pids):
            return


def leftovers(stack: Stack, *, pattern: str, before: set[int]) -> list[str]:
    """What still runs of `stack` after it was stopped: any PID it saw, anything in the process
    groups of its children, and anything matching `pattern` (`pgrep -f`) that was not running
    `before` the test."""
    found = [f"{pid} (started by the stack)" for pid in sorted(stack.stopped) if running(pid)]
    for process in stack.processes():
        found.extend(f"{line} (group {process.pid})" for line in pgrep("-g", str(process.pid)))
    found.extend(line for line in pgrep("-f", pattern) if int(line.split()[0]) not in before)
    return found


def pgrep(*args: str) -> list[str]:
    """`pgrep -a ARGS` lines of running processes (not zombies), without this pgrep itself."""
    answer = subprocess.run(  # noqa: S603 - fixed argv
        ["/usr/bin/pgrep", "-a", *args], capture_output=True, text=True, check=False
    )
    lines = [line for line in answer.stdout.splitlines() if line]
    return [line for line in lines if running(int(line.split()[0]))]


def pids_matching(pattern: str) -> set[int]:
    return {int(line.split()[0]) for line in pgrep("-f", pattern)}


def settled(run: Run) -> bool:
    """Finished, and the worker read Flower's final status (the aggregator may report first)."""
    run.refresh_from_db()
    return run.finished and "flower_status" in run.aggregator_facts


def log_of(process: ManagedProcess | None) -> str:
    if process is None:
        return ""
    return process.log_path.read_text(errors="replace")[-4000:]


@dataclass(frozen=True)
class Hospital:
    institution: Institution
    steward: User
    node_token: str


def seed_hospitals(
    consortium: Consortium, *, admin: User, password: str | None = None
) -> dict[str, Hospital]:
    """Each consortium hospital as an institution ("Hospital A", ...) with a steward and a token."""
    hospitals = {}
    for spec in consortium.hospitals:
        letter = spec.hospital.rsplit("-", 1)[-1]
        institution = institution_create(
            name=f"Hospital {letter.upper()}", slug=spec.hospital, actor=admin
        )
        steward = User.objects.create_user(f"steward-{spec.hospital}", password=password)
        steward_add(user=steward, institution=institution, actor=admin)
        _, token = node_token_issue(institution=institution, label="node", actor=admin)
        # Its SuperNode is up (the stack starts it): the node reports so, as `heartbeat` would.
        node_heartbeat(institution=institution, status={"supernode": "online"})
        hospitals[spec.hospital] = Hospital(institution, steward, token)
    return hospitals


def approved_study(consortium: Consortium, hospitals: dict[str, Hospital]) -> Study:
    """The consortium's study through the portal's own services: a researcher creates it and
    invites every hospital, each steward approves, hospital A's node pins the HE context."""
    owner = ResearcherFactory()
    study = study_create(
        owner=owner, title="Breast cancer demo", slug=STUDY_ID, protocol=draft_protocol(consortium)
    )
    institutions = [hospital.institution for hospital in hospitals.values()]
    for enrollment in study_invite(study=study, institutions=institutions, actor=owner):
        enrollment_decide(
            enrollment=enrollment,
            steward=hospitals[enrollment.institution.slug].steward,
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
    return study


def nodes_report(consortium: Consortium, hospitals: dict[str, Hospital], portal_url: str) -> None:
    """Each node reports to the live portal as `cohort-hospital heartbeat` does: online, its
    privacy ledger, and its readiness (usable rows, blockers) for each study it approved."""
    for name, node in consortium.nodes.items():
        client = PortalClient(base_url=portal_url, token=hospitals[name].node_token)
        report = report_to_portal(node, client)
        assert report.ok, report


def draft_protocol(consortium: Consortium) -> dict[str, Any]:
    """The consortium's protocol without its encryption block, in canonical form."""
    document = {k: v for k, v in consortium.protocol.document.items() if k != ENCRYPTION}
    return dict(json.loads(canonical_json(document)))


@pytest.fixture
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # The ServerApp reaches the live portal on loopback; a proxy from the environment must not.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
