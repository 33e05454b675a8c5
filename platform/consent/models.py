"""The consent registry: versioned consent forms and an append-only history of patients' decisions.

Patients appear only as pseudonyms (HMAC-SHA256 of the patient id under a secret that never leaves
the hospital). Rows here are written only by `consent.services`, and never updated or deleted:
the current state of a pseudonym is its latest record (by `decided_at`, then insertion order).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from institutions.models import Institution
from studies.models import Study


class ConsentForm(models.Model):
    """One published version of a study's consent form; versions are append-only (1, 2, 3...)."""

    study = models.ForeignKey(Study, on_delete=models.PROTECT, related_name="consent_forms")
    version = models.PositiveIntegerField()
    title = models.CharField(max_length=200)
    text = models.TextField(help_text="the form's text, or a summary of it")
    text_sha256 = models.CharField(max_length=64)
    published_at = models.DateTimeField(auto_now_add=True)
    published_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["study", "version"], name="one_consent_form_version"),
            models.CheckConstraint(
                condition=models.Q(version__gte=1), name="consent_form_version_from_1"
            ),
        ]
        ordering = ["study", "version"]

    def __str__(self) -> str:
        return f"{self.study.slug} consent form v{self.version}"


class StudyConsentSettings(models.Model):
    """A study's consent rules; a study without a row has the defaults."""

    study = models.OneToOneField(
        Study, on_delete=models.CASCADE, primary_key=True, related_name="consent_settings"
    )
    requires_current_form = models.BooleanField(
        default=False,
        help_text="only consent given on the current (highest) form version counts",
    )
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        verbose_name = "study consent settings"
        verbose_name_plural = "study consent settings"

    def __str__(self) -> str:
        rule = "current form required" if self.requires_current_form else "any form version"
        return f"{self.study.slug}: {rule}"


class Source(models.TextChoices):
    NODE_IMPORT = "node-import", "Node upload"
    NODE_WITHDRAWAL = "node-withdrawal", "Withdrawal from the node"
    STEWARD = "steward", "Withdrawal by a steward"


class ConsentBatch(models.Model):
    """One write to a hospital's registry: a node import or a steward's withdrawal."""

    study = models.ForeignKey(Study, on_delete=models.PROTECT, related_name="consent_batches")
    institution = models.ForeignKey(
        Institution, on_delete=models.PROTECT, related_name="consent_batches"
    )
    source = models.CharField(max_length=20, choices=Source.choices)
    actor_label = models.CharField(max_length=200, help_text="node token prefix or username")
    created = models.PositiveIntegerField(default=0, help_text="records added")
    unchanged = models.PositiveIntegerField(default=0, help_text="records already known")
    granted = models.PositiveIntegerField(default=0, help_text="added records that grant")
    withdrawn = models.PositiveIntegerField(default=0, help_text="added records that withdraw")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "consent batches"

    def __str__(self) -> str:
        return f"{self.institution.slug} → {self.study.slug}: {self.source} (+{self.created})"


class ConsentRecord(models.Model):
    """A patient's (pseudonym's) consent decision for a study, as the hospital recorded it."""

    class Status(models.TextChoices):
        GRANTED = "granted"
        WITHDRAWN = "withdrawn"

    study = models.ForeignKey(Study, on_delete=models.PROTECT, related_name="consent_records")
    institution = models.ForeignKey(
        Institution, on_delete=models.PROTECT, related_name="consent_records"
    )
    pseudonym = models.CharField(max_length=64, help_text="HMAC-SHA256 hex, 64 characters")
    status = models.CharField(max_length=10, choices=Status.choices)
    decided_at = models.DateTimeField()
    form_version = models.PositiveIntegerField(null=True, blank=True)
    source = models.CharField(max_length=20, choices=Source.choices)
    batch = models.ForeignKey(ConsentBatch, on_delete=models.PROTECT, related_name="records")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=~models.Q(status="granted") | models.Q(form_version__isnull=False),
                name="consent_granted_names_its_form",
            )
        ]
        indexes = [
            # "Latest record per pseudonym" probes (study, institution, pseudonym) and orders by
            # (decided_at, id); one B-tree serves it on PostgreSQL and SQLite alike.
            models.Index(
                fields=["study", "institution", "pseudonym", "decided_at", "id"],
                name="consent_latest_record",
            )
        ]
        ordering = ["decided_at", "id"]

    def __str__(self) -> str:
        return f"{self.pseudonym[:12]}… {self.status} {self.decided_at:%Y-%m-%d}"


class ConsentSnapshot(models.Model):
    """A distinct consent snapshot the portal served to a node, so a round's reported consent
    hash can be matched later to what was served (and when, and how many patients it held)."""

    study = models.ForeignKey(Study, on_delete=models.PROTECT, related_name="consent_snapshots")
    institution = models.ForeignKey(
        Institution, on_delete=models.PROTECT, related_name="consent_snapshots"
    )
    sha256 = models.CharField(max_length=64)
    required_form_version = models.PositiveIntegerField(null=True, blank=True)
    granted_count = models.PositiveIntegerField()
    served_count = models.PositiveIntegerField(default=1)
    first_served_at = models.DateTimeField()
    last_served_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["study", "institution", "sha256"], name="one_row_per_consent_snapshot"
            )
        ]
        ordering = ["-last_served_at", "-id"]

    def __str__(self) -> str:
        return f"{self.institution.slug} → {self.study.slug}: {self.sha256[:12]}…"
