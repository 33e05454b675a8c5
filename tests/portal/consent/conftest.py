"""A study with two enrolled hospitals, their nodes and stewards, and a published consent form."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from consent.models import ConsentForm
from consent.services import consent_form_publish
from institutions.models import Institution
from institutions.services import node_token_issue
from studies.models import Enrollment, Study
from tests.portal.factories import (
    AdminFactory,
    EnrollmentFactory,
    InstitutionFactory,
    StewardFactory,
    StudyFactory,
)


def node_client(institution: Institution) -> APIClient:
    _, raw = node_token_issue(institution=institution, label="node", actor=AdminFactory())
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Node {raw}")
    return client


def record(
    pseudonym: str,
    status: str = "granted",
    decided_at: str = "2026-01-02T09:00:00Z",
    form_version: int | None = 1,
) -> dict[str, Any]:
    return {
        "pseudonym": pseudonym,
        "status": status,
        "decided_at": decided_at,
        "form_version": form_version,
    }


def publish(study: Study, version_text: str = "I agree.") -> ConsentForm:
    return consent_form_publish(study=study, title="Consent", text=version_text, actor=study.owner)


@dataclass
class Registry:
    study: Study
    hospital_a: Institution
    hospital_b: Institution
    steward_a: User
    steward_b: User
    node_a: APIClient
    node_b: APIClient

    @property
    def researcher(self) -> User:
        return self.study.owner

    def records_url(self, slug: str | None = None) -> str:
        return f"/api/node/studies/{slug or self.study.slug}/consent/records/"

    def snapshot_url(self) -> str:
        return f"/api/node/studies/{self.study.slug}/consent/snapshot/"

    def forms_url(self) -> str:
        return f"/api/node/studies/{self.study.slug}/consent/forms/"

    def page_url(self) -> str:
        return f"/studies/{self.study.slug}/consent/"


@pytest.fixture
def registry(db: Any) -> Registry:
    study = StudyFactory(slug="sepsis-consent", state=Study.State.RECRUITING)
    hospital_a = InstitutionFactory(slug="hospital-a", name="Hospital A")
    hospital_b = InstitutionFactory(slug="hospital-b", name="Hospital B")
    EnrollmentFactory(study=study, institution=hospital_a, state=Enrollment.State.APPROVED)
    EnrollmentFactory(study=study, institution=hospital_b, state=Enrollment.State.INVITED)
    publish(study)
    return Registry(
        study=study,
        hospital_a=hospital_a,
        hospital_b=hospital_b,
        steward_a=StewardFactory(institution=hospital_a),
        steward_b=StewardFactory(institution=hospital_b),
        node_a=node_client(hospital_a),
        node_b=node_client(hospital_b),
    )
