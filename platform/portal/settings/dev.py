"""Development and the demo: SQLite unless DATABASE_URL says otherwise, debug on."""

from portal.settings.base import *  # noqa: F403
from portal.settings.base import VAR_DIR, env

DEBUG = True
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="dev-only-insecure-key-never-used-in-production")
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'portal.sqlite3'}")}

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web server, the worker and every hospital's requests write concurrently. A deferred
    # transaction that reads and then writes fails at once with "database is locked" when
    # another writer got there first (SQLite cannot wait without risking deadlock), so each
    # transaction takes the write lock when it begins and waits its turn; WAL lets reads
    # proceed while one writes.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        transaction_mode="IMMEDIATE",
        timeout=20,
        init_command="PRAGMA journal_mode=WAL;",
    )
