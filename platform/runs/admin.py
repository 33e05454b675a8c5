"""The admin console's view of runs: read-only, since run state changes only through services."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from runs.models import HospitalRound, ModelRelease, ReleaseApproval, Round, Run


class ReadOnlyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class RoundInline(admin.TabularInline):  # type: ignore[type-arg]
    model = Round
    fields = ("number", "participants", "dropped", "metrics", "bytes_down", "seconds")
    readonly_fields = ("number", "participants", "dropped", "metrics", "bytes_down", "seconds")
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Run)
class RunAdmin(ReadOnlyAdmin):
    list_display = ["id", "study", "state", "rounds_planned", "flower_run_id", "created_at"]
    list_filter = ["state"]
    search_fields = ["study__slug", "study__title", "reason"]
    exclude = ["token_digest"]
    inlines = [RoundInline]


class HospitalRoundInline(admin.TabularInline):  # type: ignore[type-arg]
    model = HospitalRound
    fields = ("hospital", "institution", "epsilon", "rows_rounded", "bytes_up", "train_seconds")
    readonly_fields = (
        "hospital",
        "institution",
        "epsilon",
        "rows_rounded",
        "bytes_up",
        "train_seconds",
    )
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Round)
class RoundAdmin(ReadOnlyAdmin):
    list_display = ["run", "number", "seconds", "recorded_at"]
    list_filter = ["run__state"]
    inlines = [HospitalRoundInline]


@admin.register(HospitalRound)
class HospitalRoundAdmin(ReadOnlyAdmin):
    list_display = ["round", "hospital", "epsilon", "delta", "accountant", "rows_rounded"]
    search_fields = ["hospital"]


@admin.register(ReleaseApproval)
class ReleaseApprovalAdmin(ReadOnlyAdmin):
    list_display = ["run", "institution", "steward", "created_at"]


@admin.register(ModelRelease)
class ModelReleaseAdmin(ReadOnlyAdmin):
    list_display = ["run", "institution", "parameters_sha256", "created_at"]
    exclude = ["parameters"]
