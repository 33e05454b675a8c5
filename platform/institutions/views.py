"""Thin HTML views for hospitals; a hospital you may not see is a 404."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from core.errors import NotFoundError
from institutions.selectors import institution_get_for_user, institutions_visible_to, stewards_of
from studies.selectors import studies_visible_to


@login_required
def institution_list(request: HttpRequest) -> HttpResponse:
    institutions = institutions_visible_to(user=request.user)
    return render(request, "institutions/institution_list.html", {"institutions": institutions})


@login_required
def institution_detail(request: HttpRequest, slug: str) -> HttpResponse:
    try:
        institution = institution_get_for_user(user=request.user, slug=slug)
    except NotFoundError as error:
        raise Http404(error.message) from error
    enrollments = institution.enrollments.filter(
        study__in=studies_visible_to(user=request.user)
    ).select_related("study")
    context = {
        "institution": institution,
        "online": institution.node_online(),
        "stewards": stewards_of(institution=institution),
        "enrollments": enrollments,
    }
    return render(request, "institutions/institution_detail.html", context)
