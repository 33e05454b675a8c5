"""The SuperLink's Control API through the `flwr` CLI: submit, inspect and stop runs.

`flwr run` exits 0 even when a run later fails, so a run's outcome is always read back with
`flwr ls --run-id` (STACK-NOTES).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

APP_DIR = Path(__file__).parent / "app"
CLI_TIMEOUT_S = 60.0
# Flower's entry points installed beside this interpreter; the SuperLink also finds its SuperExec
# there through PATH.
SCRIPTS_DIR = Path(sys.executable).parent
FLWR = SCRIPTS_DIR / "flwr"
# A loaded SuperLink sometimes answers a read with "Internal server error"; reads are idempotent.
READ_ATTEMPTS = 3
READ_RETRY_DELAY_S = 1.0


class ControlError(RuntimeError):
    """The Control API refused a request or answered something unreadable."""


@dataclass(frozen=True)
class RunStatus:
    run_id: int
    status: str  # e.g. "pending", "running", "finished:completed", "finished:failed"
    details: str

    @property
    def finished(self) -> bool:
        return self.status.startswith("finished")

    @property
    def succeeded(self) -> bool:
        return self.status == "finished:completed"


class FlowerControl:
    def __init__(self, *, env: Mapping[str, str], connection: str, flwr: Path = FLWR) -> None:
        self.env = dict(env)
        self.connection = connection
        self.flwr = flwr

    def submit(self, run_config: Path, *, app_dir: Path = APP_DIR) -> int:
        """Start a run with the overrides in the TOML file `run_config`; return the run's id."""
        answer = self._call("run", str(app_dir), self.connection, "--run-config", str(run_config))
        return int(answer["run-id"])

    def status(self, run_id: int) -> RunStatus:
        answer = self._read("ls", self.connection, "--run-id", str(run_id))
        (run,) = answer["runs"]
        details = run.get("status-details", "")
        return RunStatus(
            run_id=run_id, status=run["status"], details="" if details == "N/A" else details
        )

    def stop(self, run_id: int) -> None:
        self._call("stop", str(run_id), self.connection)

    def online_nodes(self) -> int:
        try:
            answer = self._call("supernode", "ls", self.connection)
        except ControlError:
            return 0  # the SuperLink is not answering yet
        return sum(1 for node in answer.get("nodes", []) if node.get("status") == "online")

    def _read(self, *args: str) -> dict[str, Any]:
        """`_call` for a request that changes nothing, retried on a transient refusal."""
        for attempt in range(1, READ_ATTEMPTS):
            try:
                return self._call(*args)
            except ControlError:
                time.sleep(READ_RETRY_DELAY_S * attempt)
        return self._call(*args)

    def _call(self, *args: str) -> dict[str, Any]:
        try:
            completed = subprocess.run(  # noqa: S603 - fixed argv, no shell
                [str(self.flwr), *args, "--format", "json"],
                capture_output=True,
                text=True,
                env=self.env,
                timeout=CLI_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            # Seen while 50 hospitals started on 2 cores: the CLI itself could not get the CPU.
            raise ControlError(
                f"`flwr {' '.join(args)}` did not answer within {CLI_TIMEOUT_S:g} s"
            ) from None
        try:
            answer = json.loads(completed.stdout)
        except json.JSONDecodeError as error:
            raise ControlError(
                f"`flwr {' '.join(args)}` answered no JSON (exit {completed.returncode}): "
                f"{(completed.stdout + completed.stderr).strip()[-500:]}"
            ) from error
        if not answer.get("success", False):
            raise ControlError(f"`flwr {args[0]}` failed: {answer.get('error-message', answer)}")
        return dict(answer)
