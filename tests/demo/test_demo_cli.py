"""`make demo` end to end, shortened to two rounds: real deployment, report files, exit code."""

from __future__ import annotations

import json

import pytest

from demo.cli import main

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_the_demo_runs_a_study_and_writes_its_report(tmp_path):
    assert main(["--out", str(tmp_path), "--rounds", "2"]) == 0

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
    html = (tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2
