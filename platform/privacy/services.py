"""Writes about privacy budgets: the nodes' ledger mirrors and readiness reports, and the preflight
a run must pass to start.

The portal never decides a node's budget alone (the node's ledger fails closed on every round);
it refuses to start a run that it can already see some hospital would refuse.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils import timezone

from core.audit import audit_record
from core.errors import ConflictError
from hospitals.dp import EPSILON_CONVERSIONS, Accountant, PrivacyStep, epsilon_of
from hospitals.protocol import canonical_json
from institutions.models import Institution
from privacy.models import LedgerMirror, MirrorEntry, ReadinessReport, RunPreflight
from privacy.payloads import DatasetReport, EntryReport, ReadinessData
from privacy.selectors import Preflight, study_preflight
from runs.models import Run
from studies.models import Study

# --- ledger mirrors -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Accounting:
    epsilon_after: list[float]
    subtotals: dict[str, Any]

    @property
    def epsilon_spent(self) -> float:
        return self.epsilon_after[-1] if self.epsilon_after else 0.0


def _signature(steps: Iterable[PrivacyStep], *, delta: float, accountant: Accountant) -> str:
    """What an ε depends on: the (q, σ, steps) triples and the δ and accountant it is taken at."""
    document = {
        "delta": delta,
        "accountant": accountant.value,
        "steps": [[s.sample_rate, s.noise_multiplier, s.steps] for s in steps],
    }
    return hashlib.sha256(canonical_json(document).encode()).hexdigest()


def _reusable_prefix(dataset: DatasetReport, previous: LedgerMirror | None) -> list[float]:
    """The cumulative ε of the previous mirror's entries that the new report leaves unchanged."""
    if previous is None or previous.delta != dataset.delta:
        return []
    if previous.accountant != dataset.accountant.value:
        return []
    stored = previous.entries.order_by("position").values_list(
        "sample_rate", "noise_multiplier", "steps", "epsilon_after"
    )
    reused: list[float] = []
    for (sample_rate, noise, steps, epsilon), entry in zip(stored, dataset.entries, strict=False):
        step = entry.step
        if (sample_rate, noise, steps) != (step.sample_rate, step.noise_multiplier, step.steps):
            break
        reused.append(epsilon)
    return reused


def _accounting(dataset: DatasetReport, previous: LedgerMirror | None) -> _Accounting:
    """Every ε the mirror shows, computed here once with `epsilon_of` at the mirror's δ and
    accountant; values of an unchanged prefix or an unchanged study or run are reused, so a
    report that adds one round costs one accounting of the lifetime history, not one per entry."""
    delta, accountant = dataset.delta, dataset.accountant
    steps = [entry.step for entry in dataset.entries]
    epsilon_after = _reusable_prefix(dataset, previous)
    for count in range(len(epsilon_after), len(steps)):
        epsilon_after.append(epsilon_of(steps[: count + 1], delta=delta, accountant=accountant))

    known: dict[str, float] = {}
    if previous is not None:
        for group in ("studies", "runs"):
            for row in previous.subtotals.get(group, []):
                known[row["signature"]] = row["epsilon"]

    def epsilon(part: Sequence[PrivacyStep]) -> tuple[float, str]:
        signature = _signature(part, delta=delta, accountant=accountant)
        if signature not in known:
            known[signature] = epsilon_of(part, delta=delta, accountant=accountant)
        return known[signature], signature

    by_study: dict[str, list[PrivacyStep]] = {}
    by_run: dict[tuple[str, str], list[EntryReport]] = {}
    for entry in dataset.entries:
        by_study.setdefault(entry.study_id, []).append(entry.step)
        by_run.setdefault((entry.study_id, entry.run_id), []).append(entry)
    studies = []
    for study_id, part in by_study.items():
        value, signature = epsilon(part)
        studies.append(
            {"study_id": study_id, "epsilon": value, "entries": len(part), "signature": signature}
        )
    runs = []
    for (study_id, run_id), entries in by_run.items():
        value, signature = epsilon([entry.step for entry in entries])
        runs.append(
            {
                "study_id": study_id,
                "run_id": run_id,
                "epsilon": value,
                "rounds": len(entries),
                "first_recorded_at": entries[0].recorded_at.isoformat(),
                "last_recorded_at": entries[-1].recorded_at.isoformat(),
                "signature": signature,
            }
        )
    return _Accounting(epsilon_after=epsilon_after, subtotals={"studies": studies, "runs": runs})


def _mirror_fields(dataset: DatasetReport, accounting: _Accounting) -> dict[str, Any]:
    return {
        "max_lifetime_epsilon": dataset.max_lifetime_epsilon,
        "delta": dataset.delta,
        "accountant": dataset.accountant.value,
        "min_cohort_size": dataset.min_cohort_size,
        "epsilon_spent": accounting.epsilon_spent,
        "subtotals": accounting.subtotals,
        "report_sha256": dataset.sha256,
    }


def ledger_report_ingest(
    *, institution: Institution, datasets: Sequence[DatasetReport]
) -> list[LedgerMirror]:
    """Replace the portal's mirror of each reported dataset of `institution`'s node.

    All datasets are replaced in one transaction, or none. ε is recomputed here from the entries
    (never taken from the node). A report equal to the mirror (same sha256) only refreshes
    `reported_at` and is not audited: nodes report as often as they heartbeat.
    """
    ids = [dataset.dataset_id for dataset in datasets]
    previous = {
        mirror.dataset_id: mirror
        for mirror in LedgerMirror.objects.filter(institution=institution, dataset_id__in=ids)
    }
    # Accounting takes up to seconds for long PRV histories: done before the row locks are taken.
    accounting = {
        dataset.dataset_id: _accounting(dataset, previous.get(dataset.dataset_id))
        for dataset in datasets
        if dataset.dataset_id not in previous
        or previous[dataset.dataset_id].report_sha256 != dataset.sha256
    }
    now = timezone.now()
    mirrors = []
    with transaction.atomic():
        # One report of a hospital at a time: the replace below is a delete and an insert.
        Institution.objects.select_for_update().get(pk=institution.pk)
        current = {
            mirror.dataset_id: mirror
            for mirror in LedgerMirror.objects.filter(institution=institution, dataset_id__in=ids)
        }
        for dataset in datasets:
            mirror = current.get(dataset.dataset_id)
            if mirror is not None and mirror.report_sha256 == dataset.sha256:
                mirror.reported_at = now
                mirror.save(update_fields=["reported_at", "updated_at"])
                mirrors.append(mirror)
                continue
            figures = accounting.get(dataset.dataset_id) or _accounting(dataset, mirror)
            mirrors.append(_replace_mirror(institution, dataset, mirror, figures, now=now))
    return mirrors


def _replace_mirror(
    institution: Institution,
    dataset: DatasetReport,
    mirror: LedgerMirror | None,
    figures: _Accounting,
    *,
    now: Any,
) -> LedgerMirror:
    previous_sha256 = mirror.report_sha256 if mirror is not None else None
    fields = _mirror_fields(dataset, figures)
    if mirror is None:
        mirror = LedgerMirror.objects.create(
            institution=institution,
            dataset_id=dataset.dataset_id,
            reported_at=now,
            changed_at=now,
            **fields,
        )
    else:
        for name, value in fields.items():
            setattr(mirror, name, value)
        mirror.reported_at = now
        mirror.changed_at = now
        mirror.save()
        mirror.entries.all().delete()
    MirrorEntry.objects.bulk_create(
        MirrorEntry(
            mirror=mirror,
            position=position,
            study_id=entry.study_id,
            run_id=entry.run_id,
            round_number=entry.round_number,
            sample_rate=entry.step.sample_rate,
            noise_multiplier=entry.step.noise_multiplier,
            steps=entry.step.steps,
            delta=entry.step.delta,
            accountant=entry.step.accountant.value,
            recorded_at=entry.recorded_at,
            epsilon_after=epsilon_after,
        )
        for position, (entry, epsilon_after) in enumerate(
            zip(dataset.entries, figures.epsilon_after, strict=True)
        )
    )
    audit_record(
        action="privacy.ledger_reported",
        target=mirror,
        actor_label=f"node:{institution.slug}",
        data={
            "institution": institution.slug,
            "dataset_id": dataset.dataset_id,
            "entries": len(dataset.entries),
            "epsilon_spent": figures.epsilon_spent,
            "max_lifetime_epsilon": dataset.max_lifetime_epsilon,
            "delta": dataset.delta,
            "accountant": dataset.accountant.value,
            "conversion": EPSILON_CONVERSIONS[dataset.accountant],
            "sha256": dataset.sha256,
            "previous_sha256": previous_sha256,
        },
    )
    return mirror


# --- readiness ----------------------------------------------------------------------------------


def readiness_report_record(
    *, study: Study, institution: Institution, report: ReadinessData
) -> ReadinessReport:
    """Replace the node's current readiness report for `study`; audited only when it changed."""
    fields = {
        "dataset_id": report.dataset_id,
        "protocol_sha256": report.protocol_sha256,
        "consent_sha256": report.consent_sha256 or "",
        "consent_waiver": report.consent_waiver or "",
        "rows_train": report.rows_train,
        "rows_holdout": report.rows_holdout,
        "blockers": [{"code": b.code, "reason": b.reason} for b in report.blockers],
        "report_sha256": report.sha256,
    }
    now = timezone.now()
    with transaction.atomic():
        existing = (
            ReadinessReport.objects.select_for_update()
            .filter(study=study, institution=institution)
            .first()
        )
        if existing is not None and existing.report_sha256 == report.sha256:
            existing.reported_at = now
            existing.save(update_fields=["reported_at", "updated_at"])
            return existing
        readiness, _ = ReadinessReport.objects.update_or_create(
            study=study, institution=institution, defaults={**fields, "reported_at": now}
        )
        audit_record(
            action="privacy.readiness_reported",
            target=readiness,
            actor_label=f"node:{institution.slug}",
            data={
                "study": study.slug,
                "institution": institution.slug,
                "dataset_id": report.dataset_id,
                "protocol_sha256": report.protocol_sha256,
                "for_current_protocol": report.protocol_sha256 == study.protocol_sha256,
                "consent_sha256": report.consent_sha256,
                "consent_waiver": report.consent_waiver,
                "rows_train": report.rows_train,
                "rows_holdout": report.rows_holdout,
                "blockers": [b.code for b in report.blockers],
                "sha256": report.sha256,
            },
        )
    return readiness


# --- preflight ----------------------------------------------------------------------------------


def preflight_require(*, study: Study) -> Preflight:
    """The study's preflight, or a ConflictError naming every hospital that blocks the start."""
    preflight = study_preflight(study=study)
    if not preflight.passed:
        raise ConflictError(
            f"Start is blocked because the privacy preflight of study '{study.slug}' failed: "
            + "; ".join(preflight.reasons),
            fields={"preflight": list(preflight.reasons)},
        )
    return preflight


def preflight_record(*, run: Run, preflight: Preflight) -> RunPreflight:
    """Keep what the preflight projected for `run` (inside run_start's transaction)."""
    return RunPreflight.objects.create(
        run=run,
        protocol_sha256=preflight.protocol_sha256,
        projection=preflight.projection(),
    )
