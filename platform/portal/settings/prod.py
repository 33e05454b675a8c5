"""Production: every secret from the environment with no default; fails loudly when missing."""

from django.core.exceptions import ImproperlyConfigured

from portal.settings.base import *  # noqa: F403
from portal.settings.base import env


def mandatory(name: str) -> str:
    value: str = env.str(name, default="")
    if not value:
        raise ImproperlyConfigured(f"{name} must be set in the environment for production")
    return value


SECRET_KEY = mandatory("DJANGO_SECRET_KEY")
ALLOWED_HOSTS = mandatory("DJANGO_ALLOWED_HOSTS").split(",")
DATABASES = {"default": env.db_url_config(mandatory("DATABASE_URL"))}
CELERY_BROKER_URL = mandatory("COHORT_REDIS_URL")
COHORT_SUPERLINK_ADDRESS = mandatory("COHORT_SUPERLINK_ADDRESS")
COHORT_PORTAL_URL = mandatory("COHORT_PORTAL_URL")

SECURE_SSL_REDIRECT = True
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_HSTS_SECONDS = 31536000
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
