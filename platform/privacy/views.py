"""Thin HTML views for privacy budgets; which ledgers a user sees is privacy.selectors' decision."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_GET

from institutions.selectors import institutions_of_steward, is_admin
from privacy.charts import lifetime_chart
from privacy.selectors import privacy_budgets_for_user


@login_required
@require_GET
def privacy_overview(request: HttpRequest) -> HttpResponse:
    budgets = privacy_budgets_for_user(user=request.user)
    charts = {
        dataset.mirror.pk: mark_safe(lifetime_chart(dataset.mirror, dataset.points))  # noqa: S308 - escaped SVG (runs.charts)
        for group in budgets
        for dataset in group.datasets
    }
    context = {
        "budgets": [
            (group, [(dataset, charts[dataset.mirror.pk]) for dataset in group.datasets])
            for group in budgets
        ],
        "is_admin": is_admin(request.user),
        "is_steward": institutions_of_steward(user=request.user).exists(),
    }
    return render(request, "privacy/overview.html", context)
