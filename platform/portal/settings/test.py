"""Tests: PostgreSQL started by the test session (tests/portal/conftest.py), fast hashing."""

from portal.settings.base import *  # noqa: F403
from portal.settings.base import env

SECRET_KEY = "test-only-key"  # noqa: S105 - never used outside the test session
# The test session's own PostgreSQL server fills in host and port (tests/portal/conftest.py).
DATABASES = {"default": env.db("DATABASE_URL", default="postgres://postgres@127.0.0.1:5432/cohort")}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # speed only; prod uses argon2
CELERY_TASK_ALWAYS_EAGER = False
