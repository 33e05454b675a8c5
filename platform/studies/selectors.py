"""Reads about studies. Per-object reads raise NotFoundError for what the user may not see,
so a study's existence is never revealed to someone outside it."""

from __future__ import annotations

from typing import Any

from django.db.models import F, Q, QuerySet

from core.errors import ConflictError, NotFoundError
from crypto import AggregatorContext
from institutions.models import Institution, Membership
from studies.models import Enrollment, Study

HE_SCHEME = "ckks"


def studies_visible_to(*, user: Any) -> QuerySet[Study]:
    """Superusers see every study; researchers their own; stewards those that invited them."""
    if user is None or not user.is_authenticated or not user.is_active:
        return Study.objects.none()
    if user.is_superuser:
        return Study.objects.all()
    steward_of = Institution.objects.filter(
        memberships__user=user, memberships__role=Membership.STEWARD
    )
    return Study.objects.filter(
        Q(owner=user) | Q(enrollments__institution__in=steward_of)
    ).distinct()


def study_get_for_user(*, user: Any, study_id: int) -> Study:
    study = studies_visible_to(user=user).select_related("owner").filter(pk=study_id).first()
    if study is None:
        raise NotFoundError(f"no study {study_id} that you can see")
    return study


def study_enrollments(*, study: Study) -> QuerySet[Enrollment]:
    return study.enrollments.select_related("institution", "decided_by")


def approved_institutions(*, study: Study) -> QuerySet[Institution]:
    """Hospitals whose steward approved the study's *current* protocol hash."""
    return Institution.objects.filter(
        enrollments__study=study,
        enrollments__state=Enrollment.State.APPROVED,
        enrollments__approved_protocol_sha256=study.protocol_sha256,
    ).distinct()


def approval_count(*, study: Study) -> int:
    return approved_institutions(study=study).count()


def min_hospitals(*, study: Study) -> int:
    return int(study.protocol["federation"]["min_hospitals"])


def full_protocol(*, study: Study) -> dict[str, Any]:
    """The approved document plus its encryption block: what a run sends to the federation."""
    if not study.he_aggregator_context or not study.he_context_fingerprint:
        raise ConflictError(
            f"study '{study.slug}' has no HE context yet: a hospital node must upload the "
            "study's keyless aggregator context first"
        )
    context = AggregatorContext.from_bytes(bytes(study.he_aggregator_context))
    return {
        **study.protocol,
        "encryption": {
            "scheme": HE_SCHEME,
            "params": context.params.to_dict(),
            "context_fingerprint": study.he_context_fingerprint,
        },
    }


def enrollments_of_steward(*, user: Any) -> QuerySet[Enrollment]:
    """Invitations addressed to the hospitals `user` stewards, newest study first."""
    if user is None or not user.is_authenticated:
        return Enrollment.objects.none()
    return (
        Enrollment.objects.filter(
            institution__memberships__user=user,
            institution__memberships__role=Membership.STEWARD,
        )
        .select_related("study", "institution", "decided_by")
        .order_by("-study__created_at", "institution__name")
        .distinct()
    )


def enrollment_get_for_steward(*, user: Any, enrollment_id: int) -> Enrollment:
    enrollment = enrollments_of_steward(user=user).filter(pk=enrollment_id).first()
    if enrollment is None:
        raise NotFoundError(f"no invitation {enrollment_id} for a hospital you steward")
    return enrollment


def studies_for_node(*, institution: Institution) -> QuerySet[Study]:
    """Studies whose current protocol hash this hospital approved: all a node may read."""
    return Study.objects.filter(
        enrollments__institution=institution,
        enrollments__state=Enrollment.State.APPROVED,
        enrollments__approved_protocol_sha256=F("protocol_sha256"),
    ).distinct()


def study_get_for_node(*, institution: Institution, slug: str) -> Study:
    study = studies_for_node(institution=institution).filter(slug=slug).first()
    if study is None:
        raise NotFoundError(
            f"no study '{slug}' approved by {institution.slug} for its current protocol"
        )
    return study


def node_protocol(*, study: Study) -> dict[str, Any]:
    """What a node reads: the full protocol once the HE context is pinned, else the draft."""
    if study.he_context_fingerprint:
        return full_protocol(study=study)
    return dict(study.protocol)
