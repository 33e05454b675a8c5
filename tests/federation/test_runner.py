"""federation.runner.follow against a fake Control API and clock: when Flower's status is read."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from federation import runner
from federation.control import RunStatus


@dataclass
class Clock:
    """Stands in for runner's `time`: each sleep passes at once, and the run writes the events
    due by then."""

    results: Path
    due: list[tuple[float, dict[str, object]]]
    now: float = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        while self.due and self.due[0][0] <= self.now:
            _, event = self.due.pop(0)
            with self.results.open("a") as sink:
                sink.write(json.dumps(event) + "\n")


@dataclass
class Control:
    clock: Clock
    finished_at: float
    asked_at: list[float] = field(default_factory=list)

    def status(self, run_id: int) -> RunStatus:
        self.asked_at.append(self.clock.now)
        state = "finished:completed" if self.clock.now >= self.finished_at else "running"
        return RunStatus(run_id, state, "")


def follow_run(tmp_path: Path, monkeypatch, *, due, finished_at: float):
    clock = Clock(tmp_path / "results.jsonl", due=list(due))
    monkeypatch.setattr(runner, "time", clock)
    control = Control(clock, finished_at=finished_at)
    outcome = runner.follow(
        control,  # type: ignore[arg-type]
        7,
        clock.results,
        on_event=lambda event: None,
        timeout_s=3600,
    )
    return outcome, control


def test_a_run_that_keeps_reporting_is_not_asked_for_its_status(tmp_path, monkeypatch):
    rounds = [(2.0 * r, {"event": "round", "round": r}) for r in range(1, 30)]
    finished = [(60.0, {"event": "run-finished", "status": "completed", "reason": ""})]

    outcome, control = follow_run(tmp_path, monkeypatch, due=rounds + finished, finished_at=60)

    assert len(outcome.rounds) == 29 and outcome.status.succeeded
    assert control.asked_at == [60.0]  # only once its report said it had finished


def test_a_run_that_goes_quiet_is_asked_every_status_poll(tmp_path, monkeypatch):
    rounds = [(1.0, {"event": "round", "round": 1})]

    outcome, control = follow_run(tmp_path, monkeypatch, due=rounds, finished_at=35)

    assert outcome.status.succeeded and len(outcome.rounds) == 1
    quiet_from = 1.0
    assert control.asked_at == pytest.approx(
        [quiet_from + runner.REPORT_QUIET_S * n for n in (1, 2, 3, 4)]
    )
