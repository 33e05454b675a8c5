"""Writes about runs: start, drive on Flower, record the aggregator's events, cancel, release.

Each state change locks the run row first and runs in one transaction with its audit record, so a
redelivered task, a re-sent event and a user's click all see one order of events. Run state lives
here, in the database, never in a task's memory.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import logging
import os
import time
import tomllib
import zipfile
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone
from rest_framework import serializers

from aggregator.config import weight_unit_for
from core.audit import audit_record
from core.errors import (
    ConflictError,
    NotAllowedError,
    PayloadTooLargeError,
    ValidationError,
)
from core.tokens import IssuedToken, issue_token
from federation.control import ControlError, FlowerControl, RunStatus
from federation.deployment import flower_environment
from federation.runner import StudyRequest, flower_status_due, write_run_config
from hospitals.participation import published_rows
from hospitals.protocol import canonical_json
from institutions.models import Institution, Membership
from privacy.models import RunPreflight
from privacy.services import preflight_record, preflight_require
from runs.authentication import RUN_TOKEN_KIND
from runs.models import HospitalRound, ModelRelease, ReleaseApproval, Round, Run
from runs.selectors import participating_institutions, run_can_manage
from studies.models import Enrollment, Study
from studies.selectors import approved_institutions, full_protocol, min_hospitals
from studies.services import study_transition

logger = logging.getLogger(__name__)

# The flwr CLI connection the portal writes into $COHORT_FLWR_HOME/config.toml.
FLWR_CONNECTION = "cohort-portal"
STATUS_POLL_S = 3.0
# A run that outlives rounds × (train + evaluate timeouts) plus this slack is stopped and failed.
RUN_SLACK_S = 900
JOIN_TIMEOUT_S = 120
MAX_MODEL_BYTES = 4 * 1024 * 1024
MAX_PRIVACY_REPORT_BYTES = 256 * 1024

STUDY_STATE_OF_RUN = {
    Run.State.COMPLETED: Study.State.COMPLETED,
    Run.State.FAILED: Study.State.FAILED,
    Run.State.CANCELLED: Study.State.CANCELLED,
}


class Control(Protocol):
    """The part of FlowerControl that runs need (tests pass a fake)."""

    def submit(self, run_config: Path) -> int: ...

    def status(self, run_id: int) -> RunStatus: ...

    def stop(self, run_id: int) -> None: ...


# --- start and cancel -----------------------------------------------------------------------


def run_start(*, study: Study, actor: User) -> Run:
    """Start a run of a `ready` study; the Celery task submits it to Flower after commit."""
    from runs.tasks import run_study_task

    with transaction.atomic():
        study = Study.objects.select_for_update().get(pk=study.pk)
        _check_startable(study, actor)
        # Refuses (ConflictError naming each hospital) what a node would already refuse.
        preflight = preflight_require(study=study)
        protocol = full_protocol(study=study)
        run = Run.objects.create(
            study=study,
            started_by=actor,
            protocol_sha256=study.protocol_sha256,
            rounds_planned=int(protocol["federation"]["rounds"]),
        )
        preflight_record(run=run, preflight=preflight)
        study_transition(
            study=study,
            to=Study.State.RUNNING,
            actor=actor,
            actor_label=actor.get_username(),
            reason=f"run {run.pk} started",
        )
        audit_record(
            action="run.start",
            target=run,
            actor=actor,
            data={
                "study": study.slug,
                "protocol_sha256": study.protocol_sha256,
                "he_context_fingerprint": study.he_context_fingerprint,
                "rounds_planned": run.rounds_planned,
                "hospitals": sorted(
                    approved_institutions(study=study).values_list("slug", flat=True)
                ),
                "preflight": preflight.projection(),
            },
        )
        run_id = run.pk
        transaction.on_commit(lambda: run_study_task.delay(run_id))
    return run


def _check_startable(study: Study, actor: User) -> None:
    if study.owner_id != actor.pk:
        raise NotAllowedError(f"only the owner of study '{study.slug}' may start a run")
    if study.state != Study.State.READY:
        raise ConflictError(
            f"study '{study.slug}' is {study.state}; a run starts only from ready (enough "
            "hospitals approved the current protocol and no run is going)"
        )
    if not study.he_context_fingerprint or not study.he_aggregator_context:
        raise ConflictError(
            f"study '{study.slug}' has no HE context yet: a hospital node must upload the study's "
            "keyless aggregator context before a run can start"
        )
    stale = sorted(
        study.enrollments.filter(state=Enrollment.State.APPROVED)
        .exclude(approved_protocol_sha256=study.protocol_sha256)
        .values_list("institution__slug", flat=True)
    )
    if stale:
        raise ConflictError(
            f"approvals of {', '.join(stale)} are for an older protocol of '{study.slug}': their "
            "stewards must approve the current protocol before a run can start",
            fields={"stale_approvals": stale},
        )
    approved = approved_institutions(study=study).count()
    needed = min_hospitals(study=study)
    if approved < needed:
        raise ConflictError(
            f"study '{study.slug}' has {approved} approvals of the {needed} its protocol needs"
        )
    offline = [i.slug for i in approved_institutions(study=study) if not i.node_online()]
    if approved - len(offline) < needed:
        raise ConflictError(
            f"only {approved - len(offline)} approved hospitals have an online node and study "
            f"'{study.slug}' needs {needed}; offline: {', '.join(offline)} (their IT runs "
            "`cohort-hospital heartbeat`)",
            fields={"offline_nodes": offline},
        )
    if Run.objects.filter(study=study).exclude(state__in=Run.FINISHED).exists():
        raise ConflictError(f"study '{study.slug}' already has a run going")


def run_cancel(*, run: Run, actor: User, reason: str = "") -> Run:
    """Cancel a run that has not finished; its Flower run is stopped after commit."""
    with transaction.atomic():
        run = Run.objects.select_for_update().select_related("study").get(pk=run.pk)
        if not run_can_manage(run=run, user=actor):
            raise NotAllowedError(f"only the owner of study '{run.study.slug}' may cancel its runs")
        if run.finished:
            raise ConflictError(f"run {run.pk} is already {run.state}")
        label = actor.get_username()
        _finish(
            run,
            state=Run.State.CANCELLED,
            reason=f"cancelled by {label}" + (f": {reason}" if reason else ""),
            actor=actor,
            actor_label=label,
        )
        if run.flower_run_id is not None:
            flower_run_id = int(run.flower_run_id)
            transaction.on_commit(lambda: _stop_flower_run(flower_run_id))
    return run


def _stop_flower_run(flower_run_id: int) -> None:
    try:
        flower_control().stop(flower_run_id)
    except (ControlError, OSError) as error:
        # The run is cancelled in the portal either way; its token is spent, so the ServerApp's
        # further reports are refused.
        logger.warning("could not stop Flower run %s: %s", flower_run_id, error)


def _finish(
    run: Run,
    *,
    state: Run.State,
    reason: str,
    actor: User | None = None,
    actor_label: str = "system",
) -> None:
    """Finish a locked run and its study, with one audit record."""
    run.state = state
    run.reason = reason
    run.finished_at = timezone.now()
    run.save(update_fields=["state", "reason", "finished_at", "aggregator_facts", "updated_at"])
    if run.study.state == Study.State.RUNNING:
        study_transition(
            study=run.study,
            to=STUDY_STATE_OF_RUN[state],
            actor=actor,
            actor_label=actor_label,
            reason=f"run {run.pk} {state}" + (f": {reason}" if reason else ""),
        )
    audit_record(
        action=f"run.{state}",
        target=run,
        actor=actor,
        actor_label=actor_label,
        data={"reason": reason, "flower_run_id": _text(run.flower_run_id)},
    )


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def run_fail(*, run_id: int, reason: str) -> Run:
    """Fail a run the portal can no longer drive (the task gave up); a finished run stays as is."""
    with transaction.atomic():
        run = Run.objects.select_for_update().select_related("study").get(pk=run_id)
        if not run.finished:
            _finish(run, state=Run.State.FAILED, reason=reason, actor_label="worker")
    return run


# --- driving the run on Flower (the Celery task's body) ------------------------------------------


def flower_control() -> FlowerControl:
    """The SuperLink's Control API from settings (COHORT_SUPERLINK_*, COHORT_FLWR_HOME)."""
    home = Path(settings.COHORT_FLWR_HOME)
    _write_flwr_connection(home)
    return FlowerControl(env=flower_environment(home), connection=FLWR_CONNECTION)


def _write_flwr_connection(home: Path) -> None:
    """Add (or update) the portal's connection in $FLWR_HOME/config.toml, keeping the others."""
    path = home / "config.toml"
    config: dict[str, Any] = tomllib.loads(path.read_text("utf-8")) if path.exists() else {}
    superlink = config.setdefault("superlink", {})
    wanted = {
        "address": settings.COHORT_SUPERLINK_ADDRESS,
        "insecure": bool(settings.COHORT_SUPERLINK_INSECURE),
    }
    current = superlink.get(FLWR_CONNECTION, {})
    if all(current.get(key) == value for key, value in wanted.items()):
        return
    superlink[FLWR_CONNECTION] = {**current, **wanted}
    superlink.setdefault("default", FLWR_CONNECTION)
    home.mkdir(parents=True, exist_ok=True)
    path.write_text(_toml(config), encoding="utf-8")


def _toml(table: Mapping[str, Any], prefix: str = "") -> str:
    """TOML for nested tables of scalars (all flwr's config.toml holds)."""
    scalars = [
        f"{key} = {json.dumps(value)}\n"
        for key, value in table.items()
        if not isinstance(value, dict)
    ]
    text = (f"[{prefix}]\n" if prefix and scalars else "") + "".join(scalars)
    for key, value in table.items():
        if isinstance(value, dict):
            name = f"{prefix}.{key}" if prefix else key
            text += ("\n" if text else "") + _toml(value, name)
    return text


def run_drive(
    *,
    run_id: int,
    control: Control | None = None,
    poll_s: float = STATUS_POLL_S,
    sleep: Callable[[float], None] = time.sleep,
) -> Run:
    """Submit the run to Flower once, then follow it until Flower says it finished.

    Safe to call again for the same run at any point (a redelivered task): a run that already has a
    Flower run id is followed, never resubmitted; a finished run is left alone once Flower's final
    status is recorded.
    """
    control = control or flower_control()
    flower_run_id = _submit_once(run_id, control)
    if flower_run_id is not None:
        _follow(run_id, flower_run_id, control, poll_s=poll_s, sleep=sleep)
    return Run.objects.get(pk=run_id)


def _submit_once(run_id: int, control: Control) -> int | None:
    """The run's Flower run id, submitting the run first if it has none; None once it is settled."""
    # The fresh token commits before the submission, so that the ServerApp's first report (which
    # may arrive before the submission's transaction commits) finds it.
    with transaction.atomic():
        run = Run.objects.select_for_update().get(pk=run_id)
        if run.finished:
            return _awaiting_flower_status(run)
        if run.flower_run_id is not None:
            return int(run.flower_run_id)
        token = _rotate_token(run)
    with transaction.atomic():
        # The lock is held through the submission: a concurrent delivery waits, then follows.
        run = Run.objects.select_for_update().select_related("study").get(pk=run_id)
        if run.finished:
            return _awaiting_flower_status(run)
        if run.flower_run_id is not None:
            return int(run.flower_run_id)
        if run.token_digest != token.digest:
            token = _rotate_token(run)
        flower_run_id = _submit(run, token, control)
        run.flower_run_id = str(flower_run_id)
        run.save(update_fields=["flower_run_id", "updated_at"])
        audit_record(
            action="run.submitted",
            target=run,
            actor_label="worker",
            data={
                "flower_run_id": str(flower_run_id),
                "superlink": settings.COHORT_SUPERLINK_ADDRESS,
            },
        )
        return flower_run_id


def _awaiting_flower_status(run: Run) -> int | None:
    """A finished run whose Flower status nobody read yet: the aggregator reported its end while no
    task followed it (the worker died; its task was redelivered later). Flower's word is still
    read once, since it is authoritative."""
    unread = "flower_status" not in run.aggregator_facts
    if run.flower_run_id is None or run.state == Run.State.CANCELLED or not unread:
        return None
    return int(run.flower_run_id)


def _rotate_token(run: Run) -> IssuedToken:
    token = issue_token(RUN_TOKEN_KIND)
    run.token_prefix = token.prefix
    run.token_digest = token.digest
    run.save(update_fields=["token_prefix", "token_digest", "updated_at"])
    return token


def _first_weight_unit(run: Run) -> int:
    """Round 1's weight unit, from the consented training rows the preflight saw (0: none)."""
    preflight = RunPreflight.objects.filter(run=run).first()
    projected = preflight.projection.get("hospitals", []) if preflight else []
    rows = [published_rows(row["rows_train"]) for row in projected if row.get("rows_train")]
    return weight_unit_for(rows) if rows else 0


def _submit(run: Run, token: IssuedToken, control: Control) -> int:
    study = run.study
    runs_dir = Path(settings.COHORT_FLWR_HOME) / "portal-runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    request = StudyRequest(
        protocol_json=canonical_json(full_protocol(study=study)),
        aggregator_context=bytes(study.he_aggregator_context or b""),
        results_path=runs_dir / f"run-{run.pk}.jsonl",
        join_timeout_s=JOIN_TIMEOUT_S,
        results_url=events_url(run),
        results_token=token.raw,
        weight_unit=_first_weight_unit(run),
    )
    config_path = runs_dir / f"run-{run.pk}.run-config.toml"
    # The file holds the run's raw token: owner-only, and gone once Flower has read it.
    config_path.touch(mode=0o600)
    os.chmod(config_path, 0o600)
    try:
        write_run_config(request, config_path)
        return control.submit(config_path)
    finally:
        config_path.unlink(missing_ok=True)


def events_url(run: Run) -> str:
    return f"{settings.COHORT_PORTAL_URL.rstrip('/')}/api/runs/{run.pk}/events/"


def _follow(
    run_id: int,
    flower_run_id: int,
    control: Control,
    *,
    poll_s: float,
    sleep: Callable[[float], None],
) -> None:
    """Poll Flower until the run finished there; rounds arrive through the events API meanwhile."""
    while True:
        run = Run.objects.get(pk=run_id)
        if run.state == Run.State.CANCELLED:
            return
        quiet_s = (timezone.now() - run.updated_at).total_seconds()
        if flower_status_due(reported_end=run.finished, quiet_s=quiet_s):
            status = control.status(flower_run_id)
            if status.finished:
                run_conclude(run_id=run_id, status=status)
                return
        if timezone.now() > run.created_at + timedelta(seconds=_run_budget_s(run)):
            control.stop(flower_run_id)
            run_fail(
                run_id=run_id,
                reason=f"the run did not finish within {_run_budget_s(run)} s and was stopped",
            )
            return
        sleep(poll_s)


def _run_budget_s(run: Run) -> int:
    timeout = int(run.study.protocol.get("federation", {}).get("round_timeout_s", 300))
    return run.rounds_planned * 2 * timeout + JOIN_TIMEOUT_S + RUN_SLACK_S


def run_conclude(*, run_id: int, status: RunStatus) -> Run:
    """Settle the run on Flower's final status, which is authoritative.

    Flower `finished:failed` fails the run with Flower's details unless the aggregator already
    reported why; `finished:completed` completes it only if every planned round reached the portal.
    """
    with transaction.atomic():
        run = Run.objects.select_for_update().select_related("study").get(pk=run_id)
        run.aggregator_facts = {
            **run.aggregator_facts,
            "flower_status": {"status": status.status, "details": status.details},
        }
        if run.finished:
            run.save(update_fields=["aggregator_facts", "updated_at"])
            if run.state == Run.State.COMPLETED and not status.succeeded:
                logger.warning(
                    "run %s: the aggregator reported completion but Flower says %s (%s)",
                    run.pk,
                    status.status,
                    status.details,
                )
            return run
        if status.succeeded:
            done = run.rounds.count()
            if done >= run.rounds_planned:
                _finish(run, state=Run.State.COMPLETED, reason="", actor_label="worker")
            else:
                _finish(
                    run,
                    state=Run.State.FAILED,
                    reason=(
                        f"Flower reports the run completed, but only {done} of "
                        f"{run.rounds_planned} round reports reached the portal"
                    ),
                    actor_label="worker",
                )
        else:
            _finish(
                run,
                state=Run.State.FAILED,
                reason=status.details or f"Flower reports the run {status.status}",
                actor_label="worker",
            )
    return run


# --- the aggregator's events ---------------------------------------------------------------------


class StrictSerializer(serializers.Serializer[Any]):
    """Refuses fields it does not know: the aggregator and the portal agree on every key."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, Mapping):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({key: ["unexpected field"] for key in unknown})
        return super().to_internal_value(data)


def _metrics_field() -> serializers.DictField:
    return serializers.DictField(
        child=serializers.FloatField(allow_null=True), allow_empty=True, required=False
    )


class AggregatorFactsSerializer(StrictSerializer):
    he_context_fingerprint = serializers.CharField(max_length=64)
    he_context_bytes = serializers.IntegerField(min_value=0)
    has_secret_key = serializers.BooleanField()


class RunStartedEventSerializer(StrictSerializer):
    event = serializers.ChoiceField(choices=["run-started"])
    at = serializers.DateTimeField()
    study_id = serializers.CharField(max_length=64)
    run_id = serializers.CharField(max_length=32)
    rounds = serializers.IntegerField(min_value=1)
    min_hospitals = serializers.IntegerField(min_value=1)
    aggregator = AggregatorFactsSerializer()


class HospitalRoundSerializer(StrictSerializer):
    hospital = serializers.CharField(max_length=64)
    epsilon = serializers.FloatField(min_value=0)
    noise_multiplier = serializers.FloatField(min_value=0)
    sample_rate = serializers.FloatField(min_value=0, max_value=1)
    steps = serializers.IntegerField(min_value=0)
    delta = serializers.FloatField(min_value=0, max_value=1)
    accountant = serializers.CharField(max_length=20, allow_blank=True)
    epsilon_conversion = serializers.CharField(max_length=40, allow_blank=True)
    consent = serializers.CharField(max_length=300, allow_blank=True)
    rows_rounded = serializers.IntegerField(min_value=0)
    bytes_up = serializers.IntegerField(min_value=0)
    train_seconds = serializers.FloatField(min_value=0)
    metrics = _metrics_field()


class RoundEventSerializer(StrictSerializer):
    event = serializers.ChoiceField(choices=["round"])
    at = serializers.DateTimeField()
    round = serializers.IntegerField(min_value=1)
    participants = serializers.ListField(
        child=serializers.CharField(max_length=64), max_length=1000
    )
    dropped = serializers.DictField(child=serializers.CharField(max_length=2000), allow_empty=True)
    metrics = _metrics_field()
    hospitals = HospitalRoundSerializer(many=True)
    bytes_down = serializers.IntegerField(min_value=0)
    seconds = serializers.FloatField(min_value=0)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        names = [hospital["hospital"] for hospital in attrs["hospitals"]]
        if len(set(names)) != len(names):
            raise serializers.ValidationError({"hospitals": ["a hospital is listed twice"]})
        if set(names) - set(attrs["participants"]):
            raise serializers.ValidationError(
                {"hospitals": ["every reporting hospital must be a participant"]}
            )
        return attrs


class RunFinishedEventSerializer(StrictSerializer):
    event = serializers.ChoiceField(choices=["run-finished"])
    at = serializers.DateTimeField()
    status = serializers.ChoiceField(choices=["completed", "failed"])
    reason = serializers.CharField(max_length=10_000, allow_blank=True, required=False, default="")


EVENT_SERIALIZERS: dict[str, type[StrictSerializer]] = {
    "run-started": RunStartedEventSerializer,
    "round": RoundEventSerializer,
    "run-finished": RunFinishedEventSerializer,
}


def run_record_event(*, run: Run, event: Any) -> Run:
    """Record one event the aggregator reported; a round sent twice is recorded once."""
    data = _validated_event(event)
    with transaction.atomic():
        run = Run.objects.select_for_update().select_related("study").get(pk=run.pk)
        if run.finished:
            raise ConflictError(f"run {run.pk} is {run.state}; it accepts no more events")
        if data["event"] == "run-started":
            _record_started(run, data)
        elif data["event"] == "round":
            _record_round(run, data)
        else:
            _record_finished(run, data)
    return run


def _validated_event(event: Any) -> dict[str, Any]:
    kind = event.get("event") if isinstance(event, Mapping) else None
    serializer_class = EVENT_SERIALIZERS.get(kind) if isinstance(kind, str) else None
    if serializer_class is None:
        raise ValidationError(
            f"unknown event {kind!r}: expected one of {', '.join(EVENT_SERIALIZERS)}",
            fields={"event": ["unknown event"]},
        )
    serializer = serializer_class(data=event)
    if not serializer.is_valid():
        raise ValidationError(f"the {kind} event is invalid", fields=dict(serializer.errors))
    return dict(serializer.validated_data)


def _mark_running(run: Run) -> None:
    if run.state == Run.State.QUEUED:
        run.state = Run.State.RUNNING
        run.started_at = timezone.now()


def _record_started(run: Run, data: dict[str, Any]) -> None:
    _mark_running(run)
    run.aggregator_facts = {
        **run.aggregator_facts,
        **dict(data["aggregator"]),
        "flower_run_id": data["run_id"],
        "rounds": data["rounds"],
        "min_hospitals": data["min_hospitals"],
    }
    run.save(update_fields=["state", "started_at", "aggregator_facts", "updated_at"])
    audit_record(
        action="run.aggregator_started",
        target=run,
        actor_label=f"run:{run.pk}",
        data={"aggregator": dict(data["aggregator"]), "flower_run_id": data["run_id"]},
    )


def _record_round(run: Run, data: dict[str, Any]) -> None:
    number = data["round"]
    if number > run.rounds_planned:
        raise ValidationError(
            f"round {number} reported, but run {run.pk} plans {run.rounds_planned} rounds",
            fields={"round": [f"at most {run.rounds_planned}"]},
        )
    if Round.objects.filter(run=run, number=number).exists():
        return  # a re-sent report (the aggregator retried): already recorded
    _mark_running(run)
    run.save(update_fields=["state", "started_at", "updated_at"])
    round_ = Round.objects.create(
        run=run,
        number=number,
        participants=list(data["participants"]),
        dropped=dict(data["dropped"]),
        metrics=dict(data.get("metrics", {})),
        bytes_down=data["bytes_down"],
        seconds=data["seconds"],
    )
    names = [hospital["hospital"] for hospital in data["hospitals"]]
    institutions = {i.slug: i for i in Institution.objects.filter(slug__in=names)}
    HospitalRound.objects.bulk_create(
        HospitalRound(
            round=round_,
            institution=institutions.get(hospital["hospital"]),
            **{**hospital, "metrics": dict(hospital.get("metrics", {}))},
        )
        for hospital in data["hospitals"]
    )
    audit_record(
        action="run.round_recorded",
        target=run,
        actor_label=f"run:{run.pk}",
        data={
            "round": number,
            "participants": list(data["participants"]),
            "dropped": dict(data["dropped"]),
            "epsilon": {h["hospital"]: h["epsilon"] for h in data["hospitals"]},
        },
    )


def _record_finished(run: Run, data: dict[str, Any]) -> None:
    if data["status"] == "completed":
        done = run.rounds.count()
        if done < run.rounds_planned:
            # A lost round report; Flower's final status (read by the task) settles the run.
            run.aggregator_facts = {**run.aggregator_facts, "reported_finished": "completed"}
            run.save(update_fields=["aggregator_facts", "updated_at"])
            return
        _finish(run, state=Run.State.COMPLETED, reason="", actor_label=f"run:{run.pk}")
    else:
        _finish(
            run,
            state=Run.State.FAILED,
            reason=data["reason"] or "the aggregator reported a failure without a reason",
            actor_label=f"run:{run.pk}",
        )


# --- release -----------------------------------------------------------------------------------


def release_approve(
    *, run: Run, actor: User, institution: Institution | None = None
) -> ReleaseApproval:
    """A steward of a participating hospital agrees to release the run's final model."""
    with transaction.atomic():
        run = Run.objects.select_for_update().select_related("study").get(pk=run.pk)
        if run.state != Run.State.COMPLETED:
            raise ConflictError(f"run {run.pk} is {run.state}; only a completed run is released")
        mine = participating_institutions(run=run).filter(
            memberships__user=actor, memberships__role=Membership.STEWARD
        )
        if institution is not None:
            mine = mine.filter(pk=institution.pk)
        candidates = list(mine)
        if not candidates:
            raise NotAllowedError(
                f"you are not a data steward of a hospital that took part in run {run.pk}"
            )
        if len(candidates) > 1:
            raise ValidationError(
                "you steward several hospitals of this run: name the one you approve for",
                fields={"institution": [c.slug for c in candidates]},
            )
        (chosen,) = candidates
        existing = ReleaseApproval.objects.filter(run=run, institution=chosen).first()
        if existing is not None:
            return existing
        approval = ReleaseApproval.objects.create(run=run, institution=chosen, steward=actor)
        audit_record(
            action="run.release_approved",
            target=run,
            actor=actor,
            data={"institution": chosen.slug},
        )
    return approval


def release_upload(
    *, run: Run, institution: Institution, parameters_b64: str, privacy_report: Any
) -> ModelRelease:
    """A participating hospital's node uploads the final model once enough stewards approved."""
    parameters = _decoded_model(parameters_b64)
    report = _checked_privacy_report(privacy_report)
    with transaction.atomic():
        run = Run.objects.select_for_update().select_related("study").get(pk=run.pk)
        if run.state != Run.State.COMPLETED:
            raise ConflictError(f"run {run.pk} is {run.state}; only a completed run is released")
        if not participating_institutions(run=run).filter(pk=institution.pk).exists():
            raise NotAllowedError(f"{institution.slug} did not take part in run {run.pk}")
        approvals = ReleaseApproval.objects.filter(run=run).count()
        required = run.study.release_approvals_required
        if approvals < required:
            raise ConflictError(
                f"run {run.pk} has {approvals} of the {required} steward approvals its release "
                "needs; ask the participating hospitals' stewards to approve it"
            )
        if ModelRelease.objects.filter(run=run).exists():
            raise ConflictError(f"run {run.pk}'s model was already released")
        release = ModelRelease.objects.create(
            run=run,
            institution=institution,
            parameters=parameters,
            parameters_sha256=hashlib.sha256(parameters).hexdigest(),
            privacy_report=report,
        )
        audit_record(
            action="run.model_released",
            target=run,
            actor_label=f"node:{institution.slug}",
            data={
                "institution": institution.slug,
                "parameters_sha256": release.parameters_sha256,
                "bytes": len(parameters),
                "approvals": approvals,
            },
        )
    return release


def _decoded_model(parameters_b64: Any) -> bytes:
    if not isinstance(parameters_b64, str) or not parameters_b64:
        raise ValidationError(
            "send the model as base64 of its .npz bytes", fields={"parameters": ["required"]}
        )
    if len(parameters_b64) > (MAX_MODEL_BYTES * 4) // 3 + 4:
        raise PayloadTooLargeError(f"the model is larger than {MAX_MODEL_BYTES} bytes")
    try:
        parameters = base64.b64decode(parameters_b64, validate=True)
    except binascii.Error as error:
        raise ValidationError(
            f"the model is not base64: {error}", fields={"parameters": ["not base64"]}
        ) from error
    if len(parameters) > MAX_MODEL_BYTES:
        raise PayloadTooLargeError(f"the model is larger than {MAX_MODEL_BYTES} bytes")
    try:
        with zipfile.ZipFile(io.BytesIO(parameters)) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile as error:
        raise ValidationError(
            "the model is not an .npz archive", fields={"parameters": ["not an .npz archive"]}
        ) from error
    if "parameters.npy" not in names:
        raise ValidationError(
            "the .npz archive has no 'parameters' array", fields={"parameters": ["no parameters"]}
        )
    return parameters


def _checked_privacy_report(report: Any) -> dict[str, Any]:
    if not isinstance(report, dict) or not report:
        raise ValidationError(
            "the privacy report must be a non-empty JSON object",
            fields={"privacy_report": ["a JSON object"]},
        )
    if len(json.dumps(report)) > MAX_PRIVACY_REPORT_BYTES:
        raise PayloadTooLargeError(
            f"the privacy report is larger than {MAX_PRIVACY_REPORT_BYTES} bytes"
        )
    return report
