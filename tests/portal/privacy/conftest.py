"""Node clients, real node ledgers and their reports, for the privacy tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient

from hospitals.dp import Accountant, PrivacyStep
from hospitals.ledger import PrivacyLedger
from hospitals.reporting import entry_report
from institutions.models import Institution
from institutions.services import node_token_issue
from tests.portal.factories import AdminFactory


def node_client(institution: Institution) -> APIClient:
    _, raw = node_token_issue(institution=institution, label="node", actor=AdminFactory())
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Node {raw}")
    return client


def step(noise: float = 1.1, *, sample_rate: float = 0.08, steps: int = 12) -> PrivacyStep:
    return PrivacyStep(
        sample_rate=sample_rate,
        noise_multiplier=noise,
        steps=steps,
        delta=1e-5,
        accountant=Accountant.RDP,
    )


def dataset_payload(
    ledger: PrivacyLedger,
    *,
    dataset_id: str = "data",
    cap: float = 10.0,
    delta: float = 1e-5,
    accountant: str = "rdp",
    min_cohort_size: int = 50,
) -> dict[str, Any]:
    """One dataset of a ledger report, as the node builds it from its own ledger."""
    return {
        "dataset_id": dataset_id,
        "max_lifetime_epsilon": cap,
        "delta": delta,
        "accountant": accountant,
        "min_cohort_size": min_cohort_size,
        "entries": [entry_report(entry) for entry in ledger.entries(dataset_id=dataset_id)],
    }


@pytest.fixture
def ledger(tmp_path: Path) -> PrivacyLedger:
    """A node's ledger with three runs of two studies on dataset 'data'."""
    ledger = PrivacyLedger(tmp_path / "privacy-ledger.sqlite3")
    for study_id, run_id, noise, rounds in [
        ("sepsis", "11", 1.1, 3),
        ("sepsis", "12", 1.3, 2),
        ("stroke", "13", 0.9, 2),
    ]:
        for number in range(1, rounds + 1):
            ledger.record(
                dataset_id="data",
                study_id=study_id,
                run_id=run_id,
                round_number=number,
                step=step(noise),
            )
    return ledger
