from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from core.models import TimeStampedModel

# A node that heartbeat within this window counts as online (nodes beat every minute or so).
NODE_ONLINE_WINDOW_S = 300


class Institution(TimeStampedModel):
    """A hospital. Its `slug` is the name its node reports in federated runs."""

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=64, unique=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    node_status = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def node_online(self, *, within_s: int = NODE_ONLINE_WINDOW_S) -> bool:
        return (
            self.last_seen_at is not None
            and (timezone.now() - self.last_seen_at).total_seconds() < within_s
        )


class Membership(TimeStampedModel):
    """A user acting for a hospital; today the only role is data steward."""

    STEWARD = "steward"
    ROLES = [(STEWARD, "Data steward")]

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    institution = models.ForeignKey(
        Institution, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=20, choices=ROLES, default=STEWARD)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["user", "institution"], name="one_membership_per_hospital"
            )
        ]

    def __str__(self) -> str:
        return f"{self.user} — {self.role} at {self.institution}"


class NodeToken(TimeStampedModel):
    """A hospital node's API credential: scoped to one institution, stored hashed, revocable."""

    institution = models.ForeignKey(
        Institution, on_delete=models.CASCADE, related_name="node_tokens"
    )
    label = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True)
    digest = models.CharField(max_length=64)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.institution.slug}/{self.label} ({self.prefix}…)"

    @property
    def active(self) -> bool:
        now = timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)
