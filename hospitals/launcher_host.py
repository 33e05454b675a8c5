"""`cohort-launchers`: the ClientApp launchers of several SuperNodes on one machine, one preload.

On its own, every `cohort-launcher` imports torch, opacus and tenseal: ~335 MiB of anonymous
memory and ~4 s of CPU per hospital. Where several hospitals' SuperNodes share one machine (the
demo, the tests, the benchmarks: federation/deployment.py), this process imports them once and
forks one launcher per SuperNode. Each forked launcher then serves its own SuperNode exactly as a
`cohort-launcher` given the same arguments would (hospitals/launcher.py, `serve_tasks`), writing
to its own log file; it shares only the pages of modules imported before any hospital's data or
key was read, copy-on-write, and forks its own tasks. A hospital on its own machine runs
`cohort-launcher`: nothing shared would be gained.

    cohort-launchers launchers.json [--pids-file launcher-pids.json]

where `launchers.json` lists, per SuperNode, a name, a log file and the `cohort-launcher`
arguments of its launcher::

    [{"name": "hospital-a", "log_file": "logs/launcher-hospital-a.log",
      "args": ["--runtime-api-address", "127.0.0.1:9094", "--insecure", "--parent-pid", "4242"]}]

Once every launcher is forked, `--pids-file` gets each one's pid by name (`{"hospital-a": 4243}`),
so that whoever started this process can tell a launcher that died from one still starting. This
process exits once every launcher has exited (each follows its SuperNode down). A stop signal sent
to it alone is passed on to every launcher.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from logging import INFO, WARNING
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from flwr.supercore import log

from hospitals.launcher import (
    PRELOAD_MODULES,
    STOP_SIGNALS,
    LauncherSettings,
    exit_code,
    exit_forked,
    flush_standard_streams,
    parse_args,
    prepare_warm_process,
    serve_tasks,
    write_whole,
)

# A launcher exits with 0 when its SuperNode has gone, and with 128 + the signal when stopped.
EXPECTED_EXIT_CODES = frozenset({0, *(128 + signum for signum in STOP_SIGNALS)})


class LaunchersFileError(ValueError):
    """The launchers file cannot be read, or does not list launchers as the module says."""


@dataclass(frozen=True)
class HostedLauncher:
    """One SuperNode's launcher: a name for the logs, its log file and its settings."""

    name: str
    log_file: Path
    settings: LauncherSettings


def read_launchers(path: Path) -> list[HostedLauncher]:
    """The launchers `path` lists (module docstring).

    Raises:
        LaunchersFileError: the file is unreadable, is not such a JSON list, or names a
            launcher twice.
        SystemExit: an entry's arguments are not `cohort-launcher`'s; argparse names the entry.
    """
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LaunchersFileError(f"cannot read the launchers file {path}: {error}") from error
    if not isinstance(entries, list) or not entries:
        raise LaunchersFileError(f"{path} must hold a non-empty JSON list of launchers")
    launchers = [_launcher(entry, index=index, path=path) for index, entry in enumerate(entries)]
    names = [launcher.name for launcher in launchers]
    if len(set(names)) != len(names):
        raise LaunchersFileError(f"{path} names a launcher twice: {', '.join(sorted(names))}")
    return launchers


def _launcher(entry: Any, *, index: int, path: Path) -> HostedLauncher:
    where = f"entry {index} of {path}"
    if not isinstance(entry, dict) or set(entry) != {"name", "log_file", "args"}:
        raise LaunchersFileError(f"{where} must be an object with exactly: name, log_file, args")
    name, log_file, args = entry["name"], entry["log_file"], entry["args"]
    if not (isinstance(name, str) and name and isinstance(log_file, str) and log_file):
        raise LaunchersFileError(f"{where}: name and log_file must be non-empty strings")
    if not (isinstance(args, list) and all(isinstance(arg, str) for arg in args)):
        raise LaunchersFileError(f"{where}: args must be a list of strings")
    settings = parse_args(args, prog=f"cohort-launchers ({name}, {where})")
    return HostedLauncher(name=name, log_file=Path(log_file), settings=settings)


def host(
    launchers: Sequence[HostedLauncher],
    *,
    modules: Sequence[str] = PRELOAD_MODULES,
    serve: Callable[[LauncherSettings], None] = serve_tasks,
    pids_file: Path | None = None,
) -> int:
    """Preload `modules`, fork a launcher running `serve` for each of `launchers`, write their
    pids to `pids_file`, and reap them as they exit; returns 0 once none is left."""
    prepare_warm_process(modules)
    running: dict[int, HostedLauncher] = {}
    for launcher in launchers:
        flush_standard_streams()  # or the child would write the parent's buffered lines again
        pid = os.fork()
        if pid == 0:
            _run_launcher(launcher, serve)
        running[pid] = launcher
        log(INFO, "Launcher for %s forked as pid %d", launcher.name, pid)
    if pids_file is not None:
        write_whole(
            pids_file, json.dumps({launcher.name: pid for pid, launcher in running.items()})
        )

    def pass_on(signum: int, frame: FrameType | None) -> None:
        for pid in running:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                continue  # exited, not reaped yet

    for signum in STOP_SIGNALS:
        signal.signal(signum, pass_on)
    while running:
        pid, status = os.wait()
        launcher = running.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        level = INFO if code in EXPECTED_EXIT_CODES else WARNING
        log(level, "Launcher for %s exited with code %d", launcher.name, code)
    return 0


def _run_launcher(launcher: HostedLauncher, serve: Callable[[LauncherSettings], None]) -> NoReturn:
    def run() -> int:
        # Until serve_tasks installs its handlers, a stop signal ends the launcher at once: it has
        # nothing to clean up yet.
        launcher.log_file.parent.mkdir(parents=True, exist_ok=True)
        log_fd = os.open(launcher.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log_fd, sys.stdout.fileno())
        os.dup2(log_fd, sys.stderr.fileno())
        os.close(log_fd)
        return exit_code(lambda: serve(launcher.settings))

    exit_forked(run)


def main(argv: Sequence[str] | None = None) -> int:
    command = argparse.ArgumentParser(
        prog="cohort-launchers",
        description="Run the ClientApp launchers of several SuperNodes on this machine, forked "
        "from one process that imports the ClientApp once.",
    )
    command.add_argument(
        "launchers_file",
        type=Path,
        metavar="LAUNCHERS_FILE",
        help="JSON list of {name, log_file, args}: args are a cohort-launcher's arguments",
    )
    command.add_argument(
        "--pids-file",
        type=Path,
        metavar="PATH",
        help="write each launcher's pid, by name, to PATH (JSON) once all are forked",
    )
    args = command.parse_args(argv)
    try:
        launchers = read_launchers(args.launchers_file)
    except LaunchersFileError as error:
        command.error(str(error))
    return host(launchers, pids_file=args.pids_file)
