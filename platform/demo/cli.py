"""`cohort-demo`: a whole federated study on this machine, run through the portal."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from demo.progress import RunProgress
from demo.report import write_report
from demo.setup import Consortium, DemoSettings, prepare_consortium
from demo.summary import build_report, released_model_path_of
from federation.control import RunStatus
from federation.deployment import LocalFederation
from federation.runner import RunOutcome

if TYPE_CHECKING:  # Django models load only once the portal has configured Django.
    from privacy.selectors import Preflight

RUN_TIMEOUT_S = 3600.0


def parse_args(argv: Sequence[str] | None) -> tuple[DemoSettings, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="cohort-demo",
        description="Run a federated DP + HE study over 3 hospitals through the Cohort portal.",
    )
    parser.add_argument("--out", type=str, default="var/demo", help="output folder")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epsilon", type=float, default=3.0, help="target ε per hospital")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--host", default=os.environ.get("COHORT_DEMO_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("COHORT_DEMO_PORT", "8000")))
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.epsilon <= 0:
        parser.error("--rounds must be at least 1 and --epsilon positive")
    settings = DemoSettings(
        out_dir=Path(args.out),
        rounds=args.rounds,
        target_epsilon=args.epsilon,
        seed=args.seed,
        portal_url=f"http://{args.host}:{args.port}",
    )
    return settings, args


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    settings, args = parse_args(argv)
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
    try:
        return run_demo(
            console, settings, consortium, host=args.host, port=args.port, started=started
        )
    except KeyboardInterrupt:
        console.print("[yellow]Stopped: every process the demo started was stopped.")
        return 130


def run_demo(
    console: Console,
    settings: DemoSettings,
    consortium: Consortium,
    *,
    host: str,
    port: int,
    started: float,
) -> int:
    from demo.portal_stack import running_portal

    with (
        LocalFederation(
            workdir=settings.out_dir / "federation", hospitals=consortium.hospitals
        ) as federation,
        running_portal(
            out_dir=settings.out_dir, federation=federation, host=host, port=port
        ) as portal,
    ):
        # Django is configured from here on.
        from demo import portal_study

        console.print(f"Started {federation.describe()}; portal at {portal.url}")
        accounts = portal_study.seed_accounts(consortium)
        console.print(credentials_table(accounts.passwords))
        study = portal_study.open_study(accounts, consortium)
        console.print(
            f"Study '{study.slug}' approved by 3 stewards "
            f"(protocol {study.protocol_sha256[:12]}…): "
            f"{settings.rounds} rounds, DP-SGD at ε={settings.target_epsilon:g} "
            f"(δ={settings.delta:g}) per hospital, CKKS-encrypted updates"
        )
        console.print(preflight_table(portal_study.preflight_of(study)))
        run = portal_study.start(study, accounts)
        console.print(f"Run {run.pk} queued; follow it at {portal.url}/runs/{run.pk}/")
        with RunProgress(console, study_id=study.slug, rounds=settings.rounds) as progress:
            events = portal_study.follow(run, on_event=progress.update, timeout_s=RUN_TIMEOUT_S)
        console.line()
        run.refresh_from_db()
        succeeded = run.state == run.State.COMPLETED
        flower_run_id = int(run.flower_run_id or 0)
        outcome = RunOutcome(
            run_id=flower_run_id,
            status=RunStatus(flower_run_id, f"finished:{run.state}", run.reason),
            events=events,
        )
        report = finish(
            console,
            settings,
            consortium,
            outcome,
            wall_seconds=time.monotonic() - started,
            projected_epsilon=portal_study.projected_epsilon(run),
        )
        if succeeded:
            portal_study.release(
                run,
                accounts,
                consortium,
                parameters=released_model_path_of(consortium, outcome).read_bytes(),
                privacy_report=report["privacy"],
            )
            console.print(
                f"Released: the stewards approved, {consortium.hospitals[0].hospital}'s node "
                f"uploaded the final model; download it from {portal.url}/runs/{run.pk}/"
            )
        if os.environ.get("DEMO_SERVE", "1") != "0":
            console.print(f"Serving {portal.url} (log in with the accounts above); Ctrl-C to stop.")
            while True:
                time.sleep(3600)
        return 0 if succeeded else 1


def preflight_table(preflight: Preflight) -> Table:
    """What each hospital's node reported and what the run will cost it, before the start."""
    table = Table(title=f"Privacy preflight: {'passed' if preflight.passed else 'BLOCKED'}")
    for column in ("hospital", "consent snapshot", "training rows", "σ", "run ε", "lifetime ε"):
        table.add_column(
            column, justify="left" if column in ("hospital", "consent snapshot") else "right"
        )
    for row in preflight.rows:
        table.add_row(
            row.institution.slug,
            f"{row.consent[:12]}…" if row.consent else "–",
            str(row.rows_train if row.rows_train is not None else "–"),
            _fmt(row.planned.noise_multiplier if row.planned else None),
            _fmt(row.run_epsilon),
            f"{_fmt(row.lifetime_projected)} of {_fmt(row.cap)}",
        )
    return table


def credentials_table(passwords: dict[str, str]) -> Table:
    table = Table(title="Demo accounts (also in the admin console)")
    table.add_column("user")
    table.add_column("password")
    for username, password in passwords.items():
        table.add_row(username, password)
    return table


def finish(
    console: Console,
    settings: DemoSettings,
    consortium: Consortium,
    outcome: RunOutcome,
    *,
    wall_seconds: float,
    projected_epsilon: dict[str, float | None],
) -> dict[str, Any]:
    """Print the outcome and write report.json and report.html; return the report."""
    if not outcome.status.succeeded:
        console.print(f"[red]The study failed: {outcome.failure_reason}")
    console.print("Training the comparison models (local-only DP, centralized non-private)…")
    report = build_report(
        consortium, outcome, wall_seconds=wall_seconds, projected_epsilon=projected_epsilon
    )
    json_path, html_path = write_report(report, out_dir=settings.out_dir)
    if outcome.status.succeeded:
        console.print(results_table(report))
    console.print(f"Report: {json_path} and {html_path}")
    return report


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
