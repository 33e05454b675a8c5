"""The task's body (runs.services.run_drive) against a fake Control API."""

import tomllib

import pytest

from core.tokens import digest_matches
from federation import runner
from federation.control import ControlError, RunStatus
from runs.models import Run
from runs.services import run_drive, run_record_event
from runs.tasks import RETRYABLE_ERRORS, run_study_task
from studies.models import Study
from tests.portal.runs.conftest import finished_event, make_run, round_event

pytestmark = pytest.mark.django_db
# Flower run ids are unsigned 64-bit: this one does not fit a signed bigint.
BIG = 2**64 - 5


class FakeControl:
    """Answers `statuses` in turn (the last one forever) and records every call."""

    def __init__(self, *statuses: str, details: str = "", run_id: int = BIG) -> None:
        self.statuses = list(statuses)
        self.details = details
        self.run_id = run_id
        self.submitted: list[dict] = []
        self.polled = 0
        self.stopped: list[int] = []

    def submit(self, run_config):
        self.submitted.append(tomllib.loads(run_config.read_text()))
        return self.run_id

    def status(self, run_id):
        assert run_id == self.run_id
        self.polled += 1
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return RunStatus(run_id, status, self.details if status == "finished:failed" else "")

    def stop(self, run_id):
        self.stopped.append(run_id)


@pytest.fixture(autouse=True)
def no_quiet_wait(monkeypatch):
    """Flower's status is read on every poll, as for a run that stopped reporting."""
    monkeypatch.setattr(runner, "REPORT_QUIET_S", 0)


@pytest.fixture(autouse=True)
def flwr_home(settings, tmp_path):
    settings.COHORT_FLWR_HOME = tmp_path / "flwr-home"
    settings.COHORT_PORTAL_URL = "http://portal.test:8000/"
    return settings.COHORT_FLWR_HOME


def test_a_queued_run_is_submitted_once_with_its_config(study, flwr_home):
    run, _ = make_run(study, state=Run.State.QUEUED, token_prefix="", token_digest="")
    for number in (1, 2):
        run_record_event(run=run, event=round_event(number))
    control = FakeControl("running", "finished:completed")

    run = run_drive(run_id=run.pk, control=control, sleep=lambda s: None)

    (config,) = control.submitted
    assert int(run.flower_run_id) == BIG
    assert config["results-url"] == f"http://portal.test:8000/api/runs/{run.pk}/events/"
    assert digest_matches(config["results-token"], run.token_digest)
    assert config["protocol"].startswith("{") and '"context_fingerprint"' in config["protocol"]
    assert config["he-context"]
    # The config held the raw token: it is gone once submitted.
    assert not list((flwr_home / "portal-runs").glob("*.toml"))
    assert control.polled == 2
    assert run.state == Run.State.COMPLETED
    study.refresh_from_db()
    assert study.state == Study.State.COMPLETED


def test_flowers_status_waits_while_the_aggregator_reports(study, monkeypatch):
    monkeypatch.setattr(runner, "REPORT_QUIET_S", 3600)
    run, _ = make_run(study, flower_run_id=BIG, state=Run.State.RUNNING)
    control = FakeControl("finished:completed")
    polled_before_each_sleep: list[int] = []

    events = [round_event(number) for number in range(1, run.rounds_planned + 1)]
    events.append(finished_event())

    def report_meanwhile(seconds: float) -> None:
        polled_before_each_sleep.append(control.polled)
        run_record_event(run=run, event=events.pop(0))

    run = run_drive(run_id=run.pk, control=control, sleep=report_meanwhile)

    # While rounds come in, Flower is not asked; once the aggregator reports the end, it is.
    assert polled_before_each_sleep == [0] * (run.rounds_planned + 1)
    assert control.polled == 1 and run.state == Run.State.COMPLETED


def test_a_redelivered_task_follows_without_resubmitting(study):
    run, token = make_run(study, flower_run_id=BIG)
    control = FakeControl("running", "running", "finished:failed", details="ServerApp crashed")

    run = run_drive(run_id=run.pk, control=control, sleep=lambda s: None)

    assert control.submitted == []
    assert control.polled == 3
    assert run.state == Run.State.FAILED
    assert run.reason == "ServerApp crashed"
    assert run.aggregator_facts["flower_status"]["status"] == "finished:failed"
    study.refresh_from_db()
    assert study.state == Study.State.FAILED


def test_the_aggregators_reason_wins_over_flowers_details(study):
    run, _ = make_run(study, flower_run_id=BIG)
    run_record_event(
        run=run,
        event={
            "event": "run-finished",
            "at": "2026-11-23T10:00:00Z",
            "status": "failed",
            "reason": "round 1 needs at least 2 hospitals",
        },
    )
    run = run_drive(
        run_id=run.pk, control=FakeControl("finished:failed", details="exit 1"), sleep=lambda s: 0
    )
    assert run.reason == "round 1 needs at least 2 hospitals"


def test_flower_completed_with_rounds_missing_fails_the_run(study):
    run, _ = make_run(study, flower_run_id=BIG)
    run_record_event(run=run, event=round_event(1))
    run = run_drive(run_id=run.pk, control=FakeControl("finished:completed"), sleep=lambda s: 0)
    assert run.state == Run.State.FAILED
    assert "only 1 of 2 round reports reached the portal" in run.reason


def test_a_run_that_finished_while_no_task_followed_it_still_gets_flowers_status(study):
    run, _ = make_run(study, flower_run_id=BIG)
    for number in (1, 2):
        run_record_event(run=run, event=round_event(number))
    run_record_event(
        run=run,
        event={"event": "run-finished", "at": "2026-11-23T10:00:00Z", "status": "completed"},
    )
    control = FakeControl("finished:completed")
    run = run_drive(run_id=run.pk, control=control, sleep=lambda s: 0)
    assert control.submitted == [] and control.polled == 1
    assert run.state == Run.State.COMPLETED
    assert run.aggregator_facts["flower_status"]["status"] == "finished:completed"
    # Settled: a further delivery reads nothing.
    run_drive(run_id=run.pk, control=control, sleep=lambda s: 0)
    assert control.polled == 1


def test_a_finished_or_cancelled_run_is_left_alone(study):
    run, _ = make_run(study, state=Run.State.CANCELLED, flower_run_id=BIG)
    control = FakeControl("running")
    run_drive(run_id=run.pk, control=control, sleep=lambda s: 0)
    assert control.submitted == [] and control.polled == 0


def test_a_run_cancelled_while_followed_stops_being_followed(study):
    run, _ = make_run(study, flower_run_id=BIG)

    def cancel_meanwhile(seconds):
        Run.objects.filter(pk=run.pk).update(state=Run.State.CANCELLED)

    control = FakeControl("running")
    run_drive(run_id=run.pk, control=control, sleep=cancel_meanwhile)
    assert control.polled == 1


def test_a_refused_submission_leaves_the_run_unsubmitted_for_a_retry(study):
    run, _ = make_run(study, state=Run.State.QUEUED)

    class Refusing(FakeControl):
        def submit(self, run_config):
            raise ControlError("`flwr run` failed: connection refused")

    with pytest.raises(ControlError):
        run_drive(run_id=run.pk, control=Refusing("running"), sleep=lambda s: 0)
    run.refresh_from_db()
    assert run.flower_run_id is None and run.state == Run.State.QUEUED
    assert issubclass(ControlError, RETRYABLE_ERRORS)


def test_the_task_fails_the_run_when_it_gives_up(study):
    run, _ = make_run(study, flower_run_id=BIG)
    run_study_task.on_failure(ControlError("SuperLink gone"), "task-id", (run.pk,), {}, None)
    run.refresh_from_db()
    assert run.state == Run.State.FAILED
    assert run.reason == "the portal could not drive this run: SuperLink gone"
    assert run_study_task.acks_late and run_study_task.reject_on_worker_lost
