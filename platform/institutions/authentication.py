"""API authentication for hospital nodes: `Authorization: Node <token>`."""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth.models import AnonymousUser
from django.utils import timezone
from rest_framework import exceptions
from rest_framework.request import Request

from core.authentication import KeywordTokenAuthentication
from core.tokens import digest_matches, token_prefix
from institutions.models import Institution, NodeToken

NODE_TOKEN_KIND = "node"  # noqa: S105 - a token kind, not a secret


@dataclass(frozen=True)
class NodePrincipal:
    """Who is calling: a hospital node, acting for exactly one institution."""

    token: NodeToken

    @property
    def institution(self) -> Institution:
        return self.token.institution


class NodeTokenAuthentication(KeywordTokenAuthentication):
    keyword = "Node"

    def authenticate(self, request: Request) -> tuple[AnonymousUser, NodePrincipal] | None:
        raw = self.raw_token(request)
        if raw is None:
            return None
        token = self._active_token(raw)
        NodeToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
        return AnonymousUser(), NodePrincipal(token)

    @staticmethod
    def _active_token(raw: str) -> NodeToken:
        prefix = token_prefix(raw, kind=NODE_TOKEN_KIND)
        token = (
            NodeToken.objects.select_related("institution").filter(prefix=prefix).first()
            if prefix
            else None
        )
        if token is None or not digest_matches(raw, token.digest):
            raise exceptions.AuthenticationFailed("unknown node token")
        if not token.active:
            raise exceptions.AuthenticationFailed("this node token was revoked or has expired")
        return token
