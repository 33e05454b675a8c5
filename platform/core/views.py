"""The dashboard: each role's first page (thin view; the reads live in core.selectors)."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from core.errors import NotAllowedError, NotFoundError, error_body
from core.selectors import dashboard_for_user


def not_found_as_404(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Web views answer what a selector or service refused with the matching HTTP error page:
    not found (or not visible to this user) as 404, not allowed as 403."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            return view(request, *args, **kwargs)
        except NotFoundError as error:
            raise Http404(error.message) from error
        except NotAllowedError as error:
            raise PermissionDenied(error.message) from error

    return wrapper


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    return render(
        request, "core/dashboard.html", {"dashboard": dashboard_for_user(user=request.user)}
    )


def api_not_found(request: HttpRequest, path: str) -> JsonResponse:
    """Unknown paths under /api/ answer in the API's error shape, not with an HTML page."""
    hint = "" if path.endswith("/") else " (API paths end with a slash)"
    message = f"no API endpoint at /api/{path}{hint}; the endpoints are listed at /api/docs/"
    return JsonResponse(error_body("not_found", message), status=404)
