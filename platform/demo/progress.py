"""Live terminal view of a federated run, fed with the aggregator's events as they arrive.

The state is a plain dataclass and `render` a pure function of it, so what the terminal shows can be
checked without one. Events come from another process and older or newer aggregators may leave
fields out: nothing here raises on a missing or malformed field, it shows "–" instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

REASON_WIDTH = 24
MISSING = "–"


@dataclass(frozen=True)
class RoundRow:
    """One completed round as the table shows it."""

    round: int | None
    participants: int
    dropped: dict[str, str]
    roc_auc: float | None
    accuracy: float | None
    loss: float | None
    max_epsilon: float | None
    bytes_up: int | None
    seconds: float | None


@dataclass
class ProgressState:
    """Everything the display knows about the run so far."""

    study_id: str
    rounds: int
    run_id: str = ""
    min_hospitals: int | None = None
    aggregator: dict[str, Any] = field(default_factory=dict)
    rows: list[RoundRow] = field(default_factory=list)
    status: str = "waiting for hospitals…"
    outcome: str | None = None

    @property
    def total_rounds(self) -> int:
        seen = [row.round for row in self.rows if row.round is not None]
        return max([self.rounds, len(self.rows), *seen])

    def apply(self, event: Mapping[str, Any]) -> None:
        """Take one aggregator event into account; unknown kinds are ignored."""
        kind = event.get("event")
        if kind == "run-started":
            self._started(event)
        elif kind == "round":
            self._round(event)
        elif kind == "run-finished":
            self._finished(event)

    def _started(self, event: Mapping[str, Any]) -> None:
        self.study_id = str(event.get("study_id") or self.study_id)
        self.run_id = str(event.get("run_id") or self.run_id)
        rounds = as_int(event.get("rounds"))
        if rounds is not None and rounds > 0:
            self.rounds = rounds
        self.min_hospitals = as_int(event.get("min_hospitals"))
        self.aggregator = dict(as_mapping(event.get("aggregator")))
        needed = f" (at least {self.min_hospitals})" if self.min_hospitals else ""
        self.status = f"waiting for hospitals{needed}…"

    def _round(self, event: Mapping[str, Any]) -> None:
        hospitals = [as_mapping(h) for h in as_list(event.get("hospitals"))]
        epsilons = [e for e in (as_float(h.get("epsilon")) for h in hospitals) if e is not None]
        uploads = [b for b in (as_int(h.get("bytes_up")) for h in hospitals) if b is not None]
        metrics = as_mapping(event.get("metrics"))
        row = RoundRow(
            round=as_int(event.get("round")),
            participants=len(as_list(event.get("participants"))),
            dropped={str(k): str(v) for k, v in as_mapping(event.get("dropped")).items()},
            roc_auc=as_float(metrics.get("roc_auc")),
            accuracy=as_float(metrics.get("accuracy")),
            loss=as_float(metrics.get("loss")),
            max_epsilon=max(epsilons) if epsilons else None,
            bytes_up=sum(uploads) if uploads else None,
            seconds=as_float(event.get("seconds")),
        )
        self.rows.append(row)
        done = row.round if row.round is not None else len(self.rows)
        if done < self.rounds:
            self.status = f"round {done + 1} of {self.rounds}…"
        else:
            self.status = "final evaluation…"

    def _finished(self, event: Mapping[str, Any]) -> None:
        self.outcome = str(event.get("status") or "failed")
        reason = str(event.get("reason") or "")
        if self.outcome == "completed":
            self.status = "completed"
        else:
            self.status = f"{self.outcome}: {reason}" if reason else self.outcome


def render(state: ProgressState) -> RenderableType:
    """The whole display for `state`: title, progress bar, round table and status line."""
    title = Text.assemble(("Study ", "bold"), (state.study_id, "bold cyan"))
    if state.run_id:
        title.append(f"  ·  run {state.run_id}", style="dim")
    parts: list[RenderableType] = [title]
    facts = _aggregator_line(state.aggregator)
    if facts is not None:
        parts.append(facts)
    done = min(len(state.rows), state.total_rounds)
    bar = Table.grid(padding=(0, 1))
    bar.add_row(
        ProgressBar(total=state.total_rounds, completed=done, width=40),
        Text(f"{done}/{state.total_rounds} rounds"),
    )
    parts.append(bar)
    if state.rows:
        parts.append(_rounds_table(state.rows))
    parts.append(_status_line(state))
    return Group(*parts)


def _aggregator_line(facts: Mapping[str, Any]) -> Text | None:
    if not facts:
        return None
    line = Text("aggregator: ", style="dim")
    has_key = facts.get("has_secret_key")
    if has_key is False:
        line.append("no secret key", style="green")
    elif has_key is True:
        line.append("HOLDS A SECRET KEY", style="bold red")
    size = as_int(facts.get("he_context_bytes"))
    if size is not None:
        line.append(f" · HE context {format_bytes(size)}", style="dim")
    fingerprint = facts.get("he_context_fingerprint")
    if fingerprint:
        line.append(f" · {str(fingerprint)[:12]}…", style="dim")
    return line


def _rounds_table(rows: list[RoundRow]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False, padding=(0, 1))
    table.add_column("round", justify="right")
    table.add_column("hospitals", justify="right")
    table.add_column("dropped", overflow="fold", max_width=44)
    table.add_column("AUC", justify="right")
    table.add_column("accuracy", justify="right")
    table.add_column("loss", justify="right")
    table.add_column("max ε", justify="right")
    table.add_column("MB up", justify="right")
    table.add_column("s", justify="right")
    for row in rows:
        table.add_row(
            MISSING if row.round is None else str(row.round),
            str(row.participants),
            _dropped(row.dropped),
            _fixed(row.roc_auc, 3),
            _percent(row.accuracy),
            _fixed(row.loss, 3),
            _fixed(row.max_epsilon, 2),
            MISSING if row.bytes_up is None else f"{row.bytes_up / 1e6:.2f}",
            _fixed(row.seconds, 1),
        )
    return table


def _dropped(dropped: Mapping[str, str]) -> Text:
    if not dropped:
        return Text(MISSING, style="dim")
    parts = []
    for name, reason in dropped.items():
        short = reason if len(reason) <= REASON_WIDTH else reason[: REASON_WIDTH - 1] + "…"
        parts.append(f"{name} ({short})" if short else name)
    return Text("; ".join(parts), style="yellow")


def _status_line(state: ProgressState) -> RenderableType:
    if state.outcome == "completed":
        return Text("✓ completed", style="bold green")
    if state.outcome is not None:
        return Text(f"✗ {state.status}", style="bold red")
    return Spinner("dots", text=Text(state.status, style="cyan"))


class RunProgress:
    """A live view of the run on `console`, updated with each event; it stays on screen after."""

    def __init__(self, console: Console, *, study_id: str, rounds: int) -> None:
        self.console = console
        self.state = ProgressState(study_id=study_id, rounds=rounds)
        self._live: Live | None = None

    def __enter__(self) -> RunProgress:
        self._live = Live(
            render(self.state), console=self.console, transient=False, refresh_per_second=8
        )
        self._live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.update(render(self.state), refresh=True)
            self._live.stop()
            self._live = None

    def update(self, event: Mapping[str, Any]) -> None:
        """Take one aggregator event into account and redraw."""
        self.state.apply(event)
        self._refresh()

    def set_status(self, text: str) -> None:
        """Replace the status line, e.g. while the demo does something between events."""
        self.state.status = text
        self._refresh()

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(render(self.state), refresh=True)


def format_bytes(size: float) -> str:
    """A byte count in decimal units: 120 B, 530.0 KB, 1.59 MB."""
    if size < 1_000:
        return f"{size:.0f} B"
    if size < 1_000_000:
        return f"{size / 1e3:.1f} KB"
    return f"{size / 1e6:.2f} MB"


def _fixed(value: float | None, digits: int) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def _percent(value: float | None) -> str:
    return MISSING if value is None else f"{value * 100:.1f}%"


def as_float(value: object) -> float | None:
    """`value` as a finite float, or None when it is missing, not a number, NaN or infinite."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def as_int(value: object) -> int | None:
    """`value` as an int (truncated), or None as for `as_float`."""
    number = as_float(value)
    return None if number is None else int(number)


def as_mapping(value: object) -> Mapping[str, Any]:
    """`value` if it is a mapping, else an empty one (a missing or malformed field)."""
    return value if isinstance(value, Mapping) else {}


def as_list(value: object) -> list[Any]:
    """`value` as a list if it is a list or tuple, else an empty list."""
    return list(value) if isinstance(value, list | tuple) else []
