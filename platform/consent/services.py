"""Writes to the consent registry: forms, settings, hospitals' records, withdrawals, snapshots.

Each service runs in one transaction together with its audit record. Writes to one hospital's
registry for a study lock that hospital's enrollment row first, so imports, steward withdrawals
and snapshots of one registry see one order of events. Records are appended, never changed.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.contrib.auth.models import User
from django.db import connection, transaction
from django.db.models import F, Max
from django.utils import timezone

from consent.models import (
    ConsentBatch,
    ConsentForm,
    ConsentRecord,
    ConsentSnapshot,
    Source,
    StudyConsentSettings,
)
from consent.selectors import (
    REGISTRY_ENROLLMENT_STATES,
    ConsentRules,
    consent_rules,
    granted_pseudonyms,
    latest_records,
)
from core.audit import audit_record
from core.errors import ConflictError, NotAllowedError, NotFoundError, ValidationError
from hospitals.consent import snapshot_sha256
from institutions.models import Institution
from institutions.selectors import is_steward_of
from studies.models import Enrollment, Study

MAX_RECORDS = 200_000
MAX_FIELD_ERRORS = 50
MAX_FORM_TITLE_LENGTH = 200
MAX_FORM_TEXT_LENGTH = 100_000
# A decision dated a little ahead of the portal's clock is a time zone, not the future.
FUTURE_TOLERANCE = timedelta(days=1)
RECORD_FIELDS = ("pseudonym", "status", "decided_at", "form_version")
PSEUDONYM_RE = re.compile(r"[0-9a-f]{64}")
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
FINAL_STUDY_STATES = (Study.State.COMPLETED, Study.State.FAILED, Study.State.CANCELLED)

Status = ConsentRecord.Status
RecordKey = tuple[str, str, datetime, int | None]


def consent_form_publish(*, study: Study, title: str, text: str, actor: User) -> ConsentForm:
    """Publish the next version (highest + 1) of the study's consent form (owner only)."""
    _require_owner(study, actor)
    title = (title or "").strip()
    text = (text or "").strip()
    fields: dict[str, list[str]] = {}
    if not title or len(title) > MAX_FORM_TITLE_LENGTH:
        fields["title"] = [f"1 to {MAX_FORM_TITLE_LENGTH} characters"]
    if not text or len(text) > MAX_FORM_TEXT_LENGTH:
        fields["text"] = [f"1 to {MAX_FORM_TEXT_LENGTH} characters"]
    if fields:
        raise ValidationError(
            "a consent form needs a title and its text (or a summary of it)", fields=fields
        )
    with transaction.atomic():
        locked = Study.objects.select_for_update().get(pk=study.pk)
        if locked.state in FINAL_STUDY_STATES:
            raise ConflictError(
                f"study '{locked.slug}' is {locked.state}; consent forms can no longer be published"
            )
        latest = ConsentForm.objects.filter(study=locked).aggregate(v=Max("version"))["v"] or 0
        form = ConsentForm.objects.create(
            study=locked,
            version=latest + 1,
            title=title,
            text=text,
            text_sha256=hashlib.sha256(text.encode()).hexdigest(),
            published_by=actor,
        )
        audit_record(
            action="consent.form_published",
            target=form,
            actor=actor,
            data={
                "study": locked.slug,
                "version": form.version,
                "title": title,
                "text_sha256": form.text_sha256,
            },
        )
    return form


def consent_settings_update(
    *, study: Study, requires_current_form: bool, actor: User
) -> StudyConsentSettings:
    """Whether only consent on the current form version counts (owner only)."""
    _require_owner(study, actor)
    with transaction.atomic():
        locked = Study.objects.select_for_update().get(pk=study.pk)
        if requires_current_form and not ConsentForm.objects.filter(study=locked).exists():
            raise ValidationError(
                f"study '{locked.slug}' has no consent form yet; publish one before requiring "
                "its current version",
                fields={"requires_current_form": ["no consent form published"]},
            )
        settings, _ = StudyConsentSettings.objects.get_or_create(study=locked)
        if settings.requires_current_form == requires_current_form:
            return settings
        settings.requires_current_form = requires_current_form
        settings.updated_by = actor
        settings.save()
        audit_record(
            action="consent.settings_updated",
            target=locked,
            actor=actor,
            data={"requires_current_form": requires_current_form},
        )
    return settings


@dataclass(frozen=True)
class ValidRecord:
    pseudonym: str
    status: str
    decided_at: datetime
    form_version: int | None

    @property
    def key(self) -> RecordKey:
        return (self.pseudonym, self.status, self.decided_at, self.form_version)


def consent_records_record(
    *, study: Study, institution: Institution, records: Any, actor_label: str
) -> ConsentBatch:
    """Append a node's consent records to its hospital's registry: all or nothing, idempotent.

    Every record is validated before anything is written; a record equal to one already in the
    registry (pseudonym, status, decided_at, form_version) is counted as unchanged.
    """
    # Form versions are append-only, so records valid now stay valid inside the transaction.
    valid = _validated_records(records, rules=consent_rules(study=study), study=study)
    with transaction.atomic():
        _lock_registry(study, institution)
        known = _known_keys(study, institution)
        new = [record for record in valid if record.key not in known]
        batch = ConsentBatch.objects.create(
            study=study,
            institution=institution,
            source=Source.NODE_IMPORT,
            actor_label=actor_label,
            created=len(new),
            unchanged=len(valid) - len(new),
            granted=sum(1 for record in new if record.status == Status.GRANTED),
            withdrawn=sum(1 for record in new if record.status == Status.WITHDRAWN),
        )
        _insert_records(new, study=study, institution=institution, batch=batch)
        audit_record(
            action="consent.records_imported",
            target=batch,
            actor_label=actor_label,
            data={
                "study": study.slug,
                "institution": institution.slug,
                "created": batch.created,
                "unchanged": batch.unchanged,
                "granted": batch.granted,
                "withdrawn": batch.withdrawn,
            },
        )
    return batch


def consent_withdraw_by_steward(
    *, study: Study, institution: Institution, pseudonym: str, steward: User, reason: str = ""
) -> ConsentRecord:
    """A steward withdraws a patient's consent, by pseudonym, in their own hospital's registry."""
    if not is_steward_of(user=steward, institution=institution):
        raise NotAllowedError(
            f"you are not a data steward of {institution.name}; only its stewards can withdraw "
            "consent in its registry"
        )
    pseudonym = (pseudonym or "").strip().lower()
    if not PSEUDONYM_RE.fullmatch(pseudonym):
        raise ValidationError(
            "a pseudonym is 64 hexadecimal characters (HMAC-SHA256 of the patient id, as the "
            "hospital node computes it)",
            fields={"pseudonym": ["64 hexadecimal characters"]},
        )
    with transaction.atomic():
        _lock_registry(study, institution)
        latest = latest_records(study=study, institution=institution).filter(pseudonym=pseudonym)
        current = latest.first()
        if current is None:
            raise NotFoundError(
                f"no patient with pseudonym {pseudonym[:12]}… in {institution.name}'s consent "
                f"registry for study '{study.slug}'; check the pseudonym",
                fields={"pseudonym": ["not in this hospital's registry for the study"]},
            )
        if current.status == Status.WITHDRAWN:
            raise ConflictError(
                f"consent of {pseudonym[:12]}… is already withdrawn (since "
                f"{current.decided_at:%Y-%m-%d %H:%M} UTC)",
                fields={"pseudonym": ["already withdrawn"]},
            )
        batch = ConsentBatch.objects.create(
            study=study,
            institution=institution,
            source=Source.STEWARD,
            actor_label=steward.get_username(),
            created=1,
            withdrawn=1,
        )
        record = ConsentRecord.objects.create(
            study=study,
            institution=institution,
            pseudonym=pseudonym,
            status=Status.WITHDRAWN,
            decided_at=timezone.now(),
            form_version=None,
            source=Source.STEWARD,
            batch=batch,
        )
        audit_record(
            action="consent.withdrawn_by_steward",
            target=record,
            actor=steward,
            data={
                "study": study.slug,
                "institution": institution.slug,
                "pseudonym": pseudonym,
                "batch": batch.pk,
                "reason": reason.strip(),
            },
        )
    return record


@dataclass(frozen=True)
class Snapshot:
    """The consent snapshot a node filters its rows with; `sha256` is what its rounds report."""

    study: str
    institution: str
    required_form_version: int | None
    granted: list[str]
    sha256: str
    taken_at: datetime


def consent_snapshot(*, study: Study, institution: Institution, actor_label: str) -> Snapshot:
    """The pseudonyms of `institution` with current consent for `study`, hashed; each distinct
    hash served is kept (`ConsentSnapshot`) with its count and first/last time served."""
    with transaction.atomic():
        _lock_registry(study, institution)
        rules: ConsentRules = consent_rules(study=study)
        granted = granted_pseudonyms(study=study, institution=institution, rules=rules)
        sha256 = snapshot_sha256(
            study=study.slug,
            institution=institution.slug,
            required_form_version=rules.required_form_version,
            granted=granted,
        )
        now = timezone.now()
        served = ConsentSnapshot.objects.filter(
            study=study, institution=institution, sha256=sha256
        ).update(last_served_at=now, served_count=F("served_count") + 1)
        if not served:
            row = ConsentSnapshot.objects.create(
                study=study,
                institution=institution,
                sha256=sha256,
                required_form_version=rules.required_form_version,
                granted_count=len(granted),
                first_served_at=now,
                last_served_at=now,
            )
            audit_record(
                action="consent.snapshot_served",
                target=row,
                actor_label=actor_label,
                data={
                    "study": study.slug,
                    "institution": institution.slug,
                    "sha256": sha256,
                    "required_form_version": rules.required_form_version,
                    "granted": len(granted),
                },
            )
    return Snapshot(
        study=study.slug,
        institution=institution.slug,
        required_form_version=rules.required_form_version,
        granted=granted,
        sha256=sha256,
        taken_at=now,
    )


def _lock_registry(study: Study, institution: Institution) -> Enrollment:
    enrollment = (
        Enrollment.objects.select_for_update().filter(study=study, institution=institution).first()
    )
    if enrollment is None:
        raise NotFoundError(
            f"{institution.slug} is not enrolled in study '{study.slug}'; a researcher must "
            "invite the hospital first"
        )
    if enrollment.state not in REGISTRY_ENROLLMENT_STATES:
        raise NotAllowedError(
            f"{institution.slug} declined study '{study.slug}'; its consent registry is closed"
        )
    return enrollment


def _require_owner(study: Study, actor: User) -> None:
    if study.owner_id != actor.pk:
        raise NotAllowedError(f"only the owner of study '{study.slug}' may do this")


def _known_keys(study: Study, institution: Institution) -> set[RecordKey]:
    """Every record of the hospital's registry for the study, as comparable keys (one scan:
    a re-sent registry of 200k pseudonyms in `IN (...)` chunks cost ten times as long)."""
    rows = (
        ConsentRecord.objects.filter(study=study, institution=institution)
        .order_by()
        .values_list("pseudonym", "status", "decided_at", "form_version")
    )
    return set(rows.iterator(chunk_size=10_000))


def _insert_records(
    records: list[ValidRecord], *, study: Study, institution: Institution, batch: ConsentBatch
) -> None:
    """Append rows with one prepared INSERT (executemany) instead of `bulk_create`, whose model
    instances and per-row SQL made a 200k-record upload take a minute; Django's cursor keeps
    this portable across PostgreSQL and SQLite."""
    if not records:
        return
    quote = connection.ops.quote_name
    columns = [
        "study_id",
        "institution_id",
        "pseudonym",
        "status",
        "decided_at",
        "form_version",
        "source",
        "batch_id",
        "created_at",
    ]
    table = quote(ConsentRecord._meta.db_table)
    names = ", ".join(quote(column) for column in columns)
    values = ", ".join(["%s"] * len(columns))
    # Table and column names come from the model; every value is a query parameter.
    sql = f"INSERT INTO {table} ({names}) VALUES ({values})"  # noqa: S608
    adapt = connection.ops.adapt_datetimefield_value
    created_at = adapt(timezone.now())
    rows = [
        (
            study.pk,
            institution.pk,
            record.pseudonym,
            record.status,
            adapt(record.decided_at),
            record.form_version,
            Source.NODE_IMPORT if record.status == Status.GRANTED else Source.NODE_WITHDRAWAL,
            batch.pk,
            created_at,
        )
        for record in records
    ]
    with connection.cursor() as cursor:
        cursor.executemany(sql, rows)


def _validated_records(records: Any, *, rules: ConsentRules, study: Study) -> list[ValidRecord]:
    """Every record checked before anything is written; errors name `records[i].field`."""
    if not isinstance(records, list):
        raise ValidationError(
            "'records' must be a list of consent records",
            fields={"records": ["must be a list"]},
        )
    if len(records) > MAX_RECORDS:
        raise ValidationError(
            f"{len(records)} records in one request; at most {MAX_RECORDS} are accepted: "
            "send them in several requests",
            fields={"records": [f"at most {MAX_RECORDS} records"]},
        )
    errors: dict[str, list[str]] = {}
    invalid: set[int] = set()
    seen: dict[str, int] = {}
    valid: list[ValidRecord] = []
    now = timezone.now()

    def fail(index: int, field: str, problem: str) -> None:
        invalid.add(index)
        if len(errors) < MAX_FIELD_ERRORS:
            errors.setdefault(f"records[{index}]{field}", []).append(problem)

    for index, item in enumerate(records):
        if not isinstance(item, dict):
            fail(index, "", "must be an object with " + ", ".join(RECORD_FIELDS))
            continue
        for extra in sorted(set(item) - set(RECORD_FIELDS)):
            fail(index, f".{extra}", "unknown field; a record has " + ", ".join(RECORD_FIELDS))
        pseudonym = item.get("pseudonym")
        if not isinstance(pseudonym, str) or not PSEUDONYM_RE.fullmatch(pseudonym):
            fail(index, ".pseudonym", "must be 64 lowercase hexadecimal characters (HMAC-SHA256)")
            pseudonym = None
        elif pseudonym in seen:
            fail(
                index,
                ".pseudonym",
                f"duplicate of records[{seen[pseudonym]}]; send one record per pseudonym "
                "per request",
            )
        else:
            seen[pseudonym] = index
        status = item.get("status")
        if status not in Status.values:
            fail(index, ".status", "must be 'granted' or 'withdrawn'")
            status = None
        parsed = _decided_at(item.get("decided_at"), now=now)
        decided_at = parsed if isinstance(parsed, datetime) else None
        if isinstance(parsed, str):
            fail(index, ".decided_at", parsed)
        form_version = item.get("form_version")
        problem = _form_version_problem(form_version, status=status, rules=rules, study=study)
        if problem:
            fail(index, ".form_version", problem)
        if index in invalid or pseudonym is None or status is None or decided_at is None:
            continue
        valid.append(ValidRecord(pseudonym, status, decided_at, form_version))
    if invalid:
        shown = "" if len(errors) >= len(invalid) else f" (the first {len(errors)} are listed)"
        first = next(iter(errors.items()))
        raise ValidationError(
            f"{len(invalid)} of {len(records)} consent records are invalid{shown}; nothing was "
            f"recorded. First: {first[0]}: {first[1][0]}",
            fields=errors,
        )
    return valid


def _decided_at(value: Any, *, now: datetime) -> datetime | str:
    """The decision time in UTC, or what is wrong with it. A date means midnight UTC and a
    datetime without an offset is read as UTC."""
    if not isinstance(value, str) or not value or len(value) > 40:
        return "required: an ISO 8601 date (2026-03-01) or datetime (2026-03-01T09:30:00Z)"
    try:
        if _DATE_RE.fullmatch(value):
            parsed = datetime.combine(date.fromisoformat(value), time(), tzinfo=UTC)
        else:
            parsed = datetime.fromisoformat(value)
    except ValueError:
        return f"'{value}' is not an ISO 8601 date or datetime"
    parsed = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    if parsed > now + FUTURE_TOLERANCE:
        return f"{parsed.isoformat()} is in the future; a decision is dated when it was taken"
    return parsed


def _form_version_problem(
    value: Any, *, status: str | None, rules: ConsentRules, study: Study
) -> str | None:
    if value is None:
        return "required when status is 'granted'" if status == Status.GRANTED else None
    if isinstance(value, bool) or not isinstance(value, int):
        return "must be an integer form version or null"
    if value not in rules.versions:
        if not rules.versions:
            return (
                f"unknown form version {value}; study '{study.slug}' has no consent form yet "
                "(its researcher publishes one on the study's consent page)"
            )
        return f"unknown form version {value}; study has {', '.join(map(str, rules.versions))}"
    return None
