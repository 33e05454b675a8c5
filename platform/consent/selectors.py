"""Reads of the consent registry.

A pseudonym's current state is its latest record: highest `decided_at`, then highest id (insertion
order). It has *current consent* when that record grants consent and, if the study requires the
current form, names the current (highest) form version. Researchers only ever see counts, and
counts below `SUPPRESSION_THRESHOLD` are shown as "<10" (`suppressed`); pseudonyms are shown only
to the stewards of the hospital that holds them.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias, TypedDict

from django.db.models import F, Q, QuerySet, Window
from django.db.models.functions import FirstValue, RowNumber

from consent.models import (
    ConsentBatch,
    ConsentForm,
    ConsentRecord,
    ConsentSnapshot,
    StudyConsentSettings,
)
from core.errors import NotAllowedError, NotFoundError
from institutions.models import Institution
from institutions.selectors import institutions_of_steward
from studies.models import Enrollment, Study
from studies.selectors import studies_visible_to

if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations


class LatestAnnotations(TypedDict):
    rank: int
    current_status: str
    current_form_version: int | None


LatestRecord: TypeAlias = "WithAnnotations[ConsentRecord, LatestAnnotations]"

SUPPRESSION_THRESHOLD = 10
# A hospital takes part in a study's consent registry once invited, and while it has not declined.
REGISTRY_ENROLLMENT_STATES = (Enrollment.State.INVITED, Enrollment.State.APPROVED)

Status = ConsentRecord.Status


def suppressed(count: int) -> str:
    """How a count of patients is shown to anyone but the hospital's stewards: "<10" below 10.

    Zero is "<10" too, so an empty hospital cannot be told apart from a small one.
    """
    return f"<{SUPPRESSION_THRESHOLD}" if count < SUPPRESSION_THRESHOLD else str(count)


@dataclass(frozen=True)
class ConsentRules:
    """What a node (and the pages) need to know about a study's consent forms."""

    versions: list[int]
    requires_current: bool

    @property
    def current_version(self) -> int | None:
        return self.versions[-1] if self.versions else None

    @property
    def required_form_version(self) -> int | None:
        return self.current_version if self.requires_current else None

    def gives_consent(self, *, status: str, form_version: int | None) -> bool:
        """Whether a pseudonym whose latest record is (status, form_version) has current consent
        (the same rule as `currently_consented`, for rows already loaded)."""
        return status == Status.GRANTED and (
            not self.requires_current or form_version == self.current_version
        )


def consent_forms(*, study: Study) -> QuerySet[ConsentForm]:
    return (
        ConsentForm.objects.filter(study=study).select_related("published_by").order_by("version")
    )


def consent_rules(*, study: Study) -> ConsentRules:
    versions = list(
        ConsentForm.objects.filter(study=study)
        .order_by("version")
        .values_list("version", flat=True)
    )
    requires = StudyConsentSettings.objects.filter(study=study, requires_current_form=True).exists()
    return ConsentRules(versions=versions, requires_current=requires)


def latest_records(
    *, study: Study, institution: Institution | None = None, prefix: str = ""
) -> QuerySet[LatestRecord]:
    """Each pseudonym's latest record (by decided_at, then id), ranked by a window function.

    Filter the result only on `current_status` and `current_form_version` (window values, applied
    after ranking): a plain `status` filter would run before ranking and find each pseudonym's
    latest *granted* record instead. Unlike an anti-join ("no later record exists"), a window's
    plan does not depend on table statistics: right after a 40k-row import the anti-join ran as
    a quadratic nested loop.
    """
    records = ConsentRecord.objects.filter(study=study)
    if institution is not None:
        records = records.filter(institution=institution)
    if prefix:
        records = records.filter(pseudonym__startswith=prefix)

    def latest(expression: Any) -> Window:
        return Window(
            expression,
            partition_by=[F("institution_id"), F("pseudonym")],
            order_by=[F("decided_at").desc(), F("id").desc()],
        )

    return (
        records.order_by()
        .annotate(
            rank=latest(RowNumber()),
            current_status=latest(FirstValue("status")),
            current_form_version=latest(FirstValue("form_version")),
        )
        .filter(rank=1)
    )


def currently_consented(
    *, study: Study, institution: Institution | None = None, rules: ConsentRules | None = None
) -> QuerySet[LatestRecord]:
    """Latest records that give current consent under the study's rules."""
    rules = rules or consent_rules(study=study)
    records = latest_records(study=study, institution=institution).filter(
        current_status=Status.GRANTED
    )
    if rules.requires_current:
        records = records.filter(current_form_version=rules.current_version)
    return records


def granted_pseudonyms(*, study: Study, institution: Institution, rules: ConsentRules) -> list[str]:
    """The sorted pseudonyms with current consent (sorted in Python: the order is hashed, so it
    must not depend on the database's collation)."""
    return sorted(
        currently_consented(study=study, institution=institution, rules=rules).values_list(
            "pseudonym", flat=True
        )
    )


@dataclass(frozen=True)
class HospitalCount:
    institution: Institution
    consented: int

    @property
    def shown(self) -> str:
        return suppressed(self.consented)


def consent_counts(*, study: Study) -> list[HospitalCount]:
    """Patients with current consent per hospital in the study's registry (exact: show `.shown`)."""
    counts = Counter(
        currently_consented(study=study).values_list("institution_id", flat=True).order_by()
    )
    institutions = Institution.objects.filter(
        Q(enrollments__study=study, enrollments__state__in=REGISTRY_ENROLLMENT_STATES)
        | Q(pk__in=counts.keys())
    ).distinct()
    return [
        HospitalCount(institution=institution, consented=counts.get(institution.pk, 0))
        for institution in institutions.order_by("name")
    ]


def consent_history(*, study: Study) -> QuerySet[ConsentBatch]:
    """Batches that changed the registry, newest first (re-imports adding nothing are left out)."""
    return (
        ConsentBatch.objects.filter(study=study, created__gt=0)
        .select_related("institution")
        .order_by("-created_at", "-id")
    )


def consent_snapshots(*, study: Study, institution: Institution) -> QuerySet[ConsentSnapshot]:
    """The distinct snapshots served to a hospital's node, most recently served first: a round's
    reported consent hash is one of these."""
    return ConsentSnapshot.objects.filter(study=study, institution=institution).order_by(
        "-last_served_at", "-id"
    )


@dataclass(frozen=True)
class RegistryEntry:
    """One pseudonym of a hospital's registry as its stewards see it."""

    latest: ConsentRecord
    consented: bool
    history: list[ConsentRecord]

    @property
    def pseudonym(self) -> str:
        return self.latest.pseudonym


def registry_pseudonyms(
    *, study: Study, institution: Institution, search: str = ""
) -> QuerySet[LatestRecord]:
    """The latest record of each pseudonym in a hospital's registry, by pseudonym."""
    records = latest_records(study=study, institution=institution, prefix=search.strip().lower())
    return records.order_by("pseudonym")


def registry_entries(*, latest: list[ConsentRecord], rules: ConsentRules) -> list[RegistryEntry]:
    """Registry rows with each pseudonym's full history (one query for the whole page)."""
    if not latest:
        return []
    first = latest[0]
    histories: dict[str, list[ConsentRecord]] = defaultdict(list)
    for record in ConsentRecord.objects.filter(
        study_id=first.study_id,
        institution_id=first.institution_id,
        pseudonym__in=[entry.pseudonym for entry in latest],
    ).order_by("decided_at", "id"):
        histories[record.pseudonym].append(record)
    return [
        RegistryEntry(
            latest=record,
            consented=rules.gives_consent(status=record.status, form_version=record.form_version),
            history=histories[record.pseudonym],
        )
        for record in latest
    ]


def registry_totals(
    *, study: Study, institution: Institution, rules: ConsentRules
) -> dict[str, int]:
    """How many pseudonyms the registry holds, have current consent, have withdrawn (one scan)."""
    states = Counter(
        latest_records(study=study, institution=institution)
        .values_list("current_status", "current_form_version")
        .order_by()
    )
    consented = sum(
        n
        for (status, version), n in states.items()
        if rules.gives_consent(status=status, form_version=version)
    )
    return {
        "pseudonyms": sum(states.values()),
        "consented": consented,
        "withdrawn": sum(n for (status, _), n in states.items() if status == Status.WITHDRAWN),
    }


def study_get_by_slug_for_user(*, user: Any, slug: str) -> Study:
    study = studies_visible_to(user=user).select_related("owner").filter(slug=slug).first()
    if study is None:
        raise NotFoundError(f"no study '{slug}' that you can see")
    return study


def registry_institutions_of_steward(*, user: Any, study: Study) -> QuerySet[Institution]:
    """The hospitals `user` stewards whose registry for `study` they may read and write."""
    return (
        institutions_of_steward(user=user)
        .filter(enrollments__study=study, enrollments__state__in=REGISTRY_ENROLLMENT_STATES)
        .order_by("name")
    )


def study_get_for_consent_node(*, institution: Institution, slug: str) -> Study:
    """The study a node reads or writes consent for: its hospital must be invited or approved."""
    enrollment = (
        Enrollment.objects.select_related("study")
        .filter(institution=institution, study__slug=slug)
        .first()
    )
    if enrollment is None:
        raise NotFoundError(
            f"no study '{slug}' that {institution.slug} is enrolled in; a researcher must "
            "invite the hospital before its node can exchange consent for the study"
        )
    if enrollment.state not in REGISTRY_ENROLLMENT_STATES:
        raise NotAllowedError(
            f"{institution.slug} declined study '{slug}'; its node cannot exchange consent for it"
        )
    return enrollment.study
