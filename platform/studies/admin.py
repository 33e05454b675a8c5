"""Studies and enrollments in the admin console are read-only: their history is made by services."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from studies.models import Enrollment, Study

ENROLLMENT_FIELDS = ("institution", "state", "approved_protocol_sha256", "decided_by", "decided_at")


class ReadOnlyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class EnrollmentInline(admin.TabularInline):  # type: ignore[type-arg]
    model = Enrollment
    extra = 0
    can_delete = False
    fields = ENROLLMENT_FIELDS
    readonly_fields = ENROLLMENT_FIELDS

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Study)
class StudyAdmin(ReadOnlyAdmin):
    list_display = ["title", "slug", "owner", "state", "protocol_sha256", "created_at"]
    list_filter = ["state", "created_at"]
    search_fields = ["title", "slug", "owner__username", "protocol_sha256"]
    date_hierarchy = "created_at"
    exclude = ["he_aggregator_context"]
    inlines = [EnrollmentInline]


@admin.register(Enrollment)
class EnrollmentAdmin(ReadOnlyAdmin):
    list_display = ["study", "institution", "state", "decided_by", "decided_at"]
    list_filter = ["state", "institution"]
    search_fields = ["study__slug", "study__title", "institution__slug", "institution__name"]
