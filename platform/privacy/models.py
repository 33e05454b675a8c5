"""The portal's mirror of each hospital node's privacy ledger, the nodes' readiness reports, and
the preflight projection each run started with.

The node's ledger is the authority on ε (DESIGN.md, Privacy accounting). The portal keeps the
entries a node reports and recomputes every ε from them itself, once at ingest, with
`hospitals.dp.epsilon_of` at the mirror's δ and accountant: a node-sent ε is never stored.
Rows here are written only by `privacy.services`.
"""

from __future__ import annotations

from django.db import models

from core.models import TimeStampedModel
from hospitals.dp import EPSILON_CONVERSIONS, Accountant, PrivacyStep
from institutions.models import Institution
from runs.models import Run
from studies.models import Study

ACCOUNTANT_CHOICES = [(accountant.value, accountant.value) for accountant in Accountant]


class LedgerMirror(TimeStampedModel):
    """One dataset of one hospital: its lifetime cap (node policy) and the ε its entries spent."""

    institution = models.ForeignKey(
        Institution, on_delete=models.CASCADE, related_name="ledger_mirrors"
    )
    dataset_id = models.CharField(max_length=200)
    max_lifetime_epsilon = models.FloatField(help_text="the node policy's lifetime ε cap")
    delta = models.FloatField(help_text="δ at which the node accounts the lifetime ε")
    accountant = models.CharField(max_length=10, choices=ACCOUNTANT_CHOICES)
    min_cohort_size = models.PositiveIntegerField()
    epsilon_spent = models.FloatField(
        help_text="lifetime ε of all entries, recomputed by the portal"
    )
    subtotals = models.JSONField(
        default=dict, blank=True, help_text="ε per study and per run, recomputed at ingest"
    )
    report_sha256 = models.CharField(
        max_length=64, help_text="sha256 of the canonical report: changes are audited"
    )
    reported_at = models.DateTimeField(help_text="the node's latest report, changed or not")
    changed_at = models.DateTimeField(help_text="the latest report that changed the mirror")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["institution", "dataset_id"], name="one_ledger_mirror_per_dataset"
            )
        ]
        ordering = ["institution__name", "dataset_id"]

    def __str__(self) -> str:
        return f"{self.institution.slug}/{self.dataset_id}"

    @property
    def conversion(self) -> str:
        return EPSILON_CONVERSIONS[Accountant(self.accountant)]

    @property
    def percent_spent(self) -> int:
        if self.max_lifetime_epsilon <= 0:
            return 100
        return min(100, round(100 * self.epsilon_spent / self.max_lifetime_epsilon))

    @property
    def epsilon_left(self) -> float:
        return max(0.0, self.max_lifetime_epsilon - self.epsilon_spent)


class MirrorEntry(models.Model):
    """One round a node charged to the dataset, as its ledger recorded it."""

    mirror = models.ForeignKey(LedgerMirror, on_delete=models.CASCADE, related_name="entries")
    position = models.PositiveIntegerField(help_text="order in the node's ledger, from 0")
    study_id = models.CharField(max_length=64)
    run_id = models.CharField(max_length=100, help_text="the Flower run id")
    round_number = models.PositiveIntegerField()
    sample_rate = models.FloatField()
    noise_multiplier = models.FloatField()
    steps = models.PositiveIntegerField()
    delta = models.FloatField(help_text="δ the round was planned at")
    accountant = models.CharField(max_length=10, choices=ACCOUNTANT_CHOICES)
    recorded_at = models.DateTimeField()
    epsilon_after = models.FloatField(
        help_text="lifetime ε after this entry (the mirror's δ and accountant)"
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["mirror", "position"], name="one_entry_per_position")
        ]
        ordering = ["mirror", "position"]

    def __str__(self) -> str:
        return f"{self.mirror} #{self.position}: {self.study_id} run {self.run_id}"

    @property
    def step(self) -> PrivacyStep:
        return PrivacyStep(
            sample_rate=self.sample_rate,
            noise_multiplier=self.noise_multiplier,
            steps=self.steps,
            delta=self.delta,
            accountant=Accountant(self.accountant),
        )


class ReadinessReport(TimeStampedModel):
    """A node's current view of whether it can take part in a study; one per (study, hospital)."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="readiness_reports")
    institution = models.ForeignKey(
        Institution, on_delete=models.CASCADE, related_name="readiness_reports"
    )
    dataset_id = models.CharField(max_length=200)
    protocol_sha256 = models.CharField(
        max_length=64, help_text="the approval hash of the protocol the node evaluated"
    )
    consent_sha256 = models.CharField(max_length=64, blank=True)
    consent_waiver = models.TextField(blank=True)
    rows_train = models.PositiveIntegerField(help_text="usable rows after consent and holdout")
    rows_holdout = models.PositiveIntegerField()
    blockers = models.JSONField(default=list, blank=True)
    report_sha256 = models.CharField(max_length=64)
    reported_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["study", "institution"], name="one_readiness_report_per_hospital"
            )
        ]
        ordering = ["study", "institution__name"]

    def __str__(self) -> str:
        return f"{self.institution.slug} readiness for {self.study.slug}"


class RunPreflight(models.Model):
    """What the preflight projected when the run started, to compare later with what it spent."""

    run = models.OneToOneField(Run, on_delete=models.CASCADE, related_name="preflight")
    protocol_sha256 = models.CharField(max_length=64)
    projection = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"preflight of run {self.run_id}"
