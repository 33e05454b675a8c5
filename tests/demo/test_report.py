from __future__ import annotations

import base64
import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from demo.report import epsilon_plot, metrics_plot, render_html, write_report

HOSPITALS = ["hospital-a", "hospital-b", "hospital-c"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def sample_report(*, rounds: int = 5) -> dict[str, Any]:
    """A completed run where hospital-c sat round 3 out and round 1 had no defined AUC."""
    summaries = []
    for number in range(1, rounds + 1):
        present = [h for h in HOSPITALS if not (number == 3 and h == "hospital-c")]
        summaries.append(
            {
                "round": number,
                "participants": present,
                "dropped": {"hospital-c": "no reply within 60 s"} if number == 3 else {},
                "metrics": {
                    "loss": round(0.6 - 0.05 * number, 3),
                    "accuracy": round(0.8 + 0.02 * number, 3),
                    "roc_auc": None if number == 1 else round(0.85 + 0.02 * number, 3),
                },
                "epsilon": {
                    h: round(2.99 / rounds * (number - (h == "hospital-c" and number > 3)), 2)
                    for h in present
                },
                "bytes_up": {h: 530_000 + i for i, h in enumerate(present)},
                "bytes_down": 530_000,
                "seconds": 14.2,
            }
        )
    privacy = {
        h: {
            "accountant": "rdp",
            "delta": 1e-05,
            "epsilon": 2.99 if h != "hospital-c" else 2.41,
            "target_epsilon": 3.0,
            "noise_multiplier": 1.1,
            "sample_rate": 0.14,
            "steps": 35,
            "rounds": rounds,
        }
        for h in HOSPITALS
    }
    return {
        "generated_at": "2026-11-23T11:20:00+00:00",
        "study": {
            "study_id": "breast-cancer-demo",
            "protocol": {
                "study_id": "breast-cancer-demo",
                "rounds": rounds,
                "privacy": {"target_epsilon": 3.0},
            },
            "protocol_sha256": "0123456789abcdef" * 4,
            "hospitals": HOSPITALS,
        },
        "run": {"run_id": "123", "status": "completed", "reason": "", "wall_seconds": 95.4},
        "rounds": summaries,
        "final": {
            "test_rows": 114,
            "federated": {"loss": 0.2345, "accuracy": 0.9386, "roc_auc": 0.98765},
            "local_only": {
                "hospital-a": {"loss": 0.31, "accuracy": 0.9, "roc_auc": 0.95},
                "hospital-b": {"loss": 0.35, "accuracy": 0.88, "roc_auc": None},
                "hospital-c": {"loss": 0.4, "accuracy": 0.85, "roc_auc": 0.93},
            },
            "centralized": {"loss": 0.1, "accuracy": 0.97, "roc_auc": 0.995},
        },
        "privacy": privacy,
        "aggregator": {
            "he_context_fingerprint": "ab12" * 16,
            "he_context_bytes": 120_345,
            "has_secret_key": False,
            "decrypt_attempt": "refused: the context holds no secret key",
        },
        "encryption": {
            "params": {
                "poly_modulus_degree": 8192,
                "coeff_mod_bit_sizes": [60, 40, 40, 60],
                "global_scale_bits": 40,
            },
            "update_bytes": 530_000,
            "float32_bytes": 4_000,
            "expansion": 132.5,
            "parameters": 1_000,
        },
    }


def images(page: str) -> list[bytes]:
    return [
        base64.b64decode(data)
        for data in re.findall(r'<img src="data:image/png;base64,([^"]+)"', page)
    ]


def test_write_report_writes_the_json_as_given_and_a_readable_page(tmp_path: Path) -> None:
    report = sample_report()
    given = copy.deepcopy(report)

    json_path, html_path = write_report(report, out_dir=tmp_path / "var" / "demo")

    assert (json_path, html_path) == (
        tmp_path / "var/demo/report.json",
        tmp_path / "var/demo/report.html",
    )
    assert report == given
    text = json_path.read_text(encoding="utf-8")
    assert json.loads(text) == report
    assert text == json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    page = html_path.read_text(encoding="utf-8")
    for name in HOSPITALS:
        assert name in page
    # The common test set, formatted: AUC and loss to 3 places, accuracy as a percentage.
    assert "0.988" in page and "93.9%" in page and "0.234" in page
    assert "0.995" in page and "97.0%" in page
    assert re.search(r'<tr class="highlight"><td>Federated, DP \+ HE', page)
    assert "Results on the common test set" in page
    pngs = images(page)
    assert len(pngs) == 2
    assert all(png.startswith(PNG_MAGIC) for png in pngs)


def test_page_is_self_contained(tmp_path: Path) -> None:
    page = render_html(sample_report())

    assert "<style>" in page
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "<script" not in page.lower()


def test_every_string_is_escaped() -> None:
    report = sample_report()
    evil = "<script>alert(1)</script>"
    report["study"]["study_id"] = evil
    report["study"]["hospitals"] = [*HOSPITALS, '"><img src=x onerror=alert(2)>']
    report["run"]["run_id"] = "<b>1</b>"
    report["aggregator"]["decrypt_attempt"] = f"refused: {evil}"
    report["rounds"][0]["dropped"] = {"<i>x</i>": evil}

    page = render_html(report)

    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "onerror=alert(2)>" not in page
    assert "<b>1</b>" not in page and "<i>x</i>" not in page


def test_failed_run_shows_the_reason_and_no_results() -> None:
    report = sample_report(rounds=2)
    del report["final"]
    report["run"].update(
        status="failed", reason="only 1 hospital node(s) connected; the study needs 2"
    )

    page = render_html(report)

    assert "only 1 hospital node(s) connected; the study needs 2" in page
    assert 'class="alert"' in page
    assert "Results on the common test set" not in page
    assert len(images(page)) == 2


def test_failed_run_before_any_round_renders_without_plots() -> None:
    report = {
        "generated_at": "2026-11-23T11:20:00+00:00",
        "study": {"study_id": "s", "hospitals": HOSPITALS},
        "run": {
            "run_id": "9",
            "status": "failed",
            "reason": "SuperLink did not start",
            "wall_seconds": 3.0,
        },
        "rounds": [],
        "privacy": {},
        "aggregator": {},
        "encryption": {},
    }

    page = render_html(report)

    assert "SuperLink did not start" in page
    assert images(page) == []
    assert "No round completed" in page


def test_missing_and_none_values_read_as_a_dash() -> None:
    report = sample_report(rounds=2)
    report["final"]["federated"] = {"loss": None}
    report["rounds"][1]["metrics"] = {}
    report["rounds"][1].pop("seconds")
    report["privacy"]["hospital-a"] = {"accountant": "rdp"}
    report["encryption"]["expansion"] = None

    page = render_html(report)

    assert re.search(r'<tr class="highlight"><td>Federated.*?</tr>', page)
    federated_row = re.search(r'<tr class="highlight">(.*?)</tr>', page)
    assert federated_row is not None
    assert federated_row.group(1).count("–") == 3
    assert len(images(page)) == 2


def test_nan_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    report = sample_report()
    report["final"]["federated"]["loss"] = float("nan")

    with pytest.raises(ValueError, match="JSON"):
        write_report(report, out_dir=tmp_path)

    assert list(tmp_path.iterdir()) == []


def test_plots_leave_gaps_for_rounds_a_hospital_sat_out() -> None:
    report = sample_report()

    assert epsilon_plot(report["rounds"], HOSPITALS, [3.0]).startswith(PNG_MAGIC)
    all_missing = [{"round": 1, "metrics": {"roc_auc": None}, "epsilon": {}}]
    assert metrics_plot(all_missing).startswith(PNG_MAGIC)
    assert epsilon_plot(all_missing, [], []).startswith(PNG_MAGIC)
