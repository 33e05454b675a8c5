"""factory_boy factories for the portal's people, hospitals and studies.

`StudyFactory` builds a valid draft protocol (the demo's breast-cancer study, without encryption)
through `study_create`'s rules: canonical JSON, study_id equal to the slug, approval hash.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from typing import Any

import factory
from django.contrib.auth.models import Group, User
from django.utils import timezone

from hospitals.protocol import StudyProtocol, canonical_json
from institutions.models import Institution, Membership
from institutions.selectors import RESEARCHERS_GROUP
from studies.models import Enrollment, Study

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
