import pytest
from django.contrib.auth.models import User

from core.errors import ConflictError, NotAllowedError, ValidationError
from core.models import AuditEvent
from institutions.models import Institution
from runs.models import HospitalRound, Round, Run
from runs.services import run_cancel, run_record_event, run_start
from studies.models import Enrollment, Study
from tests.portal.factories import ResearcherFactory
from tests.portal.runs.conftest import (
    finished_event,
    hospital_report,
    make_run,
    ready_study,
    round_event,
    started_event,
    steward_of,
)

pytestmark = pytest.mark.django_db


def test_a_round_sent_twice_is_recorded_once(study):
    run, _ = make_run(study)
    run_record_event(run=run, event=round_event(1))
    run_record_event(run=run, event=round_event(1, seconds=99.0))

    (round_,) = Round.objects.filter(run=run)
    assert round_.seconds == 12.5
    assert round_.dropped == {"hospital-c": "no reply within 60 s"}
    rows = {row.hospital: row for row in HospitalRound.objects.filter(round=round_)}
    assert sorted(rows) == ["hospital-a", "hospital-b"]
    assert rows["hospital-a"].institution is not None
    assert rows["hospital-a"].institution.slug == "hospital-a"
    assert rows["hospital-b"].metrics["roc_auc"] == 0.9
    assert AuditEvent.objects.filter(action="run.round_recorded").count() == 1


def test_an_unknown_hospital_is_kept_without_an_institution(study):
    run, _ = make_run(study)
    run_record_event(run=run, event=round_event(1, hospitals=("hospital-a", "node 17")))
    unknown = HospitalRound.objects.get(hospital="node 17")
    assert unknown.institution is None


BAD_EVENTS = {
    "not an object": ["round"],
    "unknown kind": {"event": "round-ish"},
    "missing field": {k: v for k, v in round_event(1).items() if k != "hospitals"},
    "unexpected field": round_event(1, surprise=True),
    "negative epsilon": round_event(1, hospitals=("hospital-a",))
    | {"hospitals": [hospital_report("hospital-a", epsilon=-1.0)]},
    "text for a number": round_event(1) | {"bytes_down": "lots"},
    "reporter not a participant": round_event(1) | {"participants": ["hospital-a"]},
    "round beyond the plan": round_event(3),
    "round zero": round_event(0),
    "hospital twice": round_event(1)
    | {"hospitals": [hospital_report("hospital-a"), hospital_report("hospital-a")]},
    "bad finish status": finished_event(status="sort of"),
    "started without facts": {k: v for k, v in started_event().items() if k != "aggregator"},
}


@pytest.mark.parametrize("event", BAD_EVENTS.values(), ids=BAD_EVENTS.keys())
def test_malformed_events_are_refused_and_nothing_is_written(study, event):
    run, _ = make_run(study)
    with pytest.raises(ValidationError):
        run_record_event(run=run, event=event)
    assert not Round.objects.exists()
    assert not HospitalRound.objects.exists()
    run.refresh_from_db()
    assert run.state == Run.State.RUNNING
    assert run.aggregator_facts == {}
    assert not AuditEvent.objects.filter(action__startswith="run.").exists()


def test_run_started_records_the_aggregators_facts(study):
    run, _ = make_run(study, state=Run.State.QUEUED)
    run = run_record_event(run=run, event=started_event())
    assert run.state == Run.State.RUNNING
    assert run.started_at is not None
    assert run.aggregator_facts["has_secret_key"] is False
    assert run.aggregator_facts["flower_run_id"] == "4242"


def test_run_finished_completes_the_run_and_the_study(study):
    run, _ = make_run(study)
    for number in (1, 2):
        run_record_event(run=run, event=round_event(number))
    run = run_record_event(run=run, event=finished_event())
    assert run.state == Run.State.COMPLETED
    assert run.finished_at is not None
    study.refresh_from_db()
    assert study.state == Study.State.COMPLETED


def test_run_finished_failed_keeps_the_aggregators_reason(study):
    run, _ = make_run(study)
    run = run_record_event(
        run=run, event=finished_event("failed", "round 1 needs at least 2 hospitals")
    )
    assert run.state == Run.State.FAILED
    assert run.reason == "round 1 needs at least 2 hospitals"
    study.refresh_from_db()
    assert study.state == Study.State.FAILED


def test_completed_with_a_round_missing_waits_for_flowers_status(study):
    run, _ = make_run(study)
    run_record_event(run=run, event=round_event(1))
    run = run_record_event(run=run, event=finished_event())
    assert run.state == Run.State.RUNNING
    assert run.aggregator_facts["reported_finished"] == "completed"


@pytest.mark.parametrize("state", [Run.State.COMPLETED, Run.State.FAILED, Run.State.CANCELLED])
def test_events_for_a_finished_run_are_refused(study, state):
    run, _ = make_run(study, state=state)
    with pytest.raises(ConflictError):
        run_record_event(run=run, event=round_event(1))
    assert not Round.objects.exists()


def test_start_creates_a_queued_run_and_enqueues_it_after_commit(
    study, monkeypatch, django_capture_on_commit_callbacks
):
    enqueued = []
    monkeypatch.setattr("runs.tasks.run_study_task.delay", enqueued.append)
    with django_capture_on_commit_callbacks(execute=True):
        run = run_start(study=study, actor=study.owner)
    assert enqueued == [run.pk]
    assert run.state == Run.State.QUEUED
    assert run.rounds_planned == 2
    assert run.protocol_sha256 == study.protocol_sha256
    study.refresh_from_db()
    assert study.state == Study.State.RUNNING
    assert AuditEvent.objects.filter(action="run.start", target_id=str(run.pk)).exists()


def _refused_start(study, actor=None, error=ConflictError):
    with pytest.raises(error) as raised:
        run_start(study=study, actor=actor or study.owner)
    assert not Run.objects.exists()
    study.refresh_from_db()
    return raised.value


def test_start_is_refused_unless_the_study_is_ready():
    study = ready_study()
    Study.objects.filter(pk=study.pk).update(state=Study.State.RECRUITING)
    assert "starts only from ready" in _refused_start(study).message


def test_start_is_refused_without_an_he_context():
    study = ready_study(he_context=False)
    assert "no HE context" in _refused_start(study).message
    assert study.state == Study.State.READY


def test_start_is_refused_when_an_approval_is_for_an_older_protocol(study):
    Enrollment.objects.filter(study=study, institution__slug="hospital-b").update(
        approved_protocol_sha256="0" * 64
    )
    error = _refused_start(study)
    assert error.fields == {"stale_approvals": ["hospital-b"]}


def test_start_is_refused_until_enough_approved_hospitals_have_an_online_node(study):
    Institution.objects.filter(slug="hospital-b").update(last_seen_at=None)

    error = _refused_start(study)

    assert error.fields == {"offline_nodes": ["hospital-b"]}
    assert "cohort-hospital heartbeat" in error.message
    assert not Run.objects.filter(study=study).exists()


def test_only_the_owner_starts_a_run(study):
    _refused_start(study, actor=ResearcherFactory(), error=NotAllowedError)


def test_a_second_run_is_refused_while_one_is_going(study, monkeypatch):
    monkeypatch.setattr("runs.tasks.run_study_task.delay", lambda run_id: None)
    run_start(study=study, actor=study.owner)
    Study.objects.filter(pk=study.pk).update(state=Study.State.READY)
    with pytest.raises(ConflictError):
        run_start(study=study, actor=study.owner)


def test_cancel_stops_the_flower_run_after_commit(
    study, monkeypatch, django_capture_on_commit_callbacks
):
    stopped = []

    class Control:
        def stop(self, run_id):
            stopped.append(run_id)

    monkeypatch.setattr("runs.services.flower_control", Control)
    run, _ = make_run(study, flower_run_id=2**64 - 1)
    with django_capture_on_commit_callbacks(execute=True):
        run = run_cancel(run=run, actor=study.owner, reason="wrong cohort")
    assert stopped == [2**64 - 1]
    assert run.state == Run.State.CANCELLED
    assert run.reason == f"cancelled by {study.owner.username}: wrong cohort"
    study.refresh_from_db()
    assert study.state == Study.State.CANCELLED


def test_cancel_is_for_the_owner_and_only_while_the_run_goes(study):
    run, _ = make_run(study)
    with pytest.raises(NotAllowedError):
        run_cancel(run=run, actor=steward_of("hospital-a"))
    finished, _ = make_run(ready_study(), state=Run.State.COMPLETED)
    with pytest.raises(ConflictError):
        run_cancel(run=finished, actor=finished.study.owner)
    assert isinstance(study.owner, User)
