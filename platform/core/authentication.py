"""What the portal's bearer-token authenticators share: `Authorization: <Keyword> <token>`."""

from __future__ import annotations

from rest_framework import authentication, exceptions
from rest_framework.request import Request


class KeywordTokenAuthentication(authentication.BaseAuthentication):
    """Reads the raw token after `keyword`; subclasses resolve it to a principal."""

    keyword = ""

    def raw_token(self, request: Request) -> str | None:
        """The token, None when the request uses another scheme, or 401 when it is malformed."""
        header = authentication.get_authorization_header(request).decode("latin-1").split()
        if not header or header[0] != self.keyword:
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed(f"use 'Authorization: {self.keyword} <token>'")
        return header[1]

    def authenticate_header(self, request: Request) -> str:
        return self.keyword
