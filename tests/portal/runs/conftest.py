"""Runs of ready studies, run tokens and the aggregator's events, built for the tests."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from functools import cache
from typing import Any

import pytest

from core.tokens import issue_token
from crypto import CkksParams, SecretContext
from hospitals.protocol import canonical_json
from runs.authentication import RUN_TOKEN_KIND
from runs.models import Run
from studies.models import Enrollment, Study
from tests.portal.factories import (
    EnrollmentFactory,
    InstitutionFactory,
    StewardFactory,
    StudyFactory,
    draft_protocol,
    privacy_ready,
)

HOSPITALS = ("hospital-a", "hospital-b")
_SLUGS = itertools.count(1)


@cache
def study_key() -> SecretContext:
    return SecretContext.generate(params=CkksParams())


def ready_study(
    *, rounds: int = 2, he_context: bool = True, privacy: bool = True, **fields: Any
) -> Study:
    """A ready study whose two hospitals (hospital-a, hospital-b) approved its current protocol and,
    unless `privacy` is false, passed the privacy preflight (readiness reports, ledger mirrors)."""
    slug = fields.pop("slug", None) or f"run-study-{next(_SLUGS)}"
    protocol = json.loads(
        canonical_json(
            draft_protocol(
                slug=slug,
                federation={"rounds": rounds, "min_hospitals": 2, "round_timeout_s": 60},
            )
        )
    )
    key = study_key()
    study = StudyFactory(
        slug=slug,
        protocol=protocol,
        state=Study.State.READY,
        he_aggregator_context=key.aggregator_context().to_bytes() if he_context else None,
        he_context_fingerprint=key.fingerprint if he_context else "",
        **fields,
    )
    for name in HOSPITALS:
        institution = InstitutionFactory(slug=name, name=name.replace("-", " ").title())
        EnrollmentFactory(study=study, institution=institution, state=Enrollment.State.APPROVED)
    if privacy:
        privacy_ready(study)
    return study


def steward_of(slug: str) -> Any:
    return StewardFactory(institution=InstitutionFactory(slug=slug))


def make_run(
    study: Study, *, state: Run.State = Run.State.RUNNING, **fields: Any
) -> tuple[Run, str]:
    """A run of `study` (moved to running) and the raw token of its aggregator."""
    token = issue_token(RUN_TOKEN_KIND)
    if study.state == Study.State.READY:
        study.state = Study.State.RUNNING
        study.save(update_fields=["state"])
    run = Run.objects.create(
        study=study,
        started_by=study.owner,
        state=state,
        protocol_sha256=study.protocol_sha256,
        rounds_planned=study.protocol["federation"]["rounds"],
        **{"token_prefix": token.prefix, "token_digest": token.digest, **fields},
    )
    return run, token.raw


def hospital_report(name: str, *, epsilon: float = 1.25, **fields: Any) -> dict[str, Any]:
    return {
        "hospital": name,
        "epsilon": epsilon,
        "noise_multiplier": 1.1,
        "sample_rate": 0.05,
        "steps": 20,
        "delta": 1e-5,
        "accountant": "rdp",
        "epsilon_conversion": "rdp-balle2020",
        "consent": "0" * 64,
        "rows_rounded": 150,
        "bytes_up": 2_100_000,
        "train_seconds": 1.5,
        "metrics": {"roc_auc": 0.9, "accuracy": 0.85, "loss": 0.4},
        **fields,
    }


def round_event(
    number: int, *, hospitals: tuple[str, ...] = HOSPITALS, **fields: Any
) -> dict[str, Any]:
    return {
        "event": "round",
        "at": datetime.now(UTC).isoformat(),
        "round": number,
        "participants": list(hospitals),
        "dropped": {"hospital-c": "no reply within 60 s"},
        "metrics": {"roc_auc": 0.8 + number / 100, "accuracy": 0.8, "loss": 0.5 - number / 100},
        "hospitals": [hospital_report(h, epsilon=1.0 * number) for h in hospitals],
        "bytes_down": 1_000_000,
        "seconds": 12.5,
        **fields,
    }


def started_event(**fields: Any) -> dict[str, Any]:
    key = study_key()
    return {
        "event": "run-started",
        "at": datetime.now(UTC).isoformat(),
        "study_id": "s",
        "run_id": "4242",
        "rounds": 2,
        "min_hospitals": 2,
        "aggregator": {
            "he_context_fingerprint": key.fingerprint,
            "he_context_bytes": 120,
            "has_secret_key": False,
        },
        **fields,
    }


def finished_event(status: str = "completed", reason: str = "") -> dict[str, Any]:
    return {
        "event": "run-finished",
        "at": datetime.now(UTC).isoformat(),
        "status": status,
        "reason": reason,
    }


@pytest.fixture
def study() -> Study:
    return ready_study()
