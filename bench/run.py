"""`python -m bench.run [--quick] [--only he,dp] [--out var/bench]`: run the suites, print one
table per comparison, write results.json (raw figures, machine facts) and report.md (with plots)."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server or in CI

from rich.console import Console  # noqa: E402 - after choosing the backend
from rich.table import Table as RichTable  # noqa: E402

from bench.core import (  # noqa: E402
    Cell,
    Goal,
    SuiteResult,
    Table,
    machine_facts,
    release_freed_memory,
)

# Module per suite, each with `run(*, quick: bool) -> SuiteResult`.
SUITES = ("he", "dp", "accounting", "utility", "federation")


def suite_runner(name: str) -> Callable[..., SuiteResult]:
    return importlib.import_module(f"bench.{name}").run  # type: ignore[no-any-return]


def format_cell(value: Cell) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def print_table(console: Console, table: Table) -> None:
    printed = RichTable(title=table.title, title_justify="left")
    for index, column in enumerate(table.columns):
        printed.add_column(column, justify="left" if index == 0 else "right")
    for row in table.rows:
        printed.add_row(*(format_cell(cell) for cell in row))
    console.print(printed)
    for note in table.notes:
        console.print(f"  [dim]{note}")


def markdown_table(table: Table) -> str:
    lines = [f"### {table.title}", "", "| " + " | ".join(table.columns) + " |"]
    lines.append("|" + "|".join("---" for _ in table.columns) + "|")
    lines += ["| " + " | ".join(format_cell(cell) for cell in row) + " |" for row in table.rows]
    lines += ["", *(f"_{note}_  " for note in table.notes), ""]
    return "\n".join(lines)


QUICK_GOALS_NOTE = (
    "A quick run judges no goal: its sizes, repeats and designs are far below the goals' cases. "
    "`make bench` judges them."
)
VERDICTS = {True: "yes", False: "no", None: "not judged"}


def run_goals(results: Sequence[SuiteResult], *, quick: bool) -> list[Goal]:
    """Every suite's goals, in suite order; a quick run's figures stand, unjudged."""
    goals = [goal for result in results for goal in result.goals]
    return [replace(goal, met=None) for goal in goals] if quick else goals


def goals_table(goals: Sequence[Goal], *, quick: bool) -> Table:
    return Table(
        title="Goals (issue 5), judged on this run",
        columns=["goal", "target", "measured", "met"],
        rows=[[goal.name, goal.target, goal.measured, VERDICTS[goal.met]] for goal in goals],
        notes=[QUICK_GOALS_NOTE] if quick else [],
    )


def write_outputs(
    results: Sequence[SuiteResult], *, out: Path, quick: bool, seconds: float
) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_facts()
    goals = run_goals(results, quick=quick)
    document = {
        "generated_at": datetime.now(UTC).isoformat(),
        "quick": quick,
        "seconds": round(seconds, 1),
        "machine": machine,
        "goals": [goal.to_dict() for goal in goals],
        "suites": {result.name: result.figures for result in results},
    }
    json_path = out / "results.json"
    json_path.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
    sections = [
        "# Cohort benchmarks",
        "",
        f"{'Quick run' if quick else 'Full run'} of {document['generated_at']}, "
        f"{seconds:.0f} s, on {machine['cpus']} CPUs ({machine['processor']}), "
        f"{machine['memory_gib']} GiB, torch {machine['torch']} with "
        f"{machine['torch_threads']} threads{', ' + machine['cuda'] if machine['cuda'] else ''}.",
        "Every figure is measured side by side in this run: medians of repeats, with min and max.",
        "",
    ]
    if goals:
        sections.append(markdown_table(goals_table(goals, quick=quick)))
    for result in results:
        sections.append(f"## {result.name}\n")
        sections += [markdown_table(table) for table in result.tables]
        for file_name, figure in result.plots.items():
            figure.savefig(out / file_name, dpi=120, bbox_inches="tight")
            sections.append(f"![{file_name}]({file_name})\n")
    report_path = out / "report.md"
    report_path.write_text("\n".join(sections))
    return json_path, report_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats: seconds")
    parser.add_argument("--only", default=",".join(SUITES), help="comma-separated suites")
    parser.add_argument("--out", type=Path, default=Path("var/bench"))
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(names) - set(SUITES))
    if unknown:
        parser.error(f"unknown suites {unknown}; known: {', '.join(SUITES)}")
    console = Console(width=160)
    started = time.monotonic()
    results = []
    for name in names:
        console.rule(f"[bold]{name}")
        release_freed_memory()  # each suite finds the memory earlier ones freed
        result = suite_runner(name)(quick=args.quick)
        for table in result.tables:
            print_table(console, table)
        results.append(result)
    if goals := run_goals(results, quick=args.quick):
        console.rule("[bold]goals")
        print_table(console, goals_table(goals, quick=args.quick))
    json_path, report_path = write_outputs(
        results, out=args.out, quick=args.quick, seconds=time.monotonic() - started
    )
    console.print(f"Wrote {json_path} and {report_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
