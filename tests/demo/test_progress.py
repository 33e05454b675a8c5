from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from demo.progress import ProgressState, RunProgress, render


def run_started(rounds: int = 3) -> dict[str, Any]:
    return {
        "event": "run-started",
        "study_id": "breast-cancer-demo",
        "run_id": "123",
        "rounds": rounds,
        "min_hospitals": 2,
        "aggregator": {
            "he_context_fingerprint": "ab12cd34ef56ab12cd34",
            "he_context_bytes": 120,
            "has_secret_key": False,
        },
        "at": "2026-11-23T11:00:00+00:00",
    }


def hospital(name: str, *, epsilon: float, bytes_up: int = 530_000) -> dict[str, Any]:
    return {
        "hospital": name,
        "epsilon": epsilon,
        "noise_multiplier": 1.3,
        "sample_rate": 0.14,
        "steps": 7,
        "delta": 1e-05,
        "accountant": "rdp",
        "rows_rounded": 180,
        "bytes_up": bytes_up,
        "train_seconds": 0.8,
        "metrics": {"loss": 0.4, "accuracy": 0.9, "roc_auc": 0.96},
    }


def round_event(number: int, *, dropped: dict[str, str] | None = None) -> dict[str, Any]:
    names = ["hospital-a", "hospital-b", "hospital-c"]
    present = [n for n in names if n not in (dropped or {})]
    return {
        "event": "round",
        "round": number,
        "participants": present,
        "dropped": dropped or {},
        "metrics": {
            "loss": 0.5 - 0.1 * number,
            "accuracy": 0.8 + 0.05 * number,
            "roc_auc": None if number == 1 else 0.9 + 0.02 * number,
        },
        "hospitals": [hospital(n, epsilon=0.9 * number + i / 100) for i, n in enumerate(present)],
        "bytes_down": 530_000,
        "seconds": 14.25,
        "at": "2026-11-23T11:01:00+00:00",
    }


def sample_events() -> list[dict[str, Any]]:
    return [
        run_started(),
        round_event(1),
        round_event(
            2, dropped={"hospital-c": "no reply within 60 s while training the local model"}
        ),
        round_event(3),
        {
            "event": "run-finished",
            "status": "completed",
            "reason": "",
            "at": "2026-11-23T11:05:00+00:00",
        },
    ]


def text_of(state: ProgressState) -> str:
    console = Console(file=io.StringIO(), width=120, color_system=None)
    console.print(render(state))
    output = console.file
    assert isinstance(output, io.StringIO)
    return output.getvalue()


def row_of(text: str, number: int) -> str:
    return next(line for line in text.splitlines() if line.strip().startswith(f"{number} "))


def test_each_round_gets_a_row_with_its_figures() -> None:
    state = ProgressState(study_id="breast-cancer-demo", rounds=3)
    for event in sample_events():
        state.apply(event)

    text = text_of(state)

    assert "breast-cancer-demo" in text and "run 123" in text
    assert "no secret key" in text
    assert "3/3 rounds" in text
    first = row_of(text, 1)
    assert first.split()[:4] == ["1", "3", "–", "–"]  # no one dropped, AUC undefined
    assert (
        "85.0%" in first
        and "0.400" in first
        and "0.92" in first
        and "1.59" in first
        and "14.2" in first
    )
    second = row_of(text, 2)
    assert "hospital-c (no reply within 60 s wh…)" in second
    assert second.split()[1] == "2"
    assert "0.940" in second and "1.06" in second
    assert "2.72" in row_of(text, 3)
    assert "✓ completed" in text


def test_status_follows_the_run() -> None:
    state = ProgressState(study_id="s", rounds=5)
    assert "waiting for hospitals" in text_of(state)
    state.apply(run_started(rounds=5))
    assert "waiting for hospitals (at least 2)" in text_of(state)
    state.apply(round_event(1))
    assert "round 2 of 5…" in text_of(state)
    state.apply({"event": "run-finished", "status": "failed", "reason": "hospital-b left"})
    assert "failed: hospital-b left" in text_of(state)


@pytest.mark.parametrize(
    "event",
    [
        {},
        {"event": "run-started"},
        {"event": "round"},
        {
            "event": "round",
            "round": 2,
            "metrics": None,
            "hospitals": [{"hospital": "a"}],
            "dropped": None,
        },
        {
            "event": "round",
            "round": "two",
            "metrics": {"loss": "high", "roc_auc": float("nan")},
            "hospitals": "x",
        },
        {"event": "run-finished"},
        {"event": "something-new", "payload": [1, 2]},
    ],
)
def test_missing_or_malformed_fields_do_not_raise(event: dict[str, Any]) -> None:
    state = ProgressState(study_id="s", rounds=3)
    state.apply(run_started())

    state.apply(event)

    assert "s" in text_of(state)


def test_more_rounds_than_announced_grow_the_bar() -> None:
    state = ProgressState(study_id="s", rounds=2)
    for number in (1, 2, 3):
        state.apply(round_event(number))

    assert "3/3 rounds" in text_of(state)


def test_run_progress_leaves_the_final_table_on_screen() -> None:
    output = io.StringIO()
    console = Console(file=output, width=120, color_system=None)

    with RunProgress(console, study_id="breast-cancer-demo", rounds=3) as progress:
        progress.set_status("starting the federation…")
        for event in sample_events():
            progress.update(event)

    text = output.getvalue()
    for number in (1, 2, 3):
        assert row_of(text, number)
    assert "✓ completed" in text


def test_set_status_outside_a_live_display_only_records_it() -> None:
    progress = RunProgress(Console(file=io.StringIO()), study_id="s", rounds=1)

    progress.set_status("training comparison models…")

    assert "training comparison models…" in text_of(progress.state)
