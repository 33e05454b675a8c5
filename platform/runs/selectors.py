"""Reads about runs. Per-object reads raise NotFoundError for what the user may not see, so a
run's existence is never revealed to someone outside its study."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db.models import Q, QuerySet

from core.errors import NotFoundError
from institutions.models import Institution, Membership
from institutions.selectors import is_admin
from runs.models import HospitalRound, ModelRelease, ReleaseApproval, Round, Run
from studies.models import Enrollment


def runs_visible_to(*, user: Any) -> QuerySet[Run]:
    """Admins see every run; researchers their studies' runs; stewards the runs of studies their
    hospital took part in (approved enrollment) or reported a round to."""
    if user is None or not user.is_authenticated or not user.is_active:
        return Run.objects.none()
    if is_admin(user):
        return Run.objects.all()
    stewarded = Institution.objects.filter(
        memberships__user=user, memberships__role=Membership.STEWARD
    )
    return Run.objects.filter(
        Q(study__owner=user)
        | Q(
            study__enrollments__institution__in=stewarded,
            study__enrollments__state=Enrollment.State.APPROVED,
        )
        | Q(rounds__hospitals__institution__in=stewarded)
    ).distinct()


def run_get_for_user(*, user: Any, run_id: int) -> Run:
    run = (
        runs_visible_to(user=user)
        .select_related("study", "study__owner", "started_by")
        .filter(pk=run_id)
        .first()
    )
    if run is None:
        raise NotFoundError(f"no run {run_id} that you can see")
    return run


def run_can_manage(*, run: Run, user: Any) -> bool:
    """The study's owner and admins start, cancel and download; stewards only look and approve."""
    return bool(user.is_authenticated and (run.study.owner_id == user.pk or is_admin(user)))


def run_rounds(*, run: Run) -> QuerySet[Round]:
    return run.rounds.prefetch_related("hospitals").order_by("number")


def participating_institutions(*, run: Run) -> QuerySet[Institution]:
    """Hospitals that contributed to at least one recorded round of the run."""
    return Institution.objects.filter(hospitalround__round__run=run).distinct()


def release_approvable_institutions(*, run: Run, user: Any) -> QuerySet[Institution]:
    """The participating hospitals `user` stewards that have not approved the release yet."""
    if user is None or not user.is_authenticated:
        return Institution.objects.none()
    return (
        participating_institutions(run=run)
        .filter(memberships__user=user, memberships__role=Membership.STEWARD)
        .exclude(pk__in=ReleaseApproval.objects.filter(run=run).values("institution"))
    )


def release_approval_count(*, run: Run) -> int:
    return ReleaseApproval.objects.filter(run=run).count()


@dataclass(frozen=True)
class RunSummary:
    run: Run
    rounds: list[Round]
    rounds_done: int
    approvals: int
    released: bool

    @property
    def percent(self) -> int:
        if not self.run.rounds_planned:
            return 0
        return min(100, round(100 * self.rounds_done / self.run.rounds_planned))

    @property
    def epsilon_by_hospital(self) -> dict[str, float]:
        """The latest cumulative ε each hospital reported."""
        latest: dict[str, float] = {}
        for round_ in self.rounds:
            for hospital in round_.hospitals.all():
                latest[hospital.hospital] = hospital.epsilon
        return latest


def run_summary(*, run: Run) -> RunSummary:
    rounds = list(run_rounds(run=run))
    return RunSummary(
        run=run,
        rounds=rounds,
        rounds_done=len(rounds),
        approvals=release_approval_count(run=run),
        released=ModelRelease.objects.filter(run=run).exists(),
    )


def hospital_rounds(*, run: Run) -> QuerySet[HospitalRound]:
    return HospitalRound.objects.filter(round__run=run).select_related("round")


def release_get_for_download(*, run: Run, user: Any) -> ModelRelease:
    """The released model, for the study's owner and admins only."""
    release = ModelRelease.objects.filter(run=run).first()
    if release is None or not run_can_manage(run=run, user=user):
        raise NotFoundError(f"run {run.pk} has no released model that you can download")
    return release
