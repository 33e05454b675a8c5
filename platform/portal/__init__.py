"""The Cohort portal: Django project package (settings, URLs, Celery app)."""

from portal.celery import app as celery_app

__all__ = ["celery_app"]
