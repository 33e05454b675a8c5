"""Recording consequential events; callers run it inside the transaction of the change."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import models

from core.models import AuditEvent


def audit_record(
    *,
    action: str,
    target: models.Model,
    actor: AbstractBaseUser | AnonymousUser | None = None,
    actor_label: str = "",
    data: dict[str, Any] | None = None,
) -> AuditEvent:
    user = actor if isinstance(actor, AbstractBaseUser) else None
    return AuditEvent.objects.create(
        actor_id=user.pk if user else None,
        actor_label=actor_label or (user.get_username() if user else "system"),
        action=action,
        target_type=target._meta.label_lower,
        target_id=str(target.pk),
        data=data or {},
    )
