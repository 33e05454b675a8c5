"""Celery tasks that drive runs. Thin: they take ids and call one service (runs.services).

Retry policy: failures of the infrastructure (the SuperLink's Control API, the network, the
database connection) are retried with exponential backoff; anything else is a bug or a domain
refusal and fails the run at once. A task killed with its worker is redelivered (acks_late,
reject_on_worker_lost) and resumes from the database: it never submits a run twice.
"""

from __future__ import annotations

import subprocess
from typing import Any

from celery import Task, shared_task
from django.db import InterfaceError, OperationalError

from federation.control import ControlError
from runs import services

RETRYABLE_ERRORS: tuple[type[BaseException], ...] = (
    ControlError,
    OSError,
    subprocess.SubprocessError,
    OperationalError,
    InterfaceError,
)
MAX_RETRIES = 8


class RunTask(Task):  # type: ignore[misc]
    """Fails the run when the task gives up, so that no run waits forever for a dead task."""

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        run_id = kwargs.get("run_id", args[0] if args else None)
        if run_id is not None:
            services.run_fail(
                run_id=int(run_id), reason=f"the portal could not drive this run: {exc}"
            )


@shared_task(  # type: ignore[untyped-decorator]
    base=RunTask,
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=RETRYABLE_ERRORS,
    retry_backoff=5,
    retry_backoff_max=300,
    retry_jitter=True,
    max_retries=MAX_RETRIES,
)
def run_study_task(run_id: int) -> None:
    services.run_drive(run_id=run_id)
