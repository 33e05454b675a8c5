from __future__ import annotations

from django.conf import settings
from django.db import models

from core.models import TimeStampedModel
from institutions.models import Institution
from studies.models import Study


class Run(TimeStampedModel):
    """One execution of a study on the SuperLink. The database, not task memory, holds its state."""

    class State(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        COMPLETED = "completed"
        FAILED = "failed"
        CANCELLED = "cancelled"

    FINISHED = (State.COMPLETED, State.FAILED, State.CANCELLED)

    study = models.ForeignKey(Study, on_delete=models.PROTECT, related_name="runs")
    started_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    state = models.CharField(max_length=20, choices=State.choices, default=State.QUEUED)
    protocol_sha256 = models.CharField(max_length=64)
    rounds_planned = models.PositiveIntegerField()
    # Flower's run ids are unsigned 64-bit integers: half of them fit neither PostgreSQL's bigint
    # nor SQLite's integer (which silently turns them into floats), so they are kept as digits.
    flower_run_id = models.CharField(max_length=20, null=True, blank=True, unique=True)
    reason = models.TextField(blank=True)
    token_prefix = models.CharField(
        max_length=16, blank=True, help_text="run-scoped token for the ServerApp"
    )
    token_digest = models.CharField(max_length=64, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    aggregator_facts = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"run {self.pk} of {self.study}"

    @property
    def finished(self) -> bool:
        return self.state in self.FINISHED


class Round(models.Model):
    """A completed round as the aggregator reported it; at most one per (run, number)."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="rounds")
    number = models.PositiveIntegerField()
    participants = models.JSONField(default=list)
    dropped = models.JSONField(default=dict)
    metrics = models.JSONField(default=dict)
    bytes_down = models.BigIntegerField(default=0)
    seconds = models.FloatField(default=0.0)
    recorded_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["run", "number"], name="one_round_per_number")
        ]
        ordering = ["run", "number"]

    def __str__(self) -> str:
        return f"round {self.number} of run {self.run_id}"


class HospitalRound(models.Model):
    """What one hospital published about its part in one round."""

    round = models.ForeignKey(Round, on_delete=models.CASCADE, related_name="hospitals")
    hospital = models.CharField(
        max_length=64, help_text="the node's reported name (institution slug)"
    )
    institution = models.ForeignKey(Institution, null=True, blank=True, on_delete=models.PROTECT)
    epsilon = models.FloatField()
    noise_multiplier = models.FloatField()
    sample_rate = models.FloatField()
    steps = models.PositiveIntegerField()
    delta = models.FloatField()
    accountant = models.CharField(max_length=20)
    epsilon_conversion = models.CharField(
        max_length=40, blank=True, help_text="how the accountant's bound became (ε, δ)"
    )
    consent = models.CharField(
        max_length=300,
        blank=True,
        help_text="sha256 of the consent snapshot the node used, or 'waived: <decision>'",
    )
    rows_rounded = models.PositiveIntegerField()
    bytes_up = models.BigIntegerField()
    train_seconds = models.FloatField()
    metrics = models.JSONField(default=dict)

    class Meta:
        ordering = ["hospital"]

    def __str__(self) -> str:
        return f"{self.hospital} in {self.round}"


class ReleaseApproval(TimeStampedModel):
    """A steward agrees that the run's final model may be released to the researchers."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="release_approvals")
    institution = models.ForeignKey(Institution, on_delete=models.PROTECT)
    steward = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["run", "institution"], name="one_release_approval_per_hospital"
            )
        ]


class ModelRelease(TimeStampedModel):
    """The final decrypted model, uploaded by a hospital node with its privacy report."""

    run = models.OneToOneField(Run, on_delete=models.PROTECT, related_name="release")
    institution = models.ForeignKey(Institution, on_delete=models.PROTECT)
    parameters = models.BinaryField()
    parameters_sha256 = models.CharField(max_length=64)
    privacy_report = models.JSONField()
