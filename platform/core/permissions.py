"""Who may call an API: session users (researchers, stewards) or hospital nodes, never both.

Session endpoints authenticate with `SessionAuthentication`; its `WWW-Authenticate` challenge makes
an anonymous call a 401 (DRF answers 403 when the first authenticator has no challenge).
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from rest_framework import authentication, permissions
from rest_framework.request import Request

from institutions.authentication import NodePrincipal
from institutions.selectors import institutions_of_steward, is_researcher


class SessionAuthentication(authentication.SessionAuthentication):
    def authenticate_header(self, request: HttpRequest) -> str:
        return 'Session realm="cohort"'


class IsSessionUser(permissions.BasePermission):
    message = "log in to the portal to use this endpoint"

    def has_permission(self, request: Request, view: Any) -> bool:
        return bool(request.user and request.user.is_authenticated and request.auth is None)


class IsResearcher(IsSessionUser):
    message = "only researchers may do this"

    def has_permission(self, request: Request, view: Any) -> bool:
        return super().has_permission(request, view) and is_researcher(request.user)


class IsSteward(IsSessionUser):
    message = "only hospital data stewards may do this"

    def has_permission(self, request: Request, view: Any) -> bool:
        return (
            super().has_permission(request, view)
            and institutions_of_steward(user=request.user).exists()
        )


class IsNode(permissions.BasePermission):
    message = "this endpoint is for hospital nodes (Authorization: Node <token>)"

    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.auth, NodePrincipal)
