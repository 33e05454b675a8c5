"""The consent page of a study: forms and counts for everyone who sees the study, publishing for
its owner, and each steward's own hospital registry. A study you may not see is a 404; an action
on a registry you do not steward is a 403."""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Page, Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from consent.forms import ConsentFormPublishForm, ConsentSettingsForm, WithdrawForm
from consent.models import ConsentSnapshot
from consent.selectors import (
    ConsentRules,
    LatestRecord,
    RegistryEntry,
    consent_counts,
    consent_forms,
    consent_history,
    consent_rules,
    consent_snapshots,
    registry_entries,
    registry_institutions_of_steward,
    registry_pseudonyms,
    registry_totals,
    study_get_by_slug_for_user,
)
from consent.services import (
    consent_form_publish,
    consent_settings_update,
    consent_withdraw_by_steward,
)
from core.errors import CohortError, NotAllowedError
from core.views import not_found_as_404
from institutions.models import Institution
from studies.models import Study

REGISTRY_PAGE_SIZE = 50


@dataclass(frozen=True)
class RegistrySection:
    """One hospital's registry, as its stewards see it."""

    institution: Institution
    totals: dict[str, int]
    page: Page[LatestRecord]
    entries: list[RegistryEntry]
    snapshots: list[ConsentSnapshot]
    withdraw_form: WithdrawForm


def _registry_section(
    request: HttpRequest,
    study: Study,
    institution: Institution,
    rules: ConsentRules,
    withdraw_form: WithdrawForm | None,
) -> RegistrySection:
    search = request.GET.get("q", "")
    paginator = Paginator(
        registry_pseudonyms(study=study, institution=institution, search=search),
        REGISTRY_PAGE_SIZE,
    )
    page = paginator.get_page(request.GET.get("page"))
    return RegistrySection(
        institution=institution,
        totals=registry_totals(study=study, institution=institution, rules=rules),
        page=page,
        entries=registry_entries(latest=list(page.object_list), rules=rules),
        snapshots=list(consent_snapshots(study=study, institution=institution)[:20]),
        withdraw_form=withdraw_form or WithdrawForm(prefix=institution.slug),
    )


def _render_page(
    request: HttpRequest,
    study: Study,
    *,
    publish_form: ConsentFormPublishForm | None = None,
    withdraw_forms: dict[int, WithdrawForm] | None = None,
) -> HttpResponse:
    rules = consent_rules(study=study)
    is_owner = study.owner_id == request.user.pk
    withdraw_forms = withdraw_forms or {}
    registries = [
        _registry_section(request, study, institution, rules, withdraw_forms.get(institution.pk))
        for institution in registry_institutions_of_steward(user=request.user, study=study)
    ]
    context = {
        "study": study,
        "rules": rules,
        "is_owner": is_owner,
        "forms": consent_forms(study=study),
        "counts": consent_counts(study=study),
        "history": consent_history(study=study)[:200],
        "publish_form": (publish_form or ConsentFormPublishForm()) if is_owner else None,
        "settings_form": ConsentSettingsForm(
            initial={"requires_current_form": rules.requires_current}
        )
        if is_owner
        else None,
        "registries": registries,
        "search": request.GET.get("q", ""),
    }
    return render(request, "consent/consent_page.html", context)


@login_required
@require_GET
@not_found_as_404
def consent_page(request: HttpRequest, slug: str) -> HttpResponse:
    study = study_get_by_slug_for_user(user=request.user, slug=slug)
    return _render_page(request, study)


@login_required
@require_POST
@not_found_as_404
def consent_form_publish_view(request: HttpRequest, slug: str) -> HttpResponse:
    study = study_get_by_slug_for_user(user=request.user, slug=slug)
    form = ConsentFormPublishForm(request.POST)
    if form.is_valid():
        try:
            consent_form = consent_form_publish(
                study=study,
                title=form.cleaned_data["title"],
                text=form.cleaned_data["text"],
                actor=request.user,  # type: ignore[arg-type]
            )
        except NotAllowedError:
            raise
        except CohortError as error:
            form.add_error(None, error.message)
        else:
            messages.success(request, f"Consent form version {consent_form.version} published.")
            return redirect("consent:study", slug=study.slug)
    return _render_page(request, study, publish_form=form)


@login_required
@require_POST
@not_found_as_404
def consent_settings_view(request: HttpRequest, slug: str) -> HttpResponse:
    study = study_get_by_slug_for_user(user=request.user, slug=slug)
    form = ConsentSettingsForm(request.POST)
    form.is_valid()  # a single optional checkbox is always valid
    try:
        consent_settings_update(
            study=study,
            requires_current_form=form.cleaned_data["requires_current_form"],
            actor=request.user,  # type: ignore[arg-type]
        )
    except NotAllowedError:
        raise
    except CohortError as error:
        messages.error(request, error.message)
    else:
        messages.success(request, "Consent settings saved.")
    return redirect("consent:study", slug=study.slug)


@login_required
@require_POST
@not_found_as_404
def consent_withdraw_view(request: HttpRequest, slug: str, institution: str) -> HttpResponse:
    study = study_get_by_slug_for_user(user=request.user, slug=slug)
    hospital = (
        registry_institutions_of_steward(user=request.user, study=study)
        .filter(slug=institution)
        .first()
    )
    if hospital is None:
        raise PermissionDenied(
            f"you are not a data steward of '{institution}' in study '{study.slug}'"
        )
    form = WithdrawForm(request.POST, prefix=hospital.slug)
    if form.is_valid():
        try:
            record = consent_withdraw_by_steward(
                study=study,
                institution=hospital,
                pseudonym=form.cleaned_data["pseudonym"],
                steward=request.user,  # type: ignore[arg-type]
                reason=form.cleaned_data["reason"],
            )
        except NotAllowedError:
            raise
        except CohortError as error:
            form.add_service_error(error.fields, error.message)
        else:
            messages.success(
                request,
                f"Consent of {record.pseudonym[:12]}… withdrawn in {hospital.name}'s registry; "
                "the next snapshot its node pulls leaves the patient out.",
            )
            return redirect("consent:study", slug=study.slug)
    return _render_page(request, study, withdraw_forms={hospital.pk: form})
