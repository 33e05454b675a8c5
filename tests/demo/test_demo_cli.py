"""`make demo` end to end, shortened to two rounds: the real command in its own process.

Portal (SQLite, embedded Redis, Celery worker, web server), SuperLink and SuperNodes all start
for real; the test reads what the demo wrote.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from federation.deployment import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEMO = Path(sys.executable).parent / "cohort-demo"


def test_the_demo_runs_a_study_through_the_portal_and_writes_its_report(tmp_path):
    port = free_port()
    completed = subprocess.run(
        [str(DEMO), "--out", str(tmp_path), "--rounds", "2", "--port", str(port)],
        env={**os.environ, "DEMO_SERVE": "0", "DJANGO_SETTINGS_MODULE": "portal.settings.dev"},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "Released" in completed.stdout

    report = json.loads((tmp_path / "report.json").read_text())
    assert report["run"]["status"] == "completed"
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    assert set(report["rounds"][-1]["epsilon"]) == {"hospital-a", "hospital-b", "hospital-c"}
    assert set(report["final"]) >= {"federated", "local_only", "centralized", "test_rows"}
    assert report["final"]["federated"]["roc_auc"] > 0.85
    for hospital, privacy in report["privacy"].items():
        assert privacy["accountant"] == "rdp", hospital
        assert privacy["conversion"] == "rdp-balle2020", hospital
        assert 2.9 < privacy["epsilon"] <= 3.0 * 1.001, hospital
        # The portal's preflight projected exactly what the node's ledger then spent.
        assert privacy["projected_epsilon"] == pytest.approx(privacy["epsilon"], abs=1e-9)
        # Trained on the consent snapshot the portal served, not under a waiver.
        assert re.fullmatch(r"[0-9a-f]{64}", privacy["consent"]), hospital
    assert report["aggregator"]["has_secret_key"] is False
    assert report["aggregator"]["decrypt_attempt"].startswith("refused by TenSEAL")
    assert (tmp_path / "report.html").read_text().count("data:image/png;base64,") == 2
    assert_no_patient_id_left_a_node(tmp_path)


def assert_no_patient_id_left_a_node(out: Path) -> None:
    """Every request each node made to the portal (consent import, snapshots every round, reports,
    release), as its outbound transcript recorded it before sending: no patient id in any."""
    patient_ids = {
        patient_id
        for data in (out / "data").glob("hospital-*.csv")
        for patient_id in pd.read_csv(data, usecols=["patient_id"], dtype=str)["patient_id"]
    }
    transcripts = sorted((out / "nodes").glob("*/outbound.jsonl"))
    assert len(transcripts) == 3
    for transcript in transcripts:
        requests = [json.loads(line) for line in transcript.read_text().splitlines()]
        endpoints = {request["path"].split("/")[-2] for request in requests}
        expected = {"forms", "records", "heartbeat", "ledger", "protocols", "readiness", "snapshot"}
        if transcript.parent.name == "hospital-a":  # the key holder, which uploads the release
            expected |= {"he-context", "release"}
        assert endpoints == expected, transcript
        sent = transcript.read_text()
        assert len(patient_ids) > 400 and not [p for p in patient_ids if p in sent], transcript
