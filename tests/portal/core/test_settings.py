"""Production settings: `check --deploy` is clean, and a missing secret fails loudly."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_DIR = Path(__file__).resolve().parents[3]
MANAGE = REPO_DIR / "manage.py"

PROD_ENV = {
    "DJANGO_SETTINGS_MODULE": "portal.settings.prod",
    "DJANGO_SECRET_KEY": "k9V2-q8Zt_3rHc5yX1mW7pL0sD4fG6jB-nE2uA8oI3tR5vY9zQ1xC7bN0mK4hJ6gF",
    "DJANGO_ALLOWED_HOSTS": "cohort.example.org,portal.example.org",
    "DATABASE_URL": "postgres://cohort:example@db.example.org:5432/cohort",
    "COHORT_REDIS_URL": "redis://redis.example.org:6379/0",
    "COHORT_SUPERLINK_ADDRESS": "superlink.example.org:9093",
    "COHORT_PORTAL_URL": "https://cohort.example.org",
}


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # A clean slate: nothing from the test session's own configuration leaks into the child.
    base = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "COHORT_")) and key != "DATABASE_URL"
    }
    return subprocess.run(
        [sys.executable, str(MANAGE), *args],
        env={**base, **env},
        cwd=REPO_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_deploy_check_reports_no_issues_with_production_settings():
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=PROD_ENV)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "System check identified no issues" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    "missing",
    [
        "DJANGO_SECRET_KEY",
        "DATABASE_URL",
        "DJANGO_ALLOWED_HOSTS",
        "COHORT_REDIS_URL",
        "COHORT_PORTAL_URL",
    ],
)
def test_a_missing_production_secret_fails_loudly_and_names_it(missing):
    env = {key: value for key, value in PROD_ENV.items() if key != missing}
    result = manage("check", env=env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert f"{missing} must be set in the environment" in result.stderr


@pytest.mark.slow
def test_an_empty_secret_counts_as_missing():
    result = manage("check", env={**PROD_ENV, "DJANGO_SECRET_KEY": ""})
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY must be set in the environment" in result.stderr


def test_env_example_documents_every_variable_the_code_reads():
    reads = (
        r"""env(?:\.\w+)?\(\s*["']([A-Z][A-Z0-9_]+)["']""",  # django-environ in the settings
        r"""mandatory\(\s*["']([A-Z][A-Z0-9_]+)["']""",  # production's mandatory secrets
        r"""environ(?:\.get)?[\[(]\s*["']([A-Z][A-Z0-9_]+)["']""",  # os.environ in the demo
    )
    read = set()
    for module in (REPO_DIR / "platform").rglob("*.py"):
        source = module.read_text()
        for pattern in reads:
            read |= set(re.findall(pattern, source))
    read -= {"PATH", "HOME"}  # the operating system's, not Cohort's
    example = (REPO_DIR / ".env.example").read_text()
    documented = set(re.findall(r"^([A-Z][A-Z0-9_]+)=", example, flags=re.MULTILINE))
    assert {"DJANGO_SECRET_KEY", "DATABASE_URL", "COHORT_REDIS_URL"} <= read, "pattern changed?"
    assert read <= documented, f"undocumented in .env.example: {sorted(read - documented)}"
    assert "DJANGO_SETTINGS_MODULE" in documented


# Each thread reads, pauses so that the others read too, then writes: the pattern of the consent
# snapshot, which the demo's hospitals request at the same moment.
READ_THEN_WRITE_FROM_EIGHT_THREADS = """
import threading, time
from django.db import connection, transaction
with connection.cursor() as cursor:
    cursor.execute("create table served (n integer)")
failures = []
def read_then_write():
    try:
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("select count(*) from served")
                time.sleep(0.05)
                cursor.execute("insert into served values (1)")
    except Exception as error:
        failures.append(repr(error))
    finally:
        connection.close()
threads = [threading.Thread(target=read_then_write) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
with connection.cursor() as cursor:
    cursor.execute("select count(*) from served")
    print("served", cursor.fetchone()[0], "failures", failures)
"""


@pytest.mark.slow
def test_the_embedded_sqlite_serves_concurrent_read_then_write_transactions(tmp_path):
    result = manage(
        "shell",
        "-c",
        READ_THEN_WRITE_FROM_EIGHT_THREADS,
        env={"DJANGO_SETTINGS_MODULE": "portal.settings.dev", "COHORT_VAR_DIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    assert "served 8 failures []" in result.stdout
