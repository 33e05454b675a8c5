"""Submit a study to a SuperLink and follow it to the end, event by event.

Progress comes from the aggregator's results sink (cheap to read); the Control API is asked for
the run's status only now and then and once the sink says the run finished, because every `flwr`
call starts a Python process.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aggregator.results import read_events
from federation.control import FlowerControl, RunStatus

EVENT_POLL_S = 0.5
# A run whose aggregator reported within this long is alive: Flower's status, a `flwr ls` costing
# about a second of CPU beside the run, is asked for only once the reports pause or say it ended.
REPORT_QUIET_S = 10.0


@dataclass(frozen=True)
class StudyRequest:
    """What a run needs: the protocol, the keyless HE context and where results go.

    With `results_url` and `results_token` the aggregator reports to the portal's events API
    instead of appending to `results_path`.
    """

    protocol_json: str
    aggregator_context: bytes
    results_path: Path
    join_timeout_s: int = 120
    results_url: str = ""
    results_token: str = ""
    weight_unit: int = 0  # round 1's weight unit for packed updates, e.g. from the preflight


@dataclass
class RunOutcome:
    run_id: int
    status: RunStatus
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rounds(self) -> list[dict[str, Any]]:
        return [event for event in self.events if event["event"] == "round"]

    @property
    def failure_reason(self) -> str:
        finished = [e for e in self.events if e["event"] == "run-finished"]
        reason = finished[-1]["reason"] if finished else ""
        return reason or self.status.details or self.status.status


def write_run_config(request: StudyRequest, path: Path) -> Path:
    """The run's overrides as TOML (JSON string escapes are valid TOML basic strings)."""
    values: dict[str, str | int] = {
        "protocol": request.protocol_json,
        "he-context": base64.b64encode(request.aggregator_context).decode("ascii"),
        "results-path": str(request.results_path.resolve()),
        "join-timeout-s": request.join_timeout_s,
        "weight-unit": request.weight_unit,
    }
    if request.results_url or request.results_token:
        values["results-url"] = request.results_url
        values["results-token"] = request.results_token
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items()))
    return path


def run_and_follow(
    control: FlowerControl,
    request: StudyRequest,
    *,
    on_event: Callable[[dict[str, Any]], None] = lambda event: None,
    timeout_s: float = 3600.0,
) -> RunOutcome:
    """Submit the study, pass each result event to `on_event` as it lands, return the outcome."""
    request.results_path.unlink(missing_ok=True)
    run_config = write_run_config(request, request.results_path.with_suffix(".run-config.toml"))
    run_id = control.submit(run_config)
    return follow(control, run_id, request.results_path, on_event=on_event, timeout_s=timeout_s)


def follow(
    control: FlowerControl,
    run_id: int,
    results_path: Path,
    *,
    on_event: Callable[[dict[str, Any]], None],
    timeout_s: float,
) -> RunOutcome:
    outcome = RunOutcome(run_id=run_id, status=RunStatus(run_id, "pending", ""))
    deadline = time.monotonic() + timeout_s
    last_heard = time.monotonic()  # of the run: its latest report, or Flower's status
    while True:
        fresh = read_events(results_path)[len(outcome.events) :]
        for event in fresh:
            on_event(event)
        outcome.events.extend(fresh)
        if fresh:
            last_heard = time.monotonic()
        reported_end = any(event["event"] == "run-finished" for event in outcome.events)
        if flower_status_due(reported_end=reported_end, quiet_s=time.monotonic() - last_heard):
            outcome.status = control.status(run_id)
            last_heard = time.monotonic()
            if outcome.status.finished:
                return _with_late_events(outcome, results_path, on_event)
        if time.monotonic() >= deadline:
            control.stop(run_id)
            raise TimeoutError(
                f"run {run_id} did not finish within {timeout_s:g} s and was stopped"
            )
        time.sleep(EVENT_POLL_S)


def flower_status_due(*, reported_end: bool, quiet_s: float) -> bool:
    """Whether to ask Flower how a run stands, its reports having said whether it ended and been
    quiet for `quiet_s`. Once they say it ended, Flower's word follows within moments."""
    return reported_end or quiet_s >= REPORT_QUIET_S


def _with_late_events(
    outcome: RunOutcome, results_path: Path, on_event: Callable[[dict[str, Any]], None]
) -> RunOutcome:
    late = read_events(results_path)[len(outcome.events) :]
    for event in late:
        on_event(event)
    outcome.events.extend(late)
    return outcome
