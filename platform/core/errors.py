"""One error hierarchy for the portal, with a machine-readable code, an HTTP status and fields.

Services raise these; the API maps them to one JSON shape in `api_exception_handler`, and views
show their message. Messages say what was wrong and what to do.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler


class CohortError(Exception):
    code = "error"
    status = 400

    def __init__(self, message: str, *, fields: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields or {}


class ValidationError(CohortError):
    code = "invalid"
    status = 400


class NotAllowedError(CohortError):
    code = "forbidden"
    status = 403


class NotFoundError(CohortError):
    code = "not_found"
    status = 404


class ConflictError(CohortError):
    """The object's current state does not allow the action (e.g. an invalid study transition)."""

    code = "conflict"
    status = 409


class PayloadTooLargeError(CohortError):
    """The request body is bigger than this endpoint accepts."""

    code = "too_large"
    status = 413


def error_body(code: str, message: str, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "fields": fields or {}}}


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Every API error in one shape: {"error": {"code", "message", "fields"}}."""
    if isinstance(exc, CohortError):
        return Response(error_body(exc.code, exc.message, exc.fields), status=exc.status)
    if isinstance(exc, Http404):
        exc = drf_exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = drf_exceptions.PermissionDenied()
    response = exception_handler(exc, context)
    if response is None or not isinstance(exc, drf_exceptions.APIException):
        return response
    fields = response.data if isinstance(exc, drf_exceptions.ValidationError) else {}
    message = "the request is invalid" if fields else str(exc.detail)
    response.data = error_body(exc.default_code, message, fields)
    return response
