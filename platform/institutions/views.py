"""Thin HTML views for hospitals; a hospital you may not see is a 404."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from core.views import not_found_as_404
from institutions.selectors import institution_get_for_user, institutions_visible_to, stewards_of
from studies.selectors import studies_visible_to


@login_required
def institution_list(request: HttpRequest) -> HttpResponse:
    institutions = institutions_visible_to(user=request.user)
    return render(request, "institutions/institution_list.html", {"institutions": institutions})


@login_required
@not_found_as_404
def institution_detail(request: HttpRequest, slug: str) -> HttpResponse:
    institution = institution_get_for_user(user=request.user, slug=slug)
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
