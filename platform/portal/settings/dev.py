"""Development and the demo: SQLite unless DATABASE_URL says otherwise, debug on."""

from portal.settings.base import *  # noqa: F403
from portal.settings.base import VAR_DIR, env

DEBUG = True
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="dev-only-insecure-key-never-used-in-production")
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'portal.sqlite3'}")}
