"""The admin console's view of privacy budgets: read-only, written only by nodes' reports."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from privacy.models import LedgerMirror, MirrorEntry, ReadinessReport, RunPreflight
from runs.admin import ReadOnlyAdmin


class MirrorEntryInline(admin.TabularInline):  # type: ignore[type-arg]
    model = MirrorEntry
    fields = (
        "position",
        "study_id",
        "run_id",
        "round_number",
        "sample_rate",
        "noise_multiplier",
        "steps",
        "delta",
        "accountant",
        "recorded_at",
        "epsilon_after",
    )
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(LedgerMirror)
class LedgerMirrorAdmin(ReadOnlyAdmin):
    list_display = [
        "institution",
        "dataset_id",
        "epsilon_spent",
        "max_lifetime_epsilon",
        "accountant",
        "reported_at",
    ]
    search_fields = ["institution__slug", "dataset_id"]
    inlines = [MirrorEntryInline]


@admin.register(ReadinessReport)
class ReadinessReportAdmin(ReadOnlyAdmin):
    list_display = ["study", "institution", "dataset_id", "rows_train", "reported_at"]
    search_fields = ["study__slug", "institution__slug", "dataset_id"]


@admin.register(RunPreflight)
class RunPreflightAdmin(ReadOnlyAdmin):
    list_display = ["run", "protocol_sha256", "created_at"]
