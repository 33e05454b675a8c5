from __future__ import annotations

from django.conf import settings
from django.db import models

from core.models import TimeStampedModel
from institutions.models import Institution


class Study(TimeStampedModel):
    """A federated study. State changes only through `studies.services` (transitions enforced)."""

    class State(models.TextChoices):
        DRAFT = "draft"
        RECRUITING = "recruiting"
        READY = "ready"
        RUNNING = "running"
        COMPLETED = "completed"
        FAILED = "failed"
        CANCELLED = "cancelled"

    slug = models.SlugField(max_length=64, unique=True, help_text="the study id hospitals see")
    title = models.CharField(max_length=200)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="studies"
    )
    state = models.CharField(max_length=20, choices=State.choices, default=State.DRAFT)
    protocol = models.JSONField(
        help_text="canonical protocol document, without its encryption block"
    )
    protocol_sha256 = models.CharField(max_length=64)
    he_aggregator_context = models.BinaryField(
        null=True, blank=True, help_text="keyless CKKS context"
    )
    he_context_fingerprint = models.CharField(max_length=64, blank=True)
    release_approvals_required = models.PositiveSmallIntegerField(default=1)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "studies"

    def __str__(self) -> str:
        return self.title


class Enrollment(TimeStampedModel):
    """A hospital invited to a study, and its steward's decision on one protocol hash."""

    class State(models.TextChoices):
        INVITED = "invited"
        APPROVED = "approved"
        DECLINED = "declined"

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="enrollments")
    institution = models.ForeignKey(
        Institution, on_delete=models.PROTECT, related_name="enrollments"
    )
    state = models.CharField(max_length=20, choices=State.choices, default=State.INVITED)
    approved_protocol_sha256 = models.CharField(max_length=64, blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    comment = models.TextField(blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["study", "institution"], name="one_enrollment_per_hospital"
            )
        ]
        ordering = ["institution__name"]

    def __str__(self) -> str:
        return f"{self.institution} in {self.study}: {self.state}"
