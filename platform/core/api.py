"""Base classes for the portal's API views: who may call them, and body size limits."""

from __future__ import annotations

from django.contrib.auth.models import User
from rest_framework.request import Request
from rest_framework.views import APIView

from core.errors import PayloadTooLargeError
from core.permissions import IsNode, IsSessionUser, SessionAuthentication
from institutions.authentication import NodePrincipal, NodeTokenAuthentication
from institutions.models import Institution


def limit_body(request: Request, *, max_bytes: int, what: str) -> None:
    """Refuse an oversized body before parsing it."""
    declared = request.META.get("CONTENT_LENGTH") or "0"
    size = int(declared) if declared.isdigit() else 0
    if size <= max_bytes:
        size = len(request.body)
    if size > max_bytes:
        raise PayloadTooLargeError(
            f"{what} is {size} bytes; at most {max_bytes} are accepted",
            fields={"body": [f"at most {max_bytes} bytes"]},
        )


class SessionApi(APIView):
    authentication_classes = [SessionAuthentication]
    permission_classes = [IsSessionUser]

    def user(self) -> User:
        user = self.request.user
        if not isinstance(user, User):
            raise TypeError("SessionApi views run only for logged-in users (IsSessionUser)")
        return user


class NodeApi(APIView):
    authentication_classes = [NodeTokenAuthentication]
    permission_classes = [IsNode]

    def institution(self) -> Institution:
        principal = self.request.auth
        if not isinstance(principal, NodePrincipal):
            raise TypeError("NodeApi views run only for node tokens (IsNode)")
        return principal.institution
