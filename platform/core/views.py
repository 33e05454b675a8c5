"""The dashboard: each role's first page (thin view; the reads live in core.selectors)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from core.errors import error_body
from core.selectors import dashboard_for_user


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
