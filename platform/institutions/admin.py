"""Admin console for hospitals: stewards inline, node tokens issued through the service (the raw
token is shown once, in a message) and revoked by an action; digests are never editable."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from institutions.models import Institution, Membership, NodeToken
from institutions.services import node_token_issue, node_token_revoke


class MembershipInline(admin.TabularInline):  # type: ignore[type-arg]
    model = Membership
    extra = 1
    autocomplete_fields = ["user"]
    verbose_name = "data steward"
    verbose_name_plural = "data stewards"


@admin.register(Institution)
class InstitutionAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["name", "slug", "last_seen_at"]
    search_fields = ["name", "slug"]
    readonly_fields = ["last_seen_at", "node_status", "created_at", "updated_at"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [MembershipInline]


class NodeTokenAddForm(forms.ModelForm):  # type: ignore[type-arg]
    class Meta:
        model = NodeToken
        fields = ["institution", "label", "expires_at"]


@admin.register(NodeToken)
class NodeTokenAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["institution", "label", "prefix", "created_by", "expires_at", "revoked_at"]
    list_filter = ["institution", "revoked_at"]
    search_fields = ["label", "prefix", "institution__slug"]
    readonly_fields = [
        "institution",
        "label",
        "prefix",
        "digest",
        "created_by",
        "expires_at",
        "revoked_at",
        "last_used_at",
        "created_at",
    ]
    actions = ["revoke"]

    def get_form(
        self,
        request: HttpRequest,
        obj: NodeToken | None = None,
        change: bool = False,
        **kwargs: Any,
    ) -> Any:
        if obj is None:
            kwargs["form"] = NodeTokenAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_readonly_fields(self, request: HttpRequest, obj: NodeToken | None = None) -> Any:
        return self.readonly_fields if obj is not None else []

    def get_fields(self, request: HttpRequest, obj: NodeToken | None = None) -> Any:
        return self.readonly_fields if obj is not None else ["institution", "label", "expires_at"]

    def has_delete_permission(self, request: HttpRequest, obj: NodeToken | None = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: NodeToken, form: Any, change: bool) -> None:
        if change:
            return
        token, raw = node_token_issue(
            institution=obj.institution,
            label=obj.label,
            actor=request.user,  # type: ignore[arg-type]
            expires_at=obj.expires_at,
        )
        obj.pk = token.pk
        obj.prefix, obj.digest, obj.created_by = token.prefix, token.digest, token.created_by
        obj._state.adding = False
        messages.warning(
            request,
            f"Node token for {token.institution.slug}: {raw} — copy it now into the node's "
            "configuration; it is stored hashed and will not be shown again.",
        )

    @admin.action(description="Revoke selected node tokens")
    def revoke(self, request: HttpRequest, queryset: QuerySet[NodeToken]) -> None:
        for token in queryset:
            node_token_revoke(token=token, actor=request.user)  # type: ignore[arg-type]
        self.message_user(request, f"Revoked {queryset.count()} node token(s).", messages.SUCCESS)
