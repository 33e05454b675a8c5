"""factory_boy factories for the portal's people, hospitals and studies.

`StudyFactory` builds a valid draft protocol (the demo's breast-cancer study, without encryption)
through `study_create`'s rules: canonical JSON, study_id equal to the slug, approval hash.
"""

from __future__ import annotations

import copy
import hashlib
import json
from functools import cache
from typing import Any

import factory
from django.contrib.auth.models import Group, User
from django.utils import timezone

from consent.models import ConsentBatch, ConsentForm, ConsentRecord, Source
from hospitals.dp import Accountant, PrivacyStep
from hospitals.protocol import StudyProtocol, canonical_json
from institutions.models import Institution, Membership
from institutions.selectors import RESEARCHERS_GROUP
from privacy.models import LedgerMirror, ReadinessReport
from privacy.payloads import DatasetReport, EntryReport
from privacy.services import ledger_report_ingest
from studies.models import Enrollment, Study
from studies.selectors import approved_institutions

PASSWORD = "correct-horse-battery-staple"  # noqa: S105 - test accounts only


@cache
def _schema() -> dict[str, Any]:
    from hospitals.demo_data import BREAST_CANCER_SCHEMA

    return BREAST_CANCER_SCHEMA.to_dict()


def draft_protocol(
    *, slug: str = "breast-cancer-demo", min_hospitals: int = 2, **sections: Any
) -> dict[str, Any]:
    """The demo protocol (demo.setup.demo_protocol) without its encryption block."""
    document: dict[str, Any] = {
        "study_id": slug,
        "schema": copy.deepcopy(_schema()),
        "model": {"name": "logistic_regression", "hyperparameters": {}},
        "training": {
            "local_epochs": 1,
            "batch_size": 32,
            "learning_rate": 1.0,
            "seed": 7,
            "holdout_fraction": 0.2,
        },
        "privacy": {
            "target_epsilon": 3.0,
            "delta": 1e-5,
            "max_grad_norm": 1.0,
            "accountant": "rdp",
        },
        "federation": {"rounds": 5, "min_hospitals": min_hospitals, "round_timeout_s": 300},
    }
    document.update(sections)
    return document


def protocol_hash(document: dict[str, Any]) -> str:
    return StudyProtocol.from_dict(document, require_encryption=False).approval_sha256


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.org")
    password = factory.PostGenerationMethodCall("set_password", PASSWORD)

    @factory.post_generation
    def save_password(obj: User, create: bool, extracted: Any, **kwargs: Any) -> None:  # noqa: N805
        if create:
            obj.save()


class ResearcherFactory(UserFactory):
    username = factory.Sequence(lambda n: f"researcher{n}")

    @factory.post_generation
    def researchers_group(obj: User, create: bool, extracted: Any, **kwargs: Any) -> None:  # noqa: N805
        if create:
            group, _ = Group.objects.get_or_create(name=RESEARCHERS_GROUP)
            obj.groups.add(group)


class AdminFactory(UserFactory):
    username = factory.Sequence(lambda n: f"admin{n}")
    is_staff = True
    is_superuser = True


class InstitutionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Institution
        django_get_or_create = ("slug",)

    name = factory.Sequence(lambda n: f"Hospital {n}")
    slug = factory.Sequence(lambda n: f"hospital-{n}")
    last_seen_at = factory.LazyFunction(timezone.now)  # its node heartbeat just now


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    user = factory.SubFactory(UserFactory)
    institution = factory.SubFactory(InstitutionFactory)
    role = Membership.STEWARD


class StewardFactory(UserFactory):
    """A user who is data steward of `institution` (a new hospital unless given)."""

    username = factory.Sequence(lambda n: f"steward{n}")

    @factory.post_generation
    def institution(obj: User, create: bool, extracted: Any, **kwargs: Any) -> None:  # noqa: N805
        if create:
            MembershipFactory(user=obj, institution=extracted or InstitutionFactory())


class StudyFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Study

    class Params:
        min_hospitals = 2

    owner = factory.SubFactory(ResearcherFactory)
    title = factory.Sequence(lambda n: f"Study {n}")
    slug = factory.Sequence(lambda n: f"study-{n}")
    protocol = factory.LazyAttribute(
        lambda s: json.loads(
            canonical_json(draft_protocol(slug=s.slug, min_hospitals=s.min_hospitals))
        )
    )
    protocol_sha256 = factory.LazyAttribute(lambda s: protocol_hash(s.protocol))
    state = Study.State.DRAFT


class EnrollmentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Enrollment

    study = factory.SubFactory(StudyFactory, state=Study.State.RECRUITING)
    institution = factory.SubFactory(InstitutionFactory)
    state = Enrollment.State.INVITED
    approved_protocol_sha256 = factory.LazyAttribute(
        lambda e: e.study.protocol_sha256 if e.state == Enrollment.State.APPROVED else ""
    )


def pseudonym(n: int) -> str:
    """A well-formed, deterministic pseudonym (64 lowercase hex characters) for patient `n`."""
    return hashlib.sha256(f"patient-{n}".encode()).hexdigest()


class ConsentFormFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ConsentForm

    study = factory.SubFactory(StudyFactory)
    version = factory.Sequence(lambda n: n + 1)
    title = factory.LazyAttribute(lambda f: f"Consent form v{f.version}")
    text = factory.LazyAttribute(lambda f: f"I agree to take part (version {f.version}).")
    text_sha256 = factory.LazyAttribute(lambda f: hashlib.sha256(f.text.encode()).hexdigest())
    published_by = factory.LazyAttribute(lambda f: f.study.owner)


class ConsentBatchFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ConsentBatch

    study = factory.SubFactory(StudyFactory)
    institution = factory.SubFactory(InstitutionFactory)
    source = Source.NODE_IMPORT
    actor_label = "node:test"


class ConsentRecordFactory(factory.django.DjangoModelFactory):
    """A granted record on form version 1 unless told; its batch is made for it."""

    class Meta:
        model = ConsentRecord

    study = factory.SubFactory(StudyFactory)
    institution = factory.SubFactory(InstitutionFactory)
    pseudonym = factory.Sequence(pseudonym)
    status = ConsentRecord.Status.GRANTED
    decided_at = factory.LazyFunction(timezone.now)
    form_version = factory.LazyAttribute(
        lambda r: 1 if r.status == ConsentRecord.Status.GRANTED else None
    )
    source = Source.NODE_IMPORT
    batch = factory.LazyAttribute(
        lambda r: ConsentBatchFactory(study=r.study, institution=r.institution, created=1)
    )


def ledger_entry(
    step: PrivacyStep, *, study_id: str = "earlier-study", run_id: str = "1", round_number: int = 1
) -> EntryReport:
    """One round a node charged, as its ledger report lists it."""
    return EntryReport(
        study_id=study_id,
        run_id=run_id,
        round_number=round_number,
        step=step,
        recorded_at=timezone.now(),
    )


def mirror_ledger(
    institution: Institution,
    *,
    dataset_id: str = "data",
    cap: float = 10.0,
    delta: float = 1e-5,
    accountant: Accountant = Accountant.RDP,
    min_cohort_size: int = 50,
    entries: tuple[EntryReport, ...] = (),
) -> LedgerMirror:
    """The portal's mirror of a node's ledger, made as a node's report makes it (ε recomputed)."""
    (mirror,) = ledger_report_ingest(
        institution=institution,
        datasets=[
            DatasetReport(
                dataset_id=dataset_id,
                max_lifetime_epsilon=cap,
                delta=delta,
                accountant=accountant,
                min_cohort_size=min_cohort_size,
                entries=entries,
            )
        ],
    )
    return mirror


class ReadinessReportFactory(factory.django.DjangoModelFactory):
    """A node's readiness report for the study's current protocol, without blockers."""

    class Meta:
        model = ReadinessReport

    study = factory.SubFactory(StudyFactory)
    institution = factory.SubFactory(InstitutionFactory)
    dataset_id = "data"
    protocol_sha256 = factory.LazyAttribute(lambda r: r.study.protocol_sha256)
    consent_waiver = "ethics board waiver EB-2026-17"
    rows_train = 400
    rows_holdout = 100
    blockers: Any = factory.LazyFunction(list)
    report_sha256 = "0" * 64
    reported_at = factory.LazyFunction(timezone.now)


def privacy_ready(study: Study, *, rows_train: int = 400, cap: float = 10.0) -> None:
    """What a run's preflight needs from each hospital that approved the study's current protocol:
    a passing readiness report and a mirror of its dataset's ledger (kept if there is one)."""
    for institution in approved_institutions(study=study):
        dataset_id = f"{institution.slug}-data"
        if not LedgerMirror.objects.filter(institution=institution, dataset_id=dataset_id).exists():
            mirror_ledger(institution, dataset_id=dataset_id, cap=cap)
        ReadinessReport.objects.filter(study=study, institution=institution).delete()
        ReadinessReportFactory(
            study=study, institution=institution, dataset_id=dataset_id, rows_train=rows_train
        )
