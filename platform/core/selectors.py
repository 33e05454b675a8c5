"""Reads for the dashboard and the navigation: what each role needs to see first.

Read-only over the other apps' models; a user can hold several roles at once (a steward who also
runs studies, an admin who is a steward) and sees one section per role.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Count, OuterRef, Subquery

from institutions.models import Institution
from institutions.selectors import institutions_of_steward, is_admin, is_researcher
from runs.models import Run
from studies.models import Enrollment, Study

# Studies in these states no longer wait for a steward's decision.
CLOSED_STUDY_STATES = (Study.State.COMPLETED, Study.State.FAILED, Study.State.CANCELLED)


@dataclass(frozen=True)
class Roles:
    researcher: bool
    steward: bool
    admin: bool


@dataclass(frozen=True)
class RunProgress:
    run: Run
    rounds_done: int

    @property
    def percent(self) -> int:
        if self.run.rounds_planned == 0:
            return 0
        return min(100, round(100 * self.rounds_done / self.run.rounds_planned))


@dataclass(frozen=True)
class StudyRow:
    study: Study
    approved: int
    invited: int
    latest_run: RunProgress | None


@dataclass(frozen=True)
class NodeRow:
    institution: Institution
    online: bool
    last_seen_at: datetime | None
    status: dict[str, object]


@dataclass(frozen=True)
class AdminCounts:
    users: int
    institutions: int
    nodes_online: int
    studies_by_state: dict[str, int]
    runs_by_state: dict[str, int]

    @property
    def studies(self) -> int:
        return sum(self.studies_by_state.values())

    @property
    def runs(self) -> int:
        return sum(self.runs_by_state.values())


@dataclass(frozen=True)
class Dashboard:
    roles: Roles
    studies: list[StudyRow] = field(default_factory=list)
    pending_invitations: list[Enrollment] = field(default_factory=list)
    nodes: list[NodeRow] = field(default_factory=list)
    counts: AdminCounts | None = None


def user_roles(*, user: AbstractBaseUser | AnonymousUser) -> Roles:
    """Researchers are in the researchers group (or own studies), stewards steward a hospital."""
    if not user.is_authenticated:
        return Roles(researcher=False, steward=False, admin=False)
    return Roles(
        researcher=is_researcher(user) or Study.objects.filter(owner_id=user.pk).exists(),
        steward=institutions_of_steward(user=user).exists(),
        admin=is_admin(user),
    )


def researcher_studies(*, user: AbstractBaseUser | AnonymousUser) -> list[StudyRow]:
    """The user's studies, newest first, with enrollment counts and the latest run's progress."""
    latest_run = (
        Run.objects.filter(study=OuterRef("pk")).order_by("-created_at", "-pk").values("pk")[:1]
    )
    studies = list(
        Study.objects.filter(owner_id=user.pk)
        .annotate(latest_run_id=Subquery(latest_run))
        .order_by("-created_at", "-pk")
    )
    run_ids = [s.latest_run_id for s in studies if s.latest_run_id is not None]
    runs = {
        run.pk: run
        for run in Run.objects.filter(pk__in=run_ids).annotate(rounds_done=Count("rounds"))
    }
    enrollment_counts: dict[tuple[int, str], int] = {
        (row["study_id"], row["state"]): row["n"]
        for row in Enrollment.objects.filter(study__in=studies)
        .values("study_id", "state")
        .annotate(n=Count("pk"))
    }
    rows = []
    for study in studies:
        run = runs.get(study.latest_run_id)
        progress = RunProgress(run=run, rounds_done=run.rounds_done) if run else None
        approved = enrollment_counts.get((study.pk, Enrollment.State.APPROVED), 0)
        invited = sum(n for (study_id, _), n in enrollment_counts.items() if study_id == study.pk)
        rows.append(StudyRow(study=study, approved=approved, invited=invited, latest_run=progress))
    return rows


def steward_pending_invitations(*, user: AbstractBaseUser | AnonymousUser) -> list[Enrollment]:
    """Invitations to the user's hospitals that still wait for a decision, oldest first."""
    return list(
        Enrollment.objects.filter(
            institution__in=institutions_of_steward(user=user), state=Enrollment.State.INVITED
        )
        .exclude(study__state__in=CLOSED_STUDY_STATES)
        .select_related("study", "study__owner", "institution")
        .order_by("created_at", "pk")
    )


def steward_nodes(*, user: AbstractBaseUser | AnonymousUser) -> list[NodeRow]:
    """The node of each hospital the user stewards, as last reported."""
    institutions = institutions_of_steward(user=user).order_by("name")
    return [
        NodeRow(
            institution=institution,
            online=institution.node_online(),
            last_seen_at=institution.last_seen_at,
            status=institution.node_status,
        )
        for institution in institutions
    ]


def admin_counts() -> AdminCounts:
    def by_state(rows: Iterable[dict[str, Any]]) -> dict[str, int]:
        return {row["state"]: row["n"] for row in rows}

    institutions = list(Institution.objects.all())
    return AdminCounts(
        users=get_user_model().objects.count(),
        institutions=len(institutions),
        nodes_online=sum(1 for institution in institutions if institution.node_online()),
        studies_by_state=by_state(Study.objects.values("state").annotate(n=Count("pk")).order_by()),
        runs_by_state=by_state(Run.objects.values("state").annotate(n=Count("pk")).order_by()),
    )


def dashboard_for_user(*, user: AbstractBaseUser | AnonymousUser) -> Dashboard:
    roles = user_roles(user=user)
    return Dashboard(
        roles=roles,
        studies=researcher_studies(user=user) if roles.researcher else [],
        pending_invitations=steward_pending_invitations(user=user) if roles.steward else [],
        nodes=steward_nodes(user=user) if roles.steward else [],
        counts=admin_counts() if roles.admin else None,
    )
