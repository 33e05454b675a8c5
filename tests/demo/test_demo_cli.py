"""`make demo` end to end, shortened to two rounds: the real command in its own process.

Portal (SQLite, embedded Redis, Celery worker, web server), SuperLink and SuperNodes all start
for real; the test reads what the demo wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
        assert 2.9 < privacy["epsilon"] <= 3.0 * 1.001, hospital
    assert report["aggregator"]["has_secret_key"] is False
    assert report["aggregator"]["decrypt_attempt"].startswith("refused by TenSEAL")
    assert (tmp_path / "report.html").read_text().count("data:image/png;base64,") == 2
