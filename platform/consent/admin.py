"""The consent registry in the admin console is read-only: its history is made by services and
must never be edited (publishing, settings and withdrawals go through the study's consent page)."""

from __future__ import annotations

from django.contrib import admin

from consent.models import (
    ConsentBatch,
    ConsentForm,
    ConsentRecord,
    ConsentSnapshot,
    StudyConsentSettings,
)
from studies.admin import ReadOnlyAdmin


@admin.register(ConsentForm)
class ConsentFormAdmin(ReadOnlyAdmin):
    list_display = ["study", "version", "title", "published_by", "published_at", "text_sha256"]
    list_filter = ["published_at"]
    search_fields = ["study__slug", "title", "text_sha256"]


@admin.register(StudyConsentSettings)
class StudyConsentSettingsAdmin(ReadOnlyAdmin):
    list_display = ["study", "requires_current_form", "updated_by", "updated_at"]
    list_filter = ["requires_current_form"]
    search_fields = ["study__slug"]


@admin.register(ConsentBatch)
class ConsentBatchAdmin(ReadOnlyAdmin):
    list_display = [
        "created_at",
        "study",
        "institution",
        "source",
        "actor_label",
        "created",
        "unchanged",
        "granted",
        "withdrawn",
    ]
    list_filter = ["source", "institution"]
    search_fields = ["study__slug", "institution__slug", "actor_label"]
    date_hierarchy = "created_at"


@admin.register(ConsentRecord)
class ConsentRecordAdmin(ReadOnlyAdmin):
    list_display = [
        "pseudonym",
        "study",
        "institution",
        "status",
        "decided_at",
        "form_version",
        "source",
        "batch",
    ]
    list_filter = ["status", "source", "institution"]
    search_fields = ["pseudonym", "study__slug", "institution__slug"]
    list_select_related = ["study", "institution", "batch"]
    date_hierarchy = "decided_at"


@admin.register(ConsentSnapshot)
class ConsentSnapshotAdmin(ReadOnlyAdmin):
    list_display = [
        "study",
        "institution",
        "sha256",
        "required_form_version",
        "granted_count",
        "served_count",
        "first_served_at",
        "last_served_at",
    ]
    list_filter = ["institution"]
    search_fields = ["sha256", "study__slug", "institution__slug"]
