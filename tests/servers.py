"""Real servers for the test session, started from the machine's binaries on free loopback ports."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from federation.deployment import free_port

POSTGRES_USER = "postgres"


@dataclass(frozen=True)
class Postgres:
    host: str
    port: int
    user: str

    def url(self, name: str) -> str:
        return f"postgres://{self.user}@{self.host}:{self.port}/{name}"


def _as_postgres(command: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root, and sessions and CI run as root (STACK-NOTES).
    return ["runuser", "-u", POSTGRES_USER, "--", *command] if os.geteuid() == 0 else command


@contextmanager
def postgres_server() -> Iterator[Postgres]:
    """A throwaway PostgreSQL cluster with trust auth on loopback, removed afterwards."""
    if shutil.which("initdb") is None:
        raise RuntimeError(
            "PostgreSQL binaries (initdb, pg_ctl) are needed: apt-get install postgresql"
        )
    root = Path(tempfile.mkdtemp(prefix="cohort-pg-"))
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, user=POSTGRES_USER)
    port = free_port()
    subprocess.run(
        _as_postgres(["initdb", "-D", str(data), "-A", "trust", "-U", POSTGRES_USER, "--no-sync"]),
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        _as_postgres(
            ["pg_ctl", "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start"]
        ),
        check=True,
        capture_output=True,
    )
    try:
        yield Postgres(host="127.0.0.1", port=port, user=POSTGRES_USER)
    finally:
        subprocess.run(
            _as_postgres(["pg_ctl", "-D", str(data), "-m", "immediate", "stop"]),
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


def wait_until(predicate, *, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout_s:g} s")
        time.sleep(0.2)
