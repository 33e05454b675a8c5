import copy
import json

import pytest
from rest_framework.test import APIClient

from core.models import AuditEvent
from hospitals.dp import EPSILON_CONVERSIONS, Accountant, epsilon_of
from hospitals.node import NodeSettings
from hospitals.policy import NodePolicy
from privacy.models import LedgerMirror, MirrorEntry
from tests.portal.factories import InstitutionFactory, ResearcherFactory
from tests.portal.privacy.conftest import dataset_payload, node_client, step

pytestmark = pytest.mark.django_db
URL = "/api/node/ledger/"


@pytest.mark.parametrize("accountant", ["rdp", pytest.param("prv", marks=pytest.mark.slow)])
def test_the_portal_recomputes_the_epsilon_the_nodes_ledger_reports(ledger, accountant):
    hospital = InstitutionFactory()
    payload = {"datasets": [dataset_payload(ledger, cap=8.0, accountant=accountant)]}

    response = node_client(hospital).post(URL, payload, format="json")

    assert response.status_code == 200, response.json()
    lifetime = ledger.epsilon(dataset_id="data", delta=1e-5, accountant=Accountant(accountant))
    assert response.json() == {
        "datasets": [
            {
                "dataset_id": "data",
                "epsilon_spent": pytest.approx(lifetime, rel=1e-12),
                "max_lifetime_epsilon": 8.0,
                "accountant": accountant,
                "conversion": EPSILON_CONVERSIONS[Accountant(accountant)],
            }
        ]
    }
    mirror = LedgerMirror.objects.get(institution=hospital, dataset_id="data")
    assert mirror.epsilon_spent == pytest.approx(lifetime, rel=1e-12)
    assert mirror.entries.last().epsilon_after == mirror.epsilon_spent
    # Per study and per run, the node's own ε of that part of its ledger.
    by_run = {row["run_id"]: row["epsilon"] for row in mirror.subtotals["runs"]}
    by_study = {row["study_id"]: row["epsilon"] for row in mirror.subtotals["studies"]}
    for run_id in ("11", "12", "13"):
        assert by_run[run_id] == pytest.approx(
            ledger.epsilon(dataset_id="data", delta=1e-5, accountant=accountant, run_id=run_id),
            rel=1e-12,
        )
    for study_id in ("sepsis", "stroke"):
        assert by_study[study_id] == pytest.approx(
            ledger.epsilon(dataset_id="data", delta=1e-5, accountant=accountant, study_id=study_id),
            rel=1e-12,
        )


def test_each_entry_keeps_the_lifetime_epsilon_after_it(ledger):
    payload = {"datasets": [dataset_payload(ledger, delta=1e-6)]}
    assert node_client(InstitutionFactory()).post(URL, payload, format="json").status_code == 200

    # Accounted at the mirror's δ (the node policy's), whatever δ each round was planned at.
    history = [entry.step for entry in ledger.entries(dataset_id="data")]
    stored = list(LedgerMirror.objects.get().entries.values_list("epsilon_after", flat=True))
    assert stored == [
        pytest.approx(epsilon_of(history[: n + 1], delta=1e-6, accountant="rdp"), rel=1e-12)
        for n in range(len(history))
    ]
    assert stored == sorted(stored)


def test_the_nodes_own_report_is_accepted(ledger, tmp_path):
    from hospitals.reporting import ledger_report

    node = NodeSettings(
        hospital="hospital-a",
        data_path=tmp_path / "data.csv",
        state_dir=tmp_path,
        policy_path=tmp_path / "policy.toml",
        dataset_id="data",
    )
    report = ledger_report(node, NodePolicy(max_lifetime_epsilon=7.5))

    response = node_client(InstitutionFactory()).post(URL, report, format="json")

    assert response.status_code == 200, response.json()
    (dataset,) = response.json()["datasets"]
    assert dataset["epsilon_spent"] == pytest.approx(
        ledger.epsilon(dataset_id="data", delta=1e-5, accountant=Accountant.RDP), rel=1e-12
    )
    assert MirrorEntry.objects.count() == 7


def test_an_epsilon_sent_by_the_node_is_refused(ledger):
    payload = {"datasets": [dataset_payload(ledger)]}
    payload["datasets"][0]["entries"][2]["epsilon"] = 0.01
    payload["datasets"][0]["epsilon_spent"] = 0.01

    response = node_client(InstitutionFactory()).post(URL, payload, format="json")

    assert response.status_code == 400
    fields = response.json()["error"]["fields"]
    assert fields == {
        "datasets[0].entries[2].epsilon": ["unexpected field"],
        "datasets[0].epsilon_spent": ["unexpected field"],
    }
    assert not LedgerMirror.objects.exists()


def test_every_bad_field_is_named_and_nothing_is_written(ledger):
    hospital = InstitutionFactory()
    client = node_client(hospital)
    good = dataset_payload(ledger, dataset_id="data")
    assert client.post(URL, {"datasets": [good]}, format="json").status_code == 200
    before = LedgerMirror.objects.get()
    audits = AuditEvent.objects.count()

    replaced = copy.deepcopy(good)
    replaced["entries"] = replaced["entries"][:2]
    bad = copy.deepcopy(good)
    bad["dataset_id"] = "other"
    bad["delta"] = 2
    bad["accountant"] = "gaussian"
    bad["min_cohort_size"] = 0
    entries = bad["entries"]
    entries[0]["steps"] = 0
    entries[1]["sample_rate"] = 1.5
    entries[2]["noise_multiplier"] = "1.1"
    entries[3]["recorded_at"] = "2026-11-23T10:00:00"
    entries[4]["accountant"] = "moments"
    entries[5]["round"] = -1
    del entries[6]["run_id"]

    response = client.post(URL, {"datasets": [replaced, bad]}, format="json")

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert "nothing was recorded" in error["message"]
    fields = error["fields"]
    assert set(fields) == {
        "datasets[1].delta",
        "datasets[1].accountant",
        "datasets[1].min_cohort_size",
        "datasets[1].entries[0].steps",
        "datasets[1].entries[1].sample_rate",
        "datasets[1].entries[2].noise_multiplier",
        "datasets[1].entries[3].recorded_at",
        "datasets[1].entries[4].accountant",
        "datasets[1].entries[5].round",
        "datasets[1].entries[6].run_id",
    }
    assert fields["datasets[1].entries[1].sample_rate"] == [
        "sample_rate must be in (0, 1], got 1.5"
    ]
    assert fields["datasets[1].delta"] == ["must be a number in (0, 1), got 2"]
    assert fields["datasets[1].entries[6].run_id"] == ["this field is required"]
    # All or nothing: the valid dataset of the same report was not replaced either.
    after = LedgerMirror.objects.get()
    assert after.report_sha256 == before.report_sha256
    assert after.entries.count() == 7
    assert AuditEvent.objects.count() == audits


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], "body"),
        ({}, "datasets"),
        ({"datasets": {}}, "datasets"),
        ({"datasets": [1]}, "datasets[0]"),
        ({"datasets": [], "node": "x"}, "node"),
    ],
)
def test_malformed_bodies_are_refused(body, field):
    response = node_client(InstitutionFactory()).post(URL, body, format="json")
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]


def test_a_dataset_listed_twice_is_refused(ledger):
    payload = {"datasets": [dataset_payload(ledger), dataset_payload(ledger)]}
    response = node_client(InstitutionFactory()).post(URL, payload, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {
        "datasets[1].dataset_id": ["dataset 'data' is already listed at datasets[0]"]
    }


def test_an_unchanged_report_is_not_audited_and_a_new_round_costs_one_accounting(
    ledger, monkeypatch
):
    hospital = InstitutionFactory()
    client = node_client(hospital)
    payload = {"datasets": [dataset_payload(ledger)]}
    assert client.post(URL, payload, format="json").status_code == 200
    first = LedgerMirror.objects.get()

    calls = []

    def counting(steps, **kwargs):
        calls.append(len(steps))
        return epsilon_of(steps, **kwargs)

    monkeypatch.setattr("privacy.services.epsilon_of", counting)
    for _ in range(3):
        assert client.post(URL, payload, format="json").status_code == 200
    assert calls == []
    mirror = LedgerMirror.objects.get()
    assert mirror.reported_at > first.reported_at
    assert mirror.changed_at == first.changed_at
    assert AuditEvent.objects.filter(action="privacy.ledger_reported").count() == 1

    ledger.record(dataset_id="data", study_id="stroke", run_id="13", round_number=3, step=step(0.9))
    payload = {"datasets": [dataset_payload(ledger)]}
    response = client.post(URL, payload, format="json")

    assert response.status_code == 200
    # The new entry's cumulative ε, and the ε of its study (run 13 is all of study 'stroke', so
    # its ε is the same composition); everything else is reused.
    assert calls == [8, 3]
    events = AuditEvent.objects.filter(action="privacy.ledger_reported")
    assert events.count() == 2
    latest = events.first()
    assert latest.data["entries"] == 8
    assert latest.data["previous_sha256"] == first.report_sha256
    assert latest.actor_label == f"node:{hospital.slug}"
    assert response.json()["datasets"][0]["epsilon_spent"] == pytest.approx(
        ledger.epsilon(dataset_id="data", delta=1e-5, accountant=Accountant.RDP), rel=1e-12
    )


def test_a_mirror_is_per_hospital_and_a_report_replaces_only_its_datasets(ledger):
    a, b = InstitutionFactory(), InstitutionFactory()
    node_client(a).post(URL, {"datasets": [dataset_payload(ledger)]}, format="json")
    other = dataset_payload(ledger, dataset_id="other")
    node_client(b).post(URL, {"datasets": [other]}, format="json")
    empty = {**dataset_payload(ledger), "dataset_id": "second", "entries": []}
    node_client(a).post(URL, {"datasets": [empty]}, format="json")

    assert sorted(
        LedgerMirror.objects.values_list("institution__slug", "dataset_id", "epsilon_spent")
    ) == sorted(
        [
            (
                a.slug,
                "data",
                LedgerMirror.objects.get(institution=a, dataset_id="data").epsilon_spent,
            ),
            (a.slug, "second", 0.0),
            (b.slug, "other", 0.0),
        ]
    )


def test_oversized_reports_are_refused_before_parsing():
    body = json.dumps({"datasets": [], "padding": "x" * (4 * 1024 * 1024)})
    response = node_client(InstitutionFactory()).post(URL, body, content_type="application/json")
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"


def test_only_node_tokens_report_ledgers(ledger):
    payload = {"datasets": [dataset_payload(ledger)]}
    assert APIClient().post(URL, payload, format="json").status_code == 401
    session = APIClient()
    session.force_login(ResearcherFactory())
    assert session.post(URL, payload, format="json").status_code in (401, 403)
    assert not LedgerMirror.objects.exists()
