"""The portal's side of the demo: embedded Redis, Django on SQLite, a Celery worker, the web server.

Same code paths as a deployment; only the defaults are embedded (DESIGN: Distribution).
"""

from __future__ import annotations

import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from federation.deployment import LocalFederation, ManagedProcess
from portal.embedded import EmbeddedRedis

REPO_DIR = Path(__file__).resolve().parents[2]
WEB_START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Portal:
    url: str
    env: Mapping[str, str]


def portal_environment(
    *, out_dir: Path, redis_url: str, federation: LocalFederation, portal_url: str
) -> dict[str, str]:
    """What every portal process (this one, the worker, the web server) is configured with."""
    return {
        **federation.env,
        "DJANGO_SETTINGS_MODULE": "portal.settings.dev",
        # A busy SQLite file waits for its lock instead of failing: three processes share it.
        "DATABASE_URL": f"sqlite:///{(out_dir / 'portal.sqlite3').resolve()}?timeout=30",
        "COHORT_VAR_DIR": str(out_dir.resolve()),
        "COHORT_REDIS_URL": redis_url,
        "COHORT_SUPERLINK_ADDRESS": federation.address,
        "COHORT_FLWR_HOME": str(federation.flwr_home.resolve()),
        "COHORT_PORTAL_URL": portal_url,
    }


@contextmanager
def running_portal(
    *, out_dir: Path, federation: LocalFederation, host: str, port: int
) -> Iterator[Portal]:
    """Migrate a fresh database, then run the Celery worker and the web server until exit."""
    (out_dir / "portal.sqlite3").unlink(missing_ok=True)
    logs = out_dir / "logs"
    with ExitStack() as stack:
        redis = stack.enter_context(EmbeddedRedis(workdir=out_dir))
        url = f"http://{host}:{port}"
        env = portal_environment(
            out_dir=out_dir, redis_url=redis.url, federation=federation, portal_url=url
        )
        os.environ.update(env)
        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0)
        for name, command in (
            (
                "celery-worker",
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "portal",
                    "worker",
                    "--pool=solo",
                    "-l",
                    "info",
                ],
            ),
            (
                "web",
                [
                    sys.executable,
                    str(REPO_DIR / "manage.py"),
                    "runserver",
                    f"{host}:{port}",
                    "--noreload",
                ],
            ),
        ):
            process = ManagedProcess(name, command, log_path=logs / f"{name}.log", env=env)
            stack.callback(process.stop)
        _wait_for_web(url)
        yield Portal(url=url, env=env)


def _wait_for_web(url: str) -> None:
    deadline = time.monotonic() + WEB_START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/accounts/login/", timeout=2):  # noqa: S310 - loopback
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.5)
    raise TimeoutError(f"the portal did not answer at {url} within {WEB_START_TIMEOUT_S:g} s")
