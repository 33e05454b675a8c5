"""Thin HTML views for studies, invitations and approvals; the reads and writes live in
selectors and services, and objects you may not see are a 404."""

from __future__ import annotations

import json

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import NoReverseMatch, reverse
from django.views.decorators.http import require_POST

from core.errors import CohortError
from core.views import not_found_as_404
from institutions.models import Institution
from institutions.selectors import is_researcher
from privacy.selectors import study_preflight_for_user
from studies.forms import DecisionForm, InviteForm, StudyCreateForm
from studies.selectors import (
    approval_count,
    enrollment_get_for_steward,
    enrollments_of_steward,
    min_hospitals,
    studies_visible_to,
    study_enrollments,
    study_get_for_user,
)
from studies.services import enrollment_decide, study_create, study_invite


def _url(name: str, pk: int) -> str | None:
    """Links into the runs app, which may take the id in the path or in the form."""
    for args in ([pk], []):
        try:
            return reverse(name, args=args)
        except NoReverseMatch:
            continue
    return None


@login_required
def study_list(request: HttpRequest) -> HttpResponse:
    studies = studies_visible_to(user=request.user).select_related("owner")
    return render(
        request,
        "studies/study_list.html",
        {"studies": studies, "can_create": is_researcher(request.user)},
    )


@login_required
def study_create_view(request: HttpRequest) -> HttpResponse:
    if not is_researcher(request.user):
        raise Http404("only researchers create studies")
    form = StudyCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            study = study_create(
                owner=request.user,  # type: ignore[arg-type]
                title=form.cleaned_data["title"],
                slug=form.cleaned_data["slug"],
                protocol=form.protocol(),
            )
        except CohortError as error:
            form.add_service_errors(error.fields, error.message)
        else:
            messages.success(request, f"Study '{study.slug}' created as a draft.")
            return redirect("studies:detail", study_id=study.pk)
    return render(request, "studies/study_create.html", {"form": form})


@login_required
@not_found_as_404
def study_detail(request: HttpRequest, study_id: int) -> HttpResponse:
    study = study_get_for_user(user=request.user, study_id=study_id)
    is_owner = study.owner_id == request.user.pk
    enrolled = study.enrollments.values_list("institution_id", flat=True)
    available = Institution.objects.exclude(pk__in=enrolled)
    context = {
        "study": study,
        "is_owner": is_owner,
        "protocol_json": json.dumps(study.protocol, indent=2, sort_keys=True),
        "enrollments": study_enrollments(study=study),
        "approvals": approval_count(study=study),
        "min_hospitals": min_hospitals(study=study),
        "invite_form": InviteForm(available=available) if is_owner else None,
        "can_invite": is_owner and study.state in ("draft", "recruiting", "ready"),
        "runs": [(run, _url("runs:detail", run.pk)) for run in study.runs.all()],
        "start_run_url": _url("runs:start", study.pk) if study.state == "ready" else None,
        "preflight": study_preflight_for_user(study=study, user=request.user),
    }
    return render(request, "studies/study_detail.html", context)


@login_required
@require_POST
@not_found_as_404
def study_invite_view(request: HttpRequest, study_id: int) -> HttpResponse:
    study = study_get_for_user(user=request.user, study_id=study_id)
    enrolled = study.enrollments.values_list("institution_id", flat=True)
    form = InviteForm(request.POST, available=Institution.objects.exclude(pk__in=enrolled))
    if not form.is_valid():
        messages.error(request, "Choose at least one hospital that is not invited yet.")
        return redirect("studies:detail", study_id=study.pk)
    try:
        study_invite(
            study=study,
            institutions=form.cleaned_data["institutions"],
            actor=request.user,  # type: ignore[arg-type]
        )
    except CohortError as error:
        messages.error(request, error.message)
    else:
        messages.success(request, "Hospitals invited.")
    return redirect("studies:detail", study_id=study.pk)


@login_required
def invitations(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "studies/invitations.html",
        {"enrollments": enrollments_of_steward(user=request.user)},
    )


@login_required
@not_found_as_404
def enrollment_decide_view(request: HttpRequest, enrollment_id: int) -> HttpResponse:
    enrollment = enrollment_get_for_steward(user=request.user, enrollment_id=enrollment_id)
    study = enrollment.study
    form = DecisionForm(request.POST or None, initial={"protocol_sha256": study.protocol_sha256})
    if request.method == "POST" and form.is_valid():
        try:
            enrollment_decide(
                enrollment=enrollment,
                steward=request.user,  # type: ignore[arg-type]
                approve=form.cleaned_data["decision"] == "approve",
                protocol_sha256=form.cleaned_data["protocol_sha256"],
                comment=form.cleaned_data["comment"],
            )
        except CohortError as error:
            messages.error(request, error.message)
            return redirect("studies:decide", enrollment_id=enrollment.pk)
        messages.success(request, f"Decision recorded for {enrollment.institution.name}.")
        return redirect("studies:invitations")
    context = {
        "enrollment": enrollment,
        "study": study,
        "form": form,
        "protocol_json": json.dumps(study.protocol, indent=2, sort_keys=True),
    }
    return render(request, "studies/enrollment_decide.html", context)
