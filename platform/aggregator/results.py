"""Where the aggregator reports progress: three events per run, in one of two sinks.

A JSON-lines file that readers (the local runner, the demo) follow while the run is going, or the
portal's events API (`POST {portal}/api/runs/{run_id}/events/` with `Authorization: Run <token>`).
Every event carries its kind in "event" and a UTC timestamp in "at".
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol


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
    epsilon_conversion: str  # how the accountant's bound became (ε, δ)
    consent: str  # the consent snapshot's sha256 the node trained under, or "waived: <decision>"
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


class ResultsSink(Protocol):
    def run_started(self, **facts: Any) -> None: ...

    def round_completed(self, result: RoundResult) -> None: ...

    def run_finished(self, *, status: str, reason: str = "") -> None: ...


def _stamped(event: dict[str, Any]) -> dict[str, Any]:
    return {**event, "at": datetime.now(UTC).isoformat()}


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
        with self.path.open("a", encoding="utf-8") as sink:
            sink.write(json.dumps(_stamped(event), allow_nan=False) + "\n")


class HttpResultsSink:
    """POSTs each event to the portal with the run-scoped token; urllib only (no Django here).

    Connection errors and 5xx answers are retried with exponential backoff. A report that still
    fails is logged to stderr and dropped: losing a progress report must not stop the study (the
    portal reads the run's end state from Flower anyway).
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        attempts: int = 5,
        backoff_s: float = 0.5,
        timeout_s: float = 10.0,
    ) -> None:
        self.url = url
        self.token = token
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s

    def run_started(self, **facts: Any) -> None:
        self._post({"event": "run-started", **facts})

    def round_completed(self, result: RoundResult) -> None:
        self._post({"event": "round", **asdict(result)})

    def run_finished(self, *, status: str, reason: str = "") -> None:
        self._post({"event": "run-finished", "status": status, "reason": reason})

    def _post(self, event: dict[str, Any]) -> bool:
        """Deliver one event; True once the portal accepted it."""
        body = json.dumps(_stamped(event), allow_nan=False).encode()
        failure = ""
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            request = urllib.request.Request(  # noqa: S310 - the URL comes from the run config
                self.url,
                data=body,
                method="POST",
                headers={"Content-Type": "application/json", "Authorization": f"Run {self.token}"},
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s):  # noqa: S310
                    return True
            except urllib.error.HTTPError as error:
                failure = f"HTTP {error.code}: {_answer(error)}"
                if error.code < 500:
                    break  # the portal refused the event itself; sending it again cannot help
            except (urllib.error.URLError, OSError) as error:
                failure = str(error)
        # The ServerApp's stderr is its log (Flower keeps it with the run).
        print(
            f"cohort aggregator: could not report {event['event']!r} to {self.url}: {failure}",
            file=sys.stderr,
            flush=True,
        )
        return False


def _answer(error: urllib.error.HTTPError) -> str:
    try:
        return error.read(2000).decode("utf-8", "replace")
    except OSError:
        return error.reason if isinstance(error.reason, str) else ""


def read_events(path: Path) -> list[dict[str, Any]]:
    """All complete events written so far (a partly written last line is left for the next read)."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    return [json.loads(line) for line in lines if line.endswith("\n")]
