"""Writes about hospitals: creation, stewards, node credentials and node heartbeats.

Each service runs in one transaction together with its audit record.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import validate_slug
from django.db import transaction
from django.utils import timezone

from core.audit import audit_record
from core.errors import ValidationError
from core.tokens import issue_token
from institutions.authentication import NODE_TOKEN_KIND
from institutions.models import Institution, Membership, NodeToken

HEARTBEAT_MAX_KEYS = 32
HEARTBEAT_MAX_BYTES = 4096
HEARTBEAT_MAX_KEY_LENGTH = 64
HEARTBEAT_MAX_TEXT_LENGTH = 500


def institution_create(*, name: str, slug: str, actor: User | None = None) -> Institution:
    name = name.strip()
    if not name:
        raise ValidationError(
            "a hospital needs a name", fields={"name": ["this field is required"]}
        )
    try:
        validate_slug(slug)
    except DjangoValidationError as error:
        raise ValidationError(
            f"'{slug}' is not a valid hospital slug: use letters, digits, '-' and '_'",
            fields={"slug": list(error.messages)},
        ) from error
    with transaction.atomic():
        if Institution.objects.select_for_update().filter(slug=slug).exists():
            raise ValidationError(
                f"a hospital with slug '{slug}' already exists; choose another slug",
                fields={"slug": ["already taken"]},
            )
        institution = Institution.objects.create(name=name, slug=slug)
        audit_record(
            action="institution.created", target=institution, actor=actor, data={"slug": slug}
        )
    return institution


def steward_add(*, user: User, institution: Institution, actor: User | None = None) -> Membership:
    """Make `user` a data steward of `institution`; adding an existing steward changes nothing."""
    with transaction.atomic():
        membership, created = Membership.objects.get_or_create(
            user=user, institution=institution, defaults={"role": Membership.STEWARD}
        )
        if created:
            audit_record(
                action="institution.steward_added",
                target=institution,
                actor=actor,
                data={"user": user.get_username()},
            )
    return membership


def node_token_issue(
    *,
    institution: Institution,
    label: str,
    actor: User,
    expires_at: datetime | None = None,
) -> tuple[NodeToken, str]:
    """A new node credential; the raw token is returned here and never again."""
    label = label.strip()
    if not label:
        raise ValidationError(
            "a node token needs a label", fields={"label": ["this field is required"]}
        )
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationError(
            "the expiry lies in the past; choose a future time or none",
            fields={"expires_at": ["must be in the future"]},
        )
    issued = issue_token(NODE_TOKEN_KIND)
    with transaction.atomic():
        token = NodeToken.objects.create(
            institution=institution,
            label=label,
            prefix=issued.prefix,
            digest=issued.digest,
            created_by=actor,
            expires_at=expires_at,
        )
        audit_record(
            action="node_token.issued",
            target=token,
            actor=actor,
            data={
                "institution": institution.slug,
                "label": label,
                "prefix": issued.prefix,
                "expires_at": expires_at.isoformat() if expires_at else None,
            },
        )
    return token, issued.raw


def node_token_revoke(*, token: NodeToken, actor: User) -> NodeToken:
    """Revoke a node credential; revoking a revoked token changes nothing."""
    with transaction.atomic():
        token = NodeToken.objects.select_for_update().select_related("institution").get(pk=token.pk)
        if token.revoked_at is not None:
            return token
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at", "updated_at"])
        audit_record(
            action="node_token.revoked",
            target=token,
            actor=actor,
            data={"institution": token.institution.slug, "prefix": token.prefix},
        )
    return token


def node_heartbeat(*, institution: Institution, status: dict[str, Any]) -> Institution:
    """A node says it is alive, with a small flat status object shown on the hospital page.

    Heartbeats are frequent and carry no decision, so they are not audited.
    """
    _check_status(status)
    with transaction.atomic():
        institution = Institution.objects.select_for_update().get(pk=institution.pk)
        institution.last_seen_at = timezone.now()
        institution.node_status = status
        institution.save(update_fields=["last_seen_at", "node_status", "updated_at"])
    return institution


def _check_status(status: Any) -> None:
    def refuse(problem: str) -> ValidationError:
        return ValidationError(f"node status {problem}", fields={"status": [problem]})

    if not isinstance(status, dict):
        raise refuse("must be a JSON object")
    if len(status) > HEARTBEAT_MAX_KEYS:
        raise refuse(f"has {len(status)} keys; at most {HEARTBEAT_MAX_KEYS} are kept")
    for key, value in status.items():
        if not isinstance(key, str) or not key or len(key) > HEARTBEAT_MAX_KEY_LENGTH:
            raise refuse(f"keys must be 1 to {HEARTBEAT_MAX_KEY_LENGTH} characters, got {key!r}")
        if value is not None and not isinstance(value, str | int | float | bool):
            raise refuse(
                f"must be flat: '{key}' holds a {type(value).__name__}; "
                "use strings, numbers, booleans or null"
            )
        if isinstance(value, str) and len(value) > HEARTBEAT_MAX_TEXT_LENGTH:
            raise refuse(f"value of '{key}' is longer than {HEARTBEAT_MAX_TEXT_LENGTH} characters")
    try:
        size = len(json.dumps(status, allow_nan=False).encode())
    except ValueError as error:
        raise refuse("must not hold NaN or infinite numbers") from error
    if size > HEARTBEAT_MAX_BYTES:
        raise refuse(f"is {size} bytes; at most {HEARTBEAT_MAX_BYTES} are kept")
