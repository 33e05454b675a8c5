"""Reads about privacy budgets: the preflight of a study's run, and the ledger mirrors a user may
see. Stewards see their hospitals' ledgers and admins every ledger; a researcher sees a study's
preflight (lifetime totals and verdicts of its hospitals), never another hospital's ledger.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from django.db.models import QuerySet

from core.errors import NotFoundError
from hospitals.dp import (
    EPSILON_CONVERSIONS,
    Accountant,
    DpSettings,
    PrivacyStep,
    TrainingSettings,
    epsilon_of,
    plan_round,
)
from hospitals.participation import TARGET_TOLERANCE, published_rows
from hospitals.protocol import ProtocolError, StudyProtocol
from institutions.models import Institution
from institutions.selectors import institutions_of_steward, is_admin
from privacy.models import LedgerMirror, MirrorEntry, ReadinessReport
from runs.models import Run
from runs.selectors import runs_visible_to
from studies.models import Enrollment, Study
from studies.selectors import approved_institutions, studies_visible_to

# Studies whose next run is still to be started: the study page shows their preflight.
PREFLIGHT_STATES = (Study.State.RECRUITING, Study.State.READY)
# Points of the lifetime ε chart: its x axis labels every point, so long ledgers are thinned.
CHART_POINTS = 24
HEARTBEAT_HINT = "its IT runs `cohort-hospital heartbeat`, which reports both"


# Planning searches the accountant (up to seconds with PRV); the page and the start ask again
# for the same inputs, and the answer depends on nothing else.
@lru_cache(maxsize=256)
def _planned(
    privacy: DpSettings, training: TrainingSettings, rounds: int, n_rows: int
) -> PrivacyStep:
    return plan_round(privacy=privacy, training=training, rounds=rounds, n_rows=n_rows)


@lru_cache(maxsize=64)
def _epsilon(steps: tuple[PrivacyStep, ...], delta: float, accountant: Accountant) -> float:
    return epsilon_of(steps, delta=delta, accountant=accountant)


# --- preflight ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreflightRow:
    """One approved hospital: what its node reported, what a run would cost it, and why not."""

    institution: Institution
    report: ReadinessReport | None
    mirror: LedgerMirror | None
    planned: PrivacyStep | None
    run_epsilon: float | None
    lifetime_projected: float | None
    reasons: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.reasons

    @property
    def dataset_id(self) -> str | None:
        return self.report.dataset_id if self.report else None

    @property
    def rows_train(self) -> int | None:
        return self.report.rows_train if self.report else None

    @property
    def rows_train_rounded(self) -> int | None:
        """What researchers see: rounded as nodes round the rows they publish with a round."""
        return published_rows(self.report.rows_train) if self.report else None

    @property
    def lifetime_spent(self) -> float | None:
        return self.mirror.epsilon_spent if self.mirror else None

    @property
    def cap(self) -> float | None:
        return self.mirror.max_lifetime_epsilon if self.mirror else None

    @property
    def consent(self) -> str:
        if self.report is None:
            return ""
        if self.report.consent_sha256:
            return self.report.consent_sha256
        if self.report.consent_waiver:
            return f"waived: {self.report.consent_waiver}"
        return ""


@dataclass(frozen=True)
class Preflight:
    """Whether a run of `study` can start now, hospital by hospital (SPEC, Preflight)."""

    study: Study
    protocol_sha256: str
    protocol: StudyProtocol | None
    rows: tuple[PreflightRow, ...]
    problems: tuple[str, ...] = ()

    @property
    def reasons(self) -> tuple[str, ...]:
        return (
            *self.problems,
            *(f"{row.institution.slug}: {reason}" for row in self.rows for reason in row.reasons),
        )

    @property
    def passed(self) -> bool:
        return not self.reasons

    @property
    def rounds(self) -> int | None:
        return self.protocol.rounds if self.protocol else None

    @property
    def target_epsilon(self) -> float | None:
        return self.protocol.privacy.target_epsilon if self.protocol else None

    @property
    def delta(self) -> float | None:
        return self.protocol.privacy.delta if self.protocol else None

    @property
    def accountant(self) -> str:
        return self.protocol.privacy.accountant.value if self.protocol else ""

    @property
    def conversion(self) -> str:
        return EPSILON_CONVERSIONS[self.protocol.privacy.accountant] if self.protocol else ""

    def projection(self) -> dict[str, Any]:
        """The preflight as JSON, as a run records it at its start."""
        return {
            "passed": self.passed,
            "reasons": list(self.reasons),
            "protocol_sha256": self.protocol_sha256,
            "rounds": self.rounds,
            "target_epsilon": self.target_epsilon,
            "delta": self.delta,
            "accountant": self.accountant,
            "conversion": self.conversion,
            "hospitals": [_row_projection(row) for row in self.rows],
        }


def _row_projection(row: PreflightRow) -> dict[str, Any]:
    planned, mirror = row.planned, row.mirror
    return {
        "institution": row.institution.slug,
        "dataset_id": row.dataset_id,
        "rows_train": row.rows_train,
        "consent": row.consent,
        "sample_rate": planned.sample_rate if planned else None,
        "noise_multiplier": planned.noise_multiplier if planned else None,
        "steps_per_round": planned.steps if planned else None,
        "run_epsilon": row.run_epsilon,
        "lifetime_spent": row.lifetime_spent,
        "lifetime_projected": row.lifetime_projected,
        "max_lifetime_epsilon": row.cap,
        "lifetime_delta": mirror.delta if mirror else None,
        "lifetime_accountant": mirror.accountant if mirror else None,
        "lifetime_conversion": mirror.conversion if mirror else None,
        "reasons": list(row.reasons),
    }


def _short(sha256: str) -> str:
    return f"{sha256[:12]}…"


def _preflight_row(
    *,
    institution: Institution,
    protocol: StudyProtocol,
    protocol_sha256: str,
    report: ReadinessReport | None,
    mirror: LedgerMirror | None,
) -> PreflightRow:
    def refused(*reasons: str, **figures: Any) -> PreflightRow:
        return PreflightRow(
            institution=institution,
            report=report,
            mirror=mirror,
            planned=figures.get("planned"),
            run_epsilon=figures.get("run_epsilon"),
            lifetime_projected=figures.get("lifetime_projected"),
            reasons=reasons,
        )

    if report is None:
        return refused(f"its node has not reported its readiness for this study ({HEARTBEAT_HINT})")
    if report.protocol_sha256 != protocol_sha256:
        return refused(
            f"its readiness report is for protocol {_short(report.protocol_sha256)}, not the "
            f"current {_short(protocol_sha256)}: its node must check the current protocol "
            f"({HEARTBEAT_HINT})"
        )
    reasons = [
        f"its node would refuse the run ({blocker.get('code')}): {blocker.get('reason')}"
        for blocker in report.blockers
    ]
    if mirror is None:
        reasons.append(
            f"the portal has no mirror of the privacy ledger of dataset '{report.dataset_id}', so "
            f"its lifetime budget cannot be checked ({HEARTBEAT_HINT})"
        )
    rounds, privacy = protocol.rounds, protocol.privacy
    try:
        planned = _planned(privacy, protocol.training, rounds, report.rows_train)
    except ValueError as error:
        reasons.append(f"DP training cannot be planned for {report.rows_train} rows: {error}")
        return refused(*reasons)
    run_epsilon = _epsilon((planned,) * rounds, privacy.delta, privacy.accountant)
    if not run_epsilon <= privacy.target_epsilon * (1 + TARGET_TOLERANCE):
        reasons.append(
            f"a run would spend ε={run_epsilon:.3f}, more than the study's target "
            f"{privacy.target_epsilon:g} (δ={privacy.delta:g}, "
            f"{EPSILON_CONVERSIONS[privacy.accountant]})"
        )
    lifetime_projected = None
    if mirror is not None:
        history = tuple(entry.step for entry in mirror.entries.all())
        accountant = Accountant(mirror.accountant)
        lifetime_projected = _epsilon(history + (planned,) * rounds, mirror.delta, accountant)
        # Written so that a NaN ε refuses too.
        if not lifetime_projected <= mirror.max_lifetime_epsilon:
            reasons.append(
                f"dataset '{mirror.dataset_id}' has spent ε={mirror.epsilon_spent:.2f} of its "
                f"lifetime cap {mirror.max_lifetime_epsilon:g} (δ={mirror.delta:g}, "
                f"{mirror.conversion}); this run would bring it to {lifetime_projected:.2f}"
            )
    return refused(
        *reasons,
        planned=planned,
        run_epsilon=run_epsilon,
        lifetime_projected=lifetime_projected,
    )


def study_preflight(*, study: Study) -> Preflight:
    """For each hospital that approved the current protocol: its readiness for that protocol, the
    ε a run would cost it (`plan_round` as its node will plan it) against the study's target, and
    its dataset's lifetime ε after the run against its node's cap. Read-only."""
    try:
        protocol = StudyProtocol.from_dict(study.protocol, require_encryption=False)
    except ProtocolError as error:
        return Preflight(
            study=study,
            protocol_sha256=study.protocol_sha256,
            protocol=None,
            rows=(),
            problems=(f"the study's protocol cannot be read: {error}",),
        )
    institutions = list(approved_institutions(study=study).order_by("name"))
    reports = {
        report.institution_id: report
        for report in ReadinessReport.objects.filter(study=study, institution__in=institutions)
    }
    wanted = {(r.institution_id, r.dataset_id) for r in reports.values()}
    mirrors = {
        (mirror.institution_id, mirror.dataset_id): mirror
        for mirror in LedgerMirror.objects.filter(
            institution__in=institutions,
            dataset_id__in={dataset_id for _, dataset_id in wanted},
        ).prefetch_related("entries")
    }
    rows = []
    for institution in institutions:
        report = reports.get(institution.pk)
        mirror = mirrors.get((institution.pk, report.dataset_id)) if report else None
        rows.append(
            _preflight_row(
                institution=institution,
                protocol=protocol,
                protocol_sha256=study.protocol_sha256,
                report=report,
                mirror=mirror,
            )
        )
    problems = () if rows else ("no hospital has approved the study's current protocol",)
    return Preflight(
        study=study,
        protocol_sha256=study.protocol_sha256,
        protocol=protocol,
        rows=tuple(rows),
        problems=problems,
    )


@dataclass(frozen=True)
class PreflightRowView:
    row: PreflightRow
    exact_rows: bool


@dataclass(frozen=True)
class PreflightView:
    """The study page's preflight table for one viewer."""

    preflight: Preflight
    rows: list[PreflightRowView]
    hidden: int = 0  # approved hospitals whose rows this viewer (a steward) does not see
    reasons: list[str] = field(default_factory=list)


def study_preflight_for_user(*, study: Study, user: Any) -> PreflightView | None:
    """The preflight for the study's owner, admins (every hospital; exact row counts for admins
    only) and stewards (their own hospitals, exact); None for anyone else or once a run went."""
    if study.state not in PREFLIGHT_STATES or not user.is_authenticated:
        return None
    admin = is_admin(user)
    owner = study.owner_id == user.pk
    stewarded = set(institutions_of_steward(user=user).values_list("pk", flat=True))
    if not (admin or owner or stewarded):
        return None
    preflight = study_preflight(study=study)
    rows = [
        PreflightRowView(row=row, exact_rows=admin or row.institution.pk in stewarded)
        for row in preflight.rows
        if admin or owner or row.institution.pk in stewarded
    ]
    shown = {view.row.institution.slug for view in rows}
    if admin or owner:
        reasons = list(preflight.reasons)
    else:
        reasons = [
            f"{view.row.institution.slug}: {reason}" for view in rows for reason in view.row.reasons
        ]
    return PreflightView(
        preflight=preflight,
        rows=rows,
        hidden=len(preflight.rows) - len(shown),
        reasons=reasons,
    )


# --- what nodes may report on -------------------------------------------------------------------


def study_get_for_enrolled_node(*, institution: Institution, slug: str) -> Study:
    """A study this hospital is invited to or approved; a declined or unknown one is a 404."""
    study = (
        Study.objects.filter(
            slug=slug,
            enrollments__institution=institution,
            enrollments__state__in=[Enrollment.State.INVITED, Enrollment.State.APPROVED],
        )
        .distinct()
        .first()
    )
    if study is None:
        raise NotFoundError(f"no study '{slug}' that {institution.slug} is enrolled in")
    return study


# --- ledger pages -------------------------------------------------------------------------------


def ledger_mirrors_visible_to(*, user: Any) -> QuerySet[LedgerMirror]:
    """Admins see every hospital's ledgers; stewards their own hospitals'; nobody else any."""
    if user is None or not user.is_authenticated or not user.is_active:
        return LedgerMirror.objects.none()
    mirrors = LedgerMirror.objects.select_related("institution")
    if is_admin(user):
        return mirrors.all()
    return mirrors.filter(institution__in=institutions_of_steward(user=user))


@dataclass(frozen=True)
class StudySpend:
    study_id: str
    epsilon: float
    entries: int
    study: Study | None  # the portal's study of that id, when the viewer may open it


@dataclass(frozen=True)
class RunSpend:
    study_id: str
    run_id: str
    epsilon: float
    rounds: int
    first_recorded_at: str
    last_recorded_at: str
    run: Run | None  # the portal's run of that Flower run id, when the viewer may open it


@dataclass(frozen=True)
class DatasetBudget:
    mirror: LedgerMirror
    studies: list[StudySpend]
    runs: list[RunSpend]
    rounds_recorded: int
    points: list[tuple[float, float]]  # (entry number, lifetime ε after it), thinned


@dataclass(frozen=True)
class InstitutionBudgets:
    institution: Institution
    datasets: list[DatasetBudget]


def _thinned(
    points: list[tuple[float, float]], limit: int = CHART_POINTS
) -> list[tuple[float, float]]:
    if len(points) <= limit:
        return points
    # Evenly spaced, always keeping the latest entry; cumulative ε only grows, so nothing is hidden
    # between the points but the shape of each step.
    picked = {round(i * (len(points) - 1) / (limit - 1)) for i in range(limit)}
    return [points[i] for i in sorted(picked)]


def privacy_budgets_for_user(*, user: Any) -> list[InstitutionBudgets]:
    """Each ledger mirror the user may see, with ε per study and per run (recomputed by the
    portal at ingest) and the points of its lifetime ε chart, grouped by hospital."""
    mirrors = list(ledger_mirrors_visible_to(user=user).order_by("institution__name", "dataset_id"))
    if not mirrors:
        return []
    studies_of = {
        study.slug: study
        for study in studies_visible_to(user=user).filter(
            slug__in={row["study_id"] for m in mirrors for row in m.subtotals.get("studies", [])}
        )
    }
    runs_of = {
        run.flower_run_id: run
        for run in runs_visible_to(user=user)
        .select_related("study")
        .filter(
            flower_run_id__in={
                row["run_id"] for m in mirrors for row in m.subtotals.get("runs", [])
            }
        )
    }
    points: dict[int, list[tuple[float, float]]] = {}
    for mirror_id, position, epsilon in MirrorEntry.objects.filter(mirror__in=mirrors).values_list(
        "mirror_id", "position", "epsilon_after"
    ):
        points.setdefault(mirror_id, []).append((float(position + 1), epsilon))
    grouped: dict[int, InstitutionBudgets] = {}
    for mirror in mirrors:
        budget = DatasetBudget(
            mirror=mirror,
            studies=[
                StudySpend(
                    study_id=row["study_id"],
                    epsilon=row["epsilon"],
                    entries=row["entries"],
                    study=studies_of.get(row["study_id"]),
                )
                for row in mirror.subtotals.get("studies", [])
            ],
            runs=[
                RunSpend(
                    study_id=row["study_id"],
                    run_id=row["run_id"],
                    epsilon=row["epsilon"],
                    rounds=row["rounds"],
                    first_recorded_at=row["first_recorded_at"],
                    last_recorded_at=row["last_recorded_at"],
                    run=_matching_run(runs_of.get(row["run_id"]), row["study_id"]),
                )
                for row in mirror.subtotals.get("runs", [])
            ],
            rounds_recorded=len(points.get(mirror.pk, [])),
            points=_thinned(sorted(points.get(mirror.pk, []))),
        )
        grouped.setdefault(
            mirror.institution_id, InstitutionBudgets(institution=mirror.institution, datasets=[])
        ).datasets.append(budget)
    return list(grouped.values())


def _matching_run(run: Run | None, study_id: str) -> Run | None:
    # Flower run ids are unique per SuperLink; the study id guards against another federation's.
    return run if run is not None and run.study.slug == study_id else None
