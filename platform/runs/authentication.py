"""API authentication for the aggregator reporting a run: `Authorization: Run <token>`."""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth.models import AnonymousUser
from rest_framework import exceptions
from rest_framework.request import Request

from core.authentication import KeywordTokenAuthentication
from core.tokens import digest_matches, token_prefix
from runs.models import Run

RUN_TOKEN_KIND = "run"  # noqa: S105 - the token kind, not a secret


@dataclass(frozen=True)
class RunPrincipal:
    """The ServerApp of exactly one run; it may report that run's events and nothing else."""

    run: Run


class RunTokenAuthentication(KeywordTokenAuthentication):
    keyword = "Run"

    def authenticate(self, request: Request) -> tuple[AnonymousUser, RunPrincipal] | None:
        raw = self.raw_token(request)
        if raw is None:
            return None
        prefix = token_prefix(raw, kind=RUN_TOKEN_KIND)
        run = Run.objects.filter(token_prefix=prefix).first() if prefix else None
        if run is None or not digest_matches(raw, run.token_digest):
            raise exceptions.AuthenticationFailed("unknown run token")
        if run.finished:
            raise exceptions.AuthenticationFailed("this run has finished; its token is spent")
        return AnonymousUser(), RunPrincipal(run)
