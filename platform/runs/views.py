"""Thin HTML views for runs: start, the live run page and its fragment, cancel, release.

Reads and writes live in runs.selectors and runs.services; a run you may not see is a 404.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_GET, require_POST

from core.errors import CohortError
from core.views import not_found_as_404
from institutions.models import Institution
from runs import charts
from runs.models import Run
from runs.selectors import (
    release_approvable_institutions,
    release_get_for_download,
    run_can_manage,
    run_get_for_user,
    run_summary,
)
from runs.services import release_approve, run_cancel, run_start
from studies.selectors import study_get_for_user

LIVE_POLL_MS = 2000


def _live_context(request: HttpRequest, run: Run) -> dict[str, Any]:
    summary = run_summary(run=run)
    return {
        "run": run,
        "summary": summary,
        "can_manage": run_can_manage(run=run, user=request.user),
        "approvable": list(release_approvable_institutions(run=run, user=request.user)),
        # Server-side SVG built from escaped values only (runs.charts).
        "metrics_chart": mark_safe(charts.metrics_chart(summary.rounds)),  # noqa: S308
        "epsilon_chart": mark_safe(charts.epsilon_chart(summary.rounds)),  # noqa: S308
        "live_poll_ms": LIVE_POLL_MS,
    }


@login_required
@require_POST
@not_found_as_404
def run_start_view(request: HttpRequest, study_id: int) -> HttpResponse:
    study = study_get_for_user(user=request.user, study_id=study_id)
    try:
        run = run_start(study=study, actor=request.user)  # type: ignore[arg-type]
    except CohortError as error:
        messages.error(request, error.message)
        return redirect("studies:detail", study_id=study.pk)
    messages.success(request, f"Run {run.pk} queued; the worker submits it to the federation.")
    return redirect("runs:detail", run_id=run.pk)


@login_required
@require_GET
@not_found_as_404
def run_detail(request: HttpRequest, run_id: int) -> HttpResponse:
    run = run_get_for_user(user=request.user, run_id=run_id)
    return render(request, "runs/run_detail.html", _live_context(request, run))


@login_required
@require_GET
@not_found_as_404
def run_live(request: HttpRequest, run_id: int) -> HttpResponse:
    """The live part of the run page, fetched every few seconds until the run finished."""
    run = run_get_for_user(user=request.user, run_id=run_id)
    response = render(request, "runs/_live.html", _live_context(request, run))
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_POST
@not_found_as_404
def run_cancel_view(request: HttpRequest, run_id: int) -> HttpResponse:
    run = run_get_for_user(user=request.user, run_id=run_id)
    try:
        run_cancel(run=run, actor=request.user, reason=request.POST.get("reason", "")[:500])  # type: ignore[arg-type]
    except CohortError as error:
        messages.error(request, error.message)
    else:
        messages.success(request, f"Run {run.pk} cancelled.")
    return redirect("runs:detail", run_id=run.pk)


@login_required
@require_POST
@not_found_as_404
def release_approve_view(request: HttpRequest, run_id: int) -> HttpResponse:
    run = run_get_for_user(user=request.user, run_id=run_id)
    slug = request.POST.get("institution", "")
    institution = Institution.objects.filter(slug=slug).first() if slug else None
    if slug and institution is None:
        messages.error(request, f"No hospital '{slug}' takes part in run {run.pk}.")
        return redirect("runs:detail", run_id=run.pk)
    try:
        approval = release_approve(run=run, actor=request.user, institution=institution)  # type: ignore[arg-type]
    except CohortError as error:
        messages.error(request, error.message)
    else:
        messages.success(request, f"{approval.institution} approved the release of run {run.pk}.")
    return redirect("runs:detail", run_id=run.pk)


@login_required
@require_GET
@not_found_as_404
def model_download(request: HttpRequest, run_id: int) -> HttpResponse:
    run = run_get_for_user(user=request.user, run_id=run_id)
    release = release_get_for_download(run=run, user=request.user)
    return model_response(release.parameters, study_slug=run.study.slug, run_id=run.pk)


def model_response(parameters: bytes | memoryview, *, study_slug: str, run_id: int) -> HttpResponse:
    response = HttpResponse(bytes(parameters), content_type="application/octet-stream")
    response["Content-Disposition"] = f'attachment; filename="{study_slug}-run-{run_id}.npz"'
    return response
