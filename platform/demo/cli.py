"""`cohort-demo`: run a whole federated study on this machine and report on it."""

from __future__ import annotations

import argparse
import signal
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.table import Table

from demo.progress import RunProgress
from demo.report import write_report
from demo.setup import Consortium, DemoSettings, prepare_consortium
from demo.summary import build_report
from federation.deployment import LocalFederation
from federation.runner import RunOutcome, StudyRequest, run_and_follow


def parse_args(argv: Sequence[str] | None) -> DemoSettings:
    parser = argparse.ArgumentParser(
        prog="cohort-demo",
        description="Run a federated DP + HE study over 3 hospitals on this machine.",
    )
    parser.add_argument("--out", type=Path, default=Path("var/demo"), help="output folder")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epsilon", type=float, default=3.0, help="target ε per hospital")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.epsilon <= 0:
        parser.error("--rounds must be at least 1 and --epsilon positive")
    return DemoSettings(
        out_dir=args.out, rounds=args.rounds, target_epsilon=args.epsilon, seed=args.seed
    )


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    # Known and documented (README): secure_mode needs torchcsprng, which has no Python 3.11 build;
    # the accountant's advice concerns tightness of ε, never its safety. Keep the terminal readable.
    warnings.filterwarnings("ignore", message="Secure RNG turned off")
    warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
    # SIGTERM unwinds like Ctrl-C, so every process the demo started is stopped by PID.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    console = Console()
    started = time.monotonic()
    console.rule("[bold]Cohort demo: breast-cancer study over 3 hospitals")
    consortium = prepare_consortium(settings)
    console.print(
        f"Protocol {consortium.protocol.sha256[:12]}…: {settings.rounds} rounds, DP-SGD at "
        f"ε={settings.target_epsilon:g} (δ={settings.delta:g}) per hospital, CKKS-encrypted updates"
    )
    request = StudyRequest(
        protocol_json=(settings.out_dir / "protocol.json").read_text().strip(),
        aggregator_context=consortium.key.aggregator_context().to_bytes(),
        results_path=(settings.out_dir / "results.jsonl").resolve(),
    )
    try:
        with LocalFederation(
            workdir=settings.out_dir / "federation", hospitals=consortium.hospitals
        ) as federation:
            console.print(f"Started {federation.describe()}")
            with RunProgress(
                console, study_id=consortium.protocol.study_id, rounds=settings.rounds
            ) as progress:
                outcome = run_and_follow(federation.control, request, on_event=progress.update)
    except KeyboardInterrupt:
        console.print("[yellow]Interrupted: every process the demo started was stopped.")
        return 130
    return finish(console, settings, consortium, outcome, wall_seconds=time.monotonic() - started)


def finish(
    console: Console,
    settings: DemoSettings,
    consortium: Consortium,
    outcome: RunOutcome,
    *,
    wall_seconds: float,
) -> int:
    if not outcome.status.succeeded:
        console.print(f"[red]The study failed: {outcome.failure_reason}")
    console.print("Training the comparison models (local-only DP, centralized non-private)…")
    report = build_report(consortium, outcome, wall_seconds=wall_seconds)
    json_path, html_path = write_report(report, out_dir=settings.out_dir)
    if outcome.status.succeeded:
        console.print(results_table(report))
    console.print(f"Report: {json_path} and {html_path}")
    return 0 if outcome.status.succeeded else 1


def results_table(report: dict[str, Any]) -> Table:
    final = report["final"]
    table = Table(title=f"Common held-out test set ({final['test_rows']} patients)")
    for column in ("model", "ROC AUC", "accuracy", "loss"):
        table.add_column(column, justify="left" if column == "model" else "right")
    rows = [
        ("federated DP + HE", final["federated"]),
        ("centralized, non-private", final["centralized"]),
    ]
    rows += [(f"{name} alone (DP)", metrics) for name, metrics in final["local_only"].items()]
    for label, metrics in rows:
        table.add_row(label, *(_fmt(metrics.get(key)) for key in ("roc_auc", "accuracy", "loss")))
    return table


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    sys.exit(main())
