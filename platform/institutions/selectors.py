"""Reads about hospitals and their people; every per-object read checks who is asking."""

from __future__ import annotations

from typing import Any

from django.db.models import Q, QuerySet

from core.errors import NotFoundError
from institutions.models import Institution, Membership

RESEARCHERS_GROUP = "researchers"


def is_researcher(user: Any) -> bool:
    return bool(
        user is not None
        and user.is_authenticated
        and user.is_active
        and user.groups.filter(name=RESEARCHERS_GROUP).exists()
    )


def is_admin(user: Any) -> bool:
    return bool(user is not None and user.is_authenticated and (user.is_staff or user.is_superuser))


def institutions_of_steward(*, user: Any) -> QuerySet[Institution]:
    if user is None or not user.is_authenticated:
        return Institution.objects.none()
    return Institution.objects.filter(
        memberships__user=user, memberships__role=Membership.STEWARD
    ).distinct()


def is_steward_of(*, user: Any, institution: Institution) -> bool:
    return institutions_of_steward(user=user).filter(pk=institution.pk).exists()


def institutions_visible_to(*, user: Any) -> QuerySet[Institution]:
    """Admins see every hospital; stewards their own; researchers those in their studies."""
    if user is None or not user.is_authenticated:
        return Institution.objects.none()
    if is_admin(user):
        return Institution.objects.all()
    return Institution.objects.filter(
        Q(memberships__user=user, memberships__role=Membership.STEWARD)
        | Q(enrollments__study__owner=user)
    ).distinct()


def institution_get_for_user(*, user: Any, slug: str) -> Institution:
    institution = institutions_visible_to(user=user).filter(slug=slug).first()
    if institution is None:
        raise NotFoundError(f"no hospital '{slug}' that you can see")
    return institution


def stewards_of(*, institution: Institution) -> QuerySet[Membership]:
    return institution.memberships.filter(role=Membership.STEWARD).select_related("user")
