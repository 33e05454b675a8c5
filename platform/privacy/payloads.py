"""Strict parsing of what hospital nodes report about privacy: their ledgers and their readiness.

Every problem is reported at once under a dotted path (`datasets[0].entries[3].sample_rate`).
Privacy steps and budget settings are checked by the node's own types, `hospitals.dp.PrivacyStep`
and `hospitals.policy.NodePolicy`, so the portal accepts exactly what a node could have recorded.
Unknown keys are refused: in particular a node cannot send an ε, the portal computes it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from core.errors import ValidationError
from hospitals.dp import Accountant, PrivacyStep
from hospitals.policy import NodePolicy, PolicyError
from hospitals.protocol import canonical_json

MAX_DATASETS = 64
MAX_ENTRIES_PER_DATASET = 20_000
MAX_DATASET_ID_LENGTH = 200
MAX_STUDY_ID_LENGTH = 64
MAX_RUN_ID_LENGTH = 100
MAX_BLOCKERS = 50
MAX_TEXT_LENGTH = 2000
# A payload with thousands of bad entries gets the first errors, not a megabyte of them.
MAX_REPORTED_ERRORS = 50
# A key the body lacks: reported once, as required, not again as a wrong value.
_MISSING: Any = object()
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_BLOCKER_CODE = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")

_DATASET_KEYS = (
    "dataset_id",
    "max_lifetime_epsilon",
    "delta",
    "accountant",
    "min_cohort_size",
    "entries",
)
_ENTRY_KEYS = (
    "study_id",
    "run_id",
    "round",
    "sample_rate",
    "noise_multiplier",
    "steps",
    "delta",
    "accountant",
    "recorded_at",
)
# The budget settings a mirror keeps are the node policy's; each is checked by NodePolicy alone.
_POLICY_KEYS = ("max_lifetime_epsilon", "delta", "accountant", "min_cohort_size")
_STEP_NUMBERS = ("sample_rate", "noise_multiplier", "steps", "delta")
# A valid step, so that a PrivacyStep built with one reported field swapped in fails only for it.
_VALID_STEP: dict[str, Any] = {
    "sample_rate": 0.5,
    "noise_multiplier": 1.0,
    "steps": 1,
    "delta": 1e-5,
    "accountant": Accountant.RDP,
}


@dataclass(frozen=True)
class EntryReport:
    study_id: str
    run_id: str
    round_number: int
    step: PrivacyStep
    recorded_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "study_id": self.study_id,
            "run_id": self.run_id,
            "round": self.round_number,
            "sample_rate": self.step.sample_rate,
            "noise_multiplier": self.step.noise_multiplier,
            "steps": self.step.steps,
            "delta": self.step.delta,
            "accountant": self.step.accountant.value,
            "recorded_at": self.recorded_at.isoformat(),
        }


@dataclass(frozen=True)
class DatasetReport:
    dataset_id: str
    max_lifetime_epsilon: float
    delta: float
    accountant: Accountant
    min_cohort_size: int
    entries: tuple[EntryReport, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset_id": self.dataset_id,
            "max_lifetime_epsilon": self.max_lifetime_epsilon,
            "delta": self.delta,
            "accountant": self.accountant.value,
            "min_cohort_size": self.min_cohort_size,
            "entries": [entry.to_dict() for entry in self.entries],
        }

    @property
    def sha256(self) -> str:
        return hashlib.sha256(canonical_json(self.to_dict()).encode()).hexdigest()


@dataclass(frozen=True)
class Blocker:
    code: str
    reason: str


@dataclass(frozen=True)
class ReadinessData:
    dataset_id: str
    protocol_sha256: str
    consent_sha256: str | None
    consent_waiver: str | None
    rows_train: int
    rows_holdout: int
    blockers: tuple[Blocker, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset_id": self.dataset_id,
            "protocol_sha256": self.protocol_sha256,
            "consent_sha256": self.consent_sha256,
            "consent_waiver": self.consent_waiver,
            "rows_train": self.rows_train,
            "rows_holdout": self.rows_holdout,
            "blockers": [{"code": b.code, "reason": b.reason} for b in self.blockers],
        }

    @property
    def sha256(self) -> str:
        return hashlib.sha256(canonical_json(self.to_dict()).encode()).hexdigest()


class _Errors:
    """Field errors keyed by dotted path, in the shared error shape's `fields`."""

    def __init__(self) -> None:
        self.fields: dict[str, list[str]] = {}
        self.dropped = 0

    def add(self, path: str, message: str) -> None:
        if path not in self.fields and len(self.fields) >= MAX_REPORTED_ERRORS:
            self.dropped += 1
            return
        self.fields.setdefault(path, []).append(message)

    def error(self, what: str) -> ValidationError:
        count = sum(len(messages) for messages in self.fields.values()) + self.dropped
        more = f" (the first {len(self.fields)} fields are listed)" if self.dropped else ""
        return ValidationError(
            f"{what} is invalid: {count} problem{'s' if count != 1 else ''}{more}; "
            "nothing was recorded",
            fields=self.fields,
        )


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _object(
    errors: _Errors,
    path: str,
    value: Any,
    *,
    required: tuple[str, ...],
    optional: tuple[str, ...] = (),
) -> Mapping[str, Any] | None:
    if not isinstance(value, Mapping):
        errors.add(path or "body", "must be a JSON object")
        return None
    for key in sorted(set(value) - set(required) - set(optional), key=str):
        errors.add(_join(path, str(key)), "unexpected field")
    for key in required:
        if key not in value:
            errors.add(_join(path, key), "this field is required")
    return value


def _text(errors: _Errors, path: str, value: Any, *, max_length: int) -> str | None:
    if value is _MISSING:
        return None
    if not isinstance(value, str) or not value.strip():
        errors.add(path, f"must be a non-empty string, got {value!r:.80}")
        return None
    if len(value) > max_length:
        errors.add(path, f"at most {max_length} characters, got {len(value)}")
        return None
    return value


def _count(errors: _Errors, path: str, value: Any) -> int | None:
    if value is _MISSING:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        errors.add(path, f"must be a non-negative integer, got {value!r:.80}")
        return None
    return int(value)


def _sha256(errors: _Errors, path: str, value: Any) -> str | None:
    if value is _MISSING:
        return None
    if not isinstance(value, str) or not _SHA256.match(value):
        errors.add(path, "must be 64 lowercase hexadecimal characters (a sha256)")
        return None
    return value


def _timestamp(errors: _Errors, path: str, value: Any) -> datetime | None:
    if value is _MISSING:
        return None
    try:
        moment = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        errors.add(path, f"must be an ISO 8601 date and time with a UTC offset, got {value!r:.80}")
        return None
    return moment


def _list(errors: _Errors, path: str, value: Any, *, max_length: int) -> list[Any] | None:
    if not isinstance(value, list):
        errors.add(path, "must be a JSON list")
        return None
    if len(value) > max_length:
        errors.add(path, f"at most {max_length} items, got {len(value)}")
        return None
    return value


def _accountant(errors: _Errors, path: str, value: Any) -> Accountant | None:
    if value is _MISSING:
        return None
    known = [accountant.value for accountant in Accountant]
    if value not in known:
        errors.add(path, f"must be one of {', '.join(known)}, got {value!r:.80}")
        return None
    return Accountant(value)


def _policy_field(errors: _Errors, path: str, key: str, value: Any) -> Any:
    try:
        policy = NodePolicy(**{key: value})
    except PolicyError as error:
        # "node policy: 'delta' must be ..." -> "must be ..."
        errors.add(_join(path, key), str(error).split(f"'{key}' ", 1)[-1])
        return None
    return getattr(policy, key)


def _step(errors: _Errors, path: str, entry: Mapping[str, Any]) -> PrivacyStep | None:
    accountant = _accountant(errors, _join(path, "accountant"), entry.get("accountant", _MISSING))
    valid = accountant is not None
    for key in _STEP_NUMBERS:
        if key not in entry:
            valid = False
            continue
        try:
            PrivacyStep(**{**_VALID_STEP, key: entry[key]})
        except ValueError as error:
            errors.add(_join(path, key), str(error))
            valid = False
    if not valid:
        return None
    return PrivacyStep(
        sample_rate=float(entry["sample_rate"]),
        noise_multiplier=float(entry["noise_multiplier"]),
        steps=int(entry["steps"]),
        delta=float(entry["delta"]),
        accountant=Accountant(entry["accountant"]),
    )


def _entry(errors: _Errors, path: str, value: Any) -> EntryReport | None:
    entry = _object(errors, path, value, required=_ENTRY_KEYS)
    if entry is None:
        return None
    study_id = _text(
        errors,
        _join(path, "study_id"),
        entry.get("study_id", _MISSING),
        max_length=MAX_STUDY_ID_LENGTH,
    )
    run_id = _text(
        errors, _join(path, "run_id"), entry.get("run_id", _MISSING), max_length=MAX_RUN_ID_LENGTH
    )
    round_number = _count(errors, _join(path, "round"), entry.get("round", _MISSING))
    step = _step(errors, path, entry)
    recorded_at = _timestamp(errors, _join(path, "recorded_at"), entry.get("recorded_at", _MISSING))
    if study_id is None or run_id is None or round_number is None:
        return None
    if step is None or recorded_at is None:
        return None
    return EntryReport(
        study_id=study_id,
        run_id=run_id,
        round_number=round_number,
        step=step,
        recorded_at=recorded_at,
    )


def _dataset(errors: _Errors, path: str, value: Any) -> DatasetReport | None:
    dataset = _object(errors, path, value, required=_DATASET_KEYS)
    if dataset is None:
        return None
    dataset_id = _text(
        errors,
        _join(path, "dataset_id"),
        dataset.get("dataset_id", _MISSING),
        max_length=MAX_DATASET_ID_LENGTH,
    )
    settings = {
        key: _policy_field(errors, path, key, dataset[key])
        for key in _POLICY_KEYS
        if key in dataset
    }
    raw_entries = (
        _list(
            errors,
            _join(path, "entries"),
            dataset["entries"],
            max_length=MAX_ENTRIES_PER_DATASET,
        )
        if "entries" in dataset
        else None
    )
    entries = [
        _entry(errors, f"{path}.entries[{index}]", item)
        for index, item in enumerate(raw_entries or [])
    ]
    if dataset_id is None or raw_entries is None:
        return None
    if len(settings) != len(_POLICY_KEYS) or any(v is None for v in settings.values()):
        return None
    checked = [entry for entry in entries if entry is not None]
    if len(checked) != len(entries):
        return None
    return DatasetReport(
        dataset_id=dataset_id,
        max_lifetime_epsilon=float(settings["max_lifetime_epsilon"]),
        delta=float(settings["delta"]),
        accountant=Accountant(settings["accountant"]),
        min_cohort_size=int(settings["min_cohort_size"]),
        entries=tuple(checked),
    )


def parse_ledger_report(data: Any) -> list[DatasetReport]:
    """The datasets of `POST /api/node/ledger/`; raises ValidationError naming every bad field."""
    errors = _Errors()
    body = _object(errors, "", data, required=("datasets",))
    raw = (
        _list(errors, "datasets", body["datasets"], max_length=MAX_DATASETS)
        if body is not None and "datasets" in body
        else None
    )
    datasets = [_dataset(errors, f"datasets[{i}]", item) for i, item in enumerate(raw or [])]
    seen: dict[str, int] = {}
    for index, dataset in enumerate(datasets):
        if dataset is None:
            continue
        if dataset.dataset_id in seen:
            errors.add(
                f"datasets[{index}].dataset_id",
                f"dataset '{dataset.dataset_id}' is already listed at datasets"
                f"[{seen[dataset.dataset_id]}]",
            )
        seen.setdefault(dataset.dataset_id, index)
    if errors.fields:
        raise errors.error("the ledger report")
    return [dataset for dataset in datasets if dataset is not None]


def _blocker(errors: _Errors, path: str, value: Any) -> Blocker | None:
    blocker = _object(errors, path, value, required=("code", "reason"))
    if blocker is None:
        return None
    code = blocker.get("code", _MISSING)
    if code is _MISSING:
        code = None
    elif not isinstance(code, str) or not _BLOCKER_CODE.match(code):
        errors.add(
            _join(path, "code"),
            f"must be a short code of lowercase letters, digits and '-', got {code!r:.80}",
        )
        code = None
    reason = _text(
        errors, _join(path, "reason"), blocker.get("reason", _MISSING), max_length=MAX_TEXT_LENGTH
    )
    if code is None or reason is None:
        return None
    return Blocker(code=code, reason=reason)


def parse_readiness_report(data: Any) -> ReadinessData:
    """The body of `POST /api/node/studies/<slug>/readiness/`; raises ValidationError naming every
    bad field."""
    errors = _Errors()
    body = _object(
        errors,
        "",
        data,
        required=("dataset_id", "protocol_sha256", "rows_train", "rows_holdout"),
        optional=("consent_sha256", "consent_waiver", "blockers"),
    )
    if body is None:
        raise errors.error("the readiness report")
    dataset_id = _text(
        errors, "dataset_id", body.get("dataset_id", _MISSING), max_length=MAX_DATASET_ID_LENGTH
    )
    protocol_sha256 = _sha256(errors, "protocol_sha256", body.get("protocol_sha256", _MISSING))
    consent_sha256 = body.get("consent_sha256")
    if consent_sha256 is not None:
        consent_sha256 = _sha256(errors, "consent_sha256", consent_sha256)
    consent_waiver = body.get("consent_waiver")
    if consent_waiver is not None:
        consent_waiver = _text(errors, "consent_waiver", consent_waiver, max_length=MAX_TEXT_LENGTH)
    if body.get("consent_sha256") is not None and body.get("consent_waiver") is not None:
        errors.add("consent_waiver", "send consent_sha256 or consent_waiver, not both")
    rows_train = _count(errors, "rows_train", body.get("rows_train", _MISSING))
    rows_holdout = _count(errors, "rows_holdout", body.get("rows_holdout", _MISSING))
    raw_blockers = _list(errors, "blockers", body.get("blockers", []), max_length=MAX_BLOCKERS)
    blockers = [
        _blocker(errors, f"blockers[{index}]", item)
        for index, item in enumerate(raw_blockers or [])
    ]
    # Each None above is a reported error.
    if (
        errors.fields
        or dataset_id is None
        or protocol_sha256 is None
        or rows_train is None
        or rows_holdout is None
    ):
        raise errors.error("the readiness report")
    return ReadinessData(
        dataset_id=dataset_id,
        protocol_sha256=protocol_sha256,
        consent_sha256=consent_sha256,
        consent_waiver=consent_waiver,
        rows_train=rows_train,
        rows_holdout=rows_holdout,
        blockers=tuple(blocker for blocker in blockers if blocker is not None),
    )
