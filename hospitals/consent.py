"""Patient consent at the node: pseudonyms, the hospital's consent export, the study's snapshot.

Patient ids never leave the node. The node derives a pseudonym per patient as
HMAC-SHA256(key = the node's consent secret, msg = patient id) and uploads consent decisions under
pseudonyms only. Before every round it pulls the study's consent snapshot (the pseudonyms with
current consent), checks its hash, and uses only the rows whose pseudonym is in it; or, where the
node policy cites an ethics board's waiver of individual consent, all rows.

Messages about a consent export name line numbers and columns, never a cell's value: a misplaced
column could put a patient id in any cell.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import os
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Protocol

from hospitals.node import NodeConfigError, NodeSettings
from hospitals.portal_client import PortalClient, PortalError
from hospitals.protocol import canonical_json

SECRET_BYTES = 32
EXPORT_COLUMNS = ("patient_id", "status", "date", "form_version")
GRANTED = "granted"
WITHDRAWN = "withdrawn"
STATUSES = (GRANTED, WITHDRAWN)
MAX_PROBLEMS_SHOWN = 20
WAIVED_PREFIX = "waived: "
# The four keys the portal hashes, in the SPEC's words: exactly those, canonical JSON.
SNAPSHOT_HASHED_KEYS = ("study", "institution", "required_form_version", "granted")

_HEX64 = re.compile(r"[0-9a-f]{64}")
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_RECORD_FIELD = re.compile(r"records\[(\d+)\](?:\.(\w+))?")


class ConsentError(ValueError):
    """Consent could not be read, recorded or applied; the message says what to do."""


class MissingConsentSecretError(ConsentError):
    """The node's consent secret is missing or damaged: no pseudonym can be derived."""


class SnapshotError(ConsentError):
    """The portal's consent snapshot is malformed or does not match its own hash."""


class ConsentUnavailableError(ConsentError):
    """No consent basis for a round; the message is safe to publish (no paths, no data)."""


@dataclass(frozen=True)
class ExportProblem:
    line: int | None
    column: str | None
    problem: str

    def __str__(self) -> str:
        where = [f"line {self.line}"] if self.line is not None else []
        if self.column is not None:
            where.append(f"column '{self.column}'")
        return f"{', '.join(where)}: {self.problem}" if where else self.problem


class ConsentExportError(ConsentError):
    """A consent export failed validation; every problem found is listed, by line."""

    def __init__(self, path: Path, problems: Sequence[ExportProblem]) -> None:
        self.path = path
        self.problems = tuple(problems)
        shown = [f"  {problem}" for problem in self.problems[:MAX_PROBLEMS_SHOWN]]
        if len(self.problems) > MAX_PROBLEMS_SHOWN:
            shown.append(f"  … and {len(self.problems) - MAX_PROBLEMS_SHOWN} more")
        super().__init__(
            f"{path}: {len(self.problems)} problem(s), so no consent was recorded; fix the "
            "export and import it again (lines are counted from 1, the header is line 1):\n"
            + "\n".join(shown)
        )


# --- the node's consent secret ---------------------------------------------------------------


def create_or_load_secret(node: NodeSettings) -> tuple[bytes, bool]:
    """The node's consent secret, created (32 random bytes, mode 0600) if there is none yet.

    Returns (secret, created). Losing the file breaks every pseudonym the node ever uploaded.
    """
    path = node.consent_secret_path
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load_secret(node), False
    try:
        secret = os.urandom(SECRET_BYTES)
        os.write(descriptor, secret)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    return secret, True


def load_secret(node: NodeSettings) -> bytes:
    path = node.consent_secret_path
    try:
        secret = path.read_bytes()
    except FileNotFoundError:
        raise MissingConsentSecretError(
            f"the node's consent secret {path} is missing: no patient can be matched to a consent "
            "decision. Restore it from the node's backup; importing consent again creates a new "
            "secret, and every pseudonym uploaded before then stops matching (back it up)"
        ) from None
    except OSError as error:
        raise MissingConsentSecretError(
            f"the node's consent secret {path} could not be read: {error}"
        ) from error
    if len(secret) != SECRET_BYTES:
        raise MissingConsentSecretError(
            f"the node's consent secret {path} holds {len(secret)} bytes, not {SECRET_BYTES}: "
            "it is damaged; restore it from the node's backup"
        )
    return secret


def pseudonym(patient_id: str, secret: bytes) -> str:
    """HMAC-SHA256 of the patient id under the node's secret, as 64 lowercase hex characters.

    >>> pseudonym("P-1", bytes(32))[:16]
    'beb32a0c78d0da84'
    """
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"the consent secret must be {SECRET_BYTES} bytes, got {len(secret)}")
    return hmac.new(secret, patient_id.encode("utf-8"), hashlib.sha256).hexdigest()


# --- the hospital's consent export ------------------------------------------------------------


@dataclass(frozen=True)
class ConsentDecision:
    """One row of a consent export; `line` is where it starts in the file (header = line 1)."""

    patient_id: str = field(repr=False)
    status: str
    decided_at: date
    form_version: int | None
    line: int

    def record(self, secret: bytes) -> dict[str, Any]:
        """What the portal receives: the pseudonym, never the patient id."""
        return {
            "pseudonym": pseudonym(self.patient_id, secret),
            "status": self.status,
            "decided_at": self.decided_at.isoformat(),
            "form_version": self.form_version,
        }


def read_consent_export(
    path: Path, *, versions: Collection[int], today: date | None = None
) -> list[ConsentDecision]:
    """Every row of a consent export (`patient_id,status,date,form_version`), validated.

    `versions` are the study's consent form versions. Raises ConsentExportError listing every
    problem found; returns only when the whole file is valid.
    """
    today = today or _local_today()
    try:
        with path.open(newline="", encoding="utf-8-sig") as export:
            return _Export(path, versions=versions, today=today).read(csv.reader(export))
    except UnicodeDecodeError as error:
        raise ConsentExportError(
            path,
            [
                ExportProblem(
                    None,
                    None,
                    f"the file is not UTF-8 text ({error.reason} at byte {error.start}); "
                    "re-export it as UTF-8 CSV",
                )
            ],
        ) from None
    except FileNotFoundError:
        raise ConsentExportError(path, [ExportProblem(None, None, "file not found")]) from None


def _local_today() -> date:
    # The hospital's own calendar day: a consent signed this morning is not "in the future".
    return datetime.now(UTC).astimezone().date()


class _Export:
    def __init__(self, path: Path, *, versions: Collection[int], today: date) -> None:
        self.path = path
        self.versions = sorted(versions)
        self.today = today
        self.problems: list[ExportProblem] = []
        self.first_line: dict[str, int] = {}

    def read(self, reader: Any) -> list[ConsentDecision]:
        header = self._header(reader)
        decisions: list[ConsentDecision] = []
        last_line = 1
        try:
            for fields in reader:
                line, last_line = last_line + 1, reader.line_num
                if not any(value.strip() for value in fields):
                    continue  # blank lines are not patients
                if len(fields) != len(header):
                    self._problem(
                        line,
                        None,
                        f"has {len(fields)} field(s); the header has {len(header)} "
                        "(a comma inside a value needs quotes)",
                    )
                    continue
                decision = self._row(line, dict(zip(header, fields, strict=True)))
                if decision is not None:
                    decisions.append(decision)
        except csv.Error as error:
            self._problem(reader.line_num, None, f"not well-formed CSV ({error})")
        if not decisions and not self.problems:
            self._problem(
                None,
                None,
                "the file has a header but no rows; export one row per patient with a consent "
                "decision",
            )
        if self.problems:
            raise ConsentExportError(self.path, self.problems)
        return decisions

    def _header(self, reader: Any) -> list[str]:
        try:
            header = next(reader, None)
        except csv.Error as error:
            raise ConsentExportError(
                self.path, [ExportProblem(1, None, f"not well-formed CSV ({error})")]
            ) from None
        expected = ",".join(EXPORT_COLUMNS)
        if header is None or not any(name.strip() for name in header):
            raise ConsentExportError(
                self.path,
                [ExportProblem(None, None, f"the file is empty; it needs the header {expected}")],
            )
        names = [name.strip() for name in header]
        problems = []
        missing = [name for name in EXPORT_COLUMNS if name not in names]
        if missing:
            problems.append(f"missing column(s) {', '.join(missing)}")
        unknown = [name for name in names if name not in EXPORT_COLUMNS]
        if unknown:
            problems.append(f"unknown column(s) {', '.join(repr(name) for name in unknown)}")
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            problems.append(f"repeated column(s) {', '.join(repeated)}")
        if problems:
            raise ConsentExportError(
                self.path,
                [
                    ExportProblem(
                        1, None, f"{'; '.join(problems)}: the header must be exactly {expected}"
                    )
                ],
            )
        return names

    def _problem(self, line: int | None, column: str | None, problem: str) -> None:
        self.problems.append(ExportProblem(line, column, problem))

    def _row(self, line: int, row: dict[str, str]) -> ConsentDecision | None:
        before = len(self.problems)
        patient_id = self._patient_id(line, row["patient_id"].strip())
        status = row["status"].strip().lower()
        if status not in STATUSES:
            self._problem(line, "status", "must be 'granted' or 'withdrawn'")
        decided_at = self._date(line, row["date"].strip())
        form_version = self._form_version(line, row["form_version"].strip(), status=status)
        if len(self.problems) > before or decided_at is None:
            return None
        return ConsentDecision(
            patient_id=patient_id,
            status=status,
            decided_at=decided_at,
            form_version=form_version,
            line=line,
        )

    def _patient_id(self, line: int, patient_id: str) -> str:
        if not patient_id:
            self._problem(line, "patient_id", "is empty; every row needs the patient's id")
        elif patient_id in self.first_line:
            self._problem(
                line,
                "patient_id",
                f"the same patient as line {self.first_line[patient_id]}; each patient appears "
                "once, with their latest decision",
            )
        else:
            self.first_line[patient_id] = line
        return patient_id

    def _date(self, line: int, text: str) -> date | None:
        try:
            if not _ISO_DATE.fullmatch(text):
                raise ValueError(text)
            decided_at = date.fromisoformat(text)
        except ValueError:
            self._problem(line, "date", "must be a date written YYYY-MM-DD")
            return None
        if decided_at > self.today:
            self._problem(line, "date", f"is in the future (today is {self.today.isoformat()})")
        return decided_at

    def _form_version(self, line: int, text: str, *, status: str) -> int | None:
        if not text:
            if status == GRANTED:
                self._problem(
                    line, "form_version", "is empty; a granted consent names the form signed"
                )
            return None
        if not text.isascii() or not text.isdigit() or int(text) < 1:
            self._problem(line, "form_version", "must be a positive whole number")
            return None
        version = int(text)
        if version not in self.versions:
            known = ", ".join(str(v) for v in self.versions) or "none yet"
            self._problem(
                line, "form_version", f"unknown form version {version}; the study has {known}"
            )
        return version


class ConsentPortal(Protocol):
    """The portal calls consent needs (PortalClient has them)."""

    def consent_forms(self, *, study_slug: str) -> dict[str, Any]: ...

    def record_consent(
        self, *, study_slug: str, records: list[dict[str, Any]]
    ) -> dict[str, Any]: ...

    def consent_snapshot(self, *, study_slug: str) -> dict[str, Any]: ...


@dataclass(frozen=True)
class ConsentForms:
    versions: tuple[int, ...]
    current_version: int | None
    requires_current: bool

    @classmethod
    def from_portal(cls, document: Any, *, study: str) -> ConsentForms:
        versions = document.get("versions") if isinstance(document, dict) else None
        current = document.get("current_version") if isinstance(document, dict) else None
        if (
            not isinstance(versions, list)
            or not all(_is_positive_int(v) for v in versions)
            or not (current is None or _is_positive_int(current))
        ):
            raise ConsentError(
                f"the portal's consent forms of study '{study}' are malformed: expected "
                '{"versions": [1, 2, …], "current_version": <int> | null, …}'
            )
        return cls(
            versions=tuple(versions),
            current_version=current,
            requires_current=document.get("requires_current") is True,
        )


@dataclass(frozen=True)
class ImportResult:
    rows: int
    granted: int
    withdrawn: int
    # Granted on an older form while the study requires the current one: recorded, not counted.
    outdated: int
    created: int
    unchanged: int
    secret_created: bool


def import_consent_export(
    node: NodeSettings,
    *,
    study: str,
    path: Path,
    portal: ConsentPortal,
    today: date | None = None,
) -> ImportResult:
    """Validate the whole export, then upload its decisions under pseudonyms in one batch."""
    forms = ConsentForms.from_portal(portal.consent_forms(study_slug=study), study=study)
    decisions = read_consent_export(path, versions=forms.versions, today=today)
    secret, secret_created = create_or_load_secret(node)
    try:
        answer = portal.record_consent(
            study_slug=study, records=[decision.record(secret) for decision in decisions]
        )
    except PortalError as error:
        raise _by_line(error, path=path, decisions=decisions) from error
    granted = [d for d in decisions if d.status == GRANTED]
    return ImportResult(
        rows=len(decisions),
        granted=len(granted),
        withdrawn=len(decisions) - len(granted),
        outdated=sum(
            forms.requires_current and d.form_version != forms.current_version for d in granted
        ),
        created=int(answer.get("created", 0)),
        unchanged=int(answer.get("unchanged", 0)),
        secret_created=secret_created,
    )


def _by_line(
    error: PortalError, *, path: Path, decisions: Sequence[ConsentDecision]
) -> ConsentError | PortalError:
    """The portal's per-record problems (`records[12].form_version`) as lines of the export."""
    problems = []
    for key, messages in error.fields.items():
        match = _RECORD_FIELD.fullmatch(str(key))
        if match is None or int(match.group(1)) >= len(decisions):
            return error
        text = "; ".join(map(str, messages)) if isinstance(messages, list) else str(messages)
        column = {"decided_at": "date", "pseudonym": "patient_id"}.get(
            match.group(2) or "", match.group(2)
        )
        problems.append(
            ExportProblem(decisions[int(match.group(1))].line, column, f"portal: {text}")
        )
    if not problems:
        return error
    return ConsentExportError(path, sorted(problems, key=lambda p: p.line or 0))


@dataclass(frozen=True)
class WithdrawResult:
    pseudonym: str
    created: int
    unchanged: int


def withdraw_consent(
    node: NodeSettings,
    *,
    study: str,
    patient_id: str,
    portal: ConsentPortal,
    at: datetime | None = None,
) -> WithdrawResult:
    """Record that the patient withdrew consent now; it takes effect from the next round."""
    patient_id = patient_id.strip()
    if not patient_id:
        raise ConsentError("the patient id is empty")
    secret = load_secret(node)
    patient = pseudonym(patient_id, secret)
    when = (at or datetime.now(UTC)).astimezone(UTC)
    answer = portal.record_consent(
        study_slug=study,
        records=[
            {
                "pseudonym": patient,
                "status": WITHDRAWN,
                "decided_at": when.isoformat(),
                "form_version": None,
            }
        ],
    )
    return WithdrawResult(
        pseudonym=patient,
        created=int(answer.get("created", 0)),
        unchanged=int(answer.get("unchanged", 0)),
    )


# --- the study's consent snapshot -------------------------------------------------------------


def snapshot_sha256(
    *, study: str, institution: str, required_form_version: int | None, granted: Sequence[str]
) -> str:
    """sha256 of canonical JSON of exactly the four hashed keys, as the portal computes it."""
    document = {
        "study": study,
        "institution": institution,
        "required_form_version": required_form_version,
        "granted": list(granted),
    }
    return hashlib.sha256(canonical_json(document).encode()).hexdigest()


@dataclass(frozen=True)
class ConsentSnapshot:
    """The pseudonyms with current consent to a study at this node's institution."""

    study: str
    institution: str
    required_form_version: int | None
    granted: frozenset[str] = field(repr=False)
    sha256: str
    taken_at: str | None = None

    @classmethod
    def of(
        cls,
        *,
        study: str,
        institution: str,
        granted: Collection[str],
        required_form_version: int | None = None,
    ) -> ConsentSnapshot:
        """A snapshot with its hash computed here (what the portal would send)."""
        return cls.from_portal(
            {
                "study": study,
                "institution": institution,
                "required_form_version": required_form_version,
                "granted": sorted(granted),
                "sha256": snapshot_sha256(
                    study=study,
                    institution=institution,
                    required_form_version=required_form_version,
                    granted=sorted(granted),
                ),
            },
            study=study,
        )

    @classmethod
    def from_portal(cls, document: Any, *, study: str) -> ConsentSnapshot:
        """Parse the portal's answer for `study`; refuse any malformed field or hash mismatch."""

        def refuse(problem: str) -> SnapshotError:
            return SnapshotError(f"the consent snapshot of study '{study}' {problem}")

        if not isinstance(document, dict):
            raise refuse("is not a JSON object")
        missing = [key for key in (*SNAPSHOT_HASHED_KEYS, "sha256") if key not in document]
        if missing:
            raise refuse(f"lacks {', '.join(missing)}")
        if document["study"] != study:
            raise refuse(f"names another study ({document['study']!r})")
        institution = document["institution"]
        if not isinstance(institution, str) or not institution:
            raise refuse("has no institution")
        required = document["required_form_version"]
        if not (required is None or _is_positive_int(required)):
            raise refuse("has a required_form_version that is neither null nor a positive integer")
        granted = document["granted"]
        if not isinstance(granted, list):
            raise refuse("has 'granted' that is not a list")
        for index, item in enumerate(granted):
            if not isinstance(item, str) or not _HEX64.fullmatch(item):
                raise refuse(f"has granted[{index}] that is not a 64-character hex pseudonym")
            if index and item <= granted[index - 1]:
                raise refuse(f"has granted[{index}] out of order or repeated; it must be sorted")
        claimed = document["sha256"]
        if not isinstance(claimed, str) or not _HEX64.fullmatch(claimed):
            raise refuse("has no valid sha256")
        actual = snapshot_sha256(
            study=study, institution=institution, required_form_version=required, granted=granted
        )
        if not hmac.compare_digest(actual, claimed):
            raise refuse(
                f"does not match its sha256 (claimed {claimed[:12]}…, content hashes to "
                f"{actual[:12]}…); refusing it"
            )
        taken_at = document.get("taken_at")
        return cls(
            study=study,
            institution=institution,
            required_form_version=required,
            granted=frozenset(granted),
            sha256=actual,
            taken_at=taken_at if isinstance(taken_at, str) else None,
        )


class ConsentSource(Protocol):
    """Where a round's consent snapshot comes from: the portal, or a fixed one in tests."""

    def snapshot(self, study_id: str) -> ConsentSnapshot: ...


class PortalConsentSource:
    """Pulls the study's snapshot from the portal on every call: withdrawals apply next round."""

    def __init__(self, portal: ConsentPortal) -> None:
        self.portal = portal

    @classmethod
    def for_node(cls, node: NodeSettings) -> PortalConsentSource:
        return cls(PortalClient.for_node(node))

    def snapshot(self, study_id: str) -> ConsentSnapshot:
        return ConsentSnapshot.from_portal(
            self.portal.consent_snapshot(study_slug=study_id), study=study_id
        )


class FixedConsentSource:
    """Always the same snapshot."""

    def __init__(self, snapshot: ConsentSnapshot) -> None:
        self.fixed = snapshot

    def snapshot(self, study_id: str) -> ConsentSnapshot:
        if study_id != self.fixed.study:
            raise SnapshotError(f"no consent snapshot for study '{study_id}'")
        return self.fixed


@dataclass(frozen=True)
class ConsentBasis:
    """Why a round may use rows: the study's consent snapshot, or the ethics board's waiver."""

    snapshot: ConsentSnapshot | None
    waiver: str | None
    secret: bytes | None = field(default=None, repr=False)

    @classmethod
    def waived(cls, waiver: str) -> ConsentBasis:
        return cls(snapshot=None, waiver=waiver)

    @classmethod
    def consented(cls, snapshot: ConsentSnapshot, *, secret: bytes) -> ConsentBasis:
        return cls(snapshot=snapshot, waiver=None, secret=secret)

    @property
    def label(self) -> str:
        """What the node publishes with each round: the snapshot's hash or the waiver."""
        if self.snapshot is not None:
            return self.snapshot.sha256
        return f"{WAIVED_PREFIX}{self.waiver}"

    @property
    def row_filter(self) -> Callable[[str], bool] | None:
        """Which patient ids may be used; None when the waiver covers every row."""
        snapshot, secret = self.snapshot, self.secret
        if snapshot is None or secret is None:
            return None
        return lambda patient_id: pseudonym(patient_id, secret) in snapshot.granted


def resolve_consent(
    node: NodeSettings, *, study_id: str, waiver: str, source: ConsentSource | None = None
) -> ConsentBasis:
    """The consent basis of a round for `study_id`, failing closed.

    A non-empty `waiver` (the node policy's consent_waiver) covers every row. Otherwise the node
    needs its consent secret and the study's snapshot, from `source` or else from the portal
    named in its node config. Any failure raises ConsentUnavailableError with a publishable
    reason; the chained error has the details for the node log.
    """
    if waiver:
        return ConsentBasis.waived(waiver)
    try:
        secret = load_secret(node)
    except MissingConsentSecretError as error:
        raise ConsentUnavailableError(
            "the node's consent secret is missing or damaged, so no row can be matched to a "
            "consent (restore it from the node's backup)"
        ) from error
    if source is None:
        if not node.portal_url:
            raise ConsentUnavailableError(
                "no consent snapshot: the node config has no portal-url to pull it from, and the "
                "node policy cites no consent_waiver"
            )
        try:
            node.portal_token()
        except NodeConfigError as error:
            raise ConsentUnavailableError(
                "no consent snapshot: the node has no portal token"
            ) from error
        source = PortalConsentSource.for_node(node)
    try:
        snapshot = source.snapshot(study_id)
    except PortalError as error:
        raise ConsentUnavailableError(
            f"the consent snapshot could not be pulled from the portal: {error}"
        ) from error
    except SnapshotError as error:
        raise ConsentUnavailableError(str(error)) from error
    return ConsentBasis.consented(snapshot, secret=secret)


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
