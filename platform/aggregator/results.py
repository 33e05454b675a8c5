"""Where the aggregator reports progress: one JSON object per line, appended as rounds complete.

A JSON-lines file is the sink for now; readers (the local runner, the demo) follow it while the run
is going. Every event carries its kind in "event" and a UTC timestamp in "at".
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class HospitalRound:
    """What one hospital published about its part in one round."""

    hospital: str
    epsilon: float
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    accountant: str
    rows_rounded: int
    bytes_up: int
    train_seconds: float
    metrics: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class RoundResult:
    """One completed round: who took part, who dropped out and why, and the weighted metrics."""

    round: int
    participants: list[str]
    dropped: dict[str, str]
    metrics: dict[str, float | None]
    hospitals: list[HospitalRound]
    bytes_down: int
    seconds: float


class JsonlResultsSink:
    """Appends events to a JSON-lines file, flushing each so that followers see it at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def run_started(self, **facts: Any) -> None:
        self._write({"event": "run-started", **facts})

    def round_completed(self, result: RoundResult) -> None:
        self._write({"event": "round", **asdict(result)})

    def run_finished(self, *, status: str, reason: str = "") -> None:
        self._write({"event": "run-finished", "status": status, "reason": reason})

    def _write(self, event: dict[str, Any]) -> None:
        event["at"] = datetime.now(UTC).isoformat()
        with self.path.open("a", encoding="utf-8") as sink:
            sink.write(json.dumps(event, allow_nan=False) + "\n")


def read_events(path: Path) -> list[dict[str, Any]]:
    """All complete events written so far (a partly written last line is left for the next read)."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    return [json.loads(line) for line in lines if line.endswith("\n")]
