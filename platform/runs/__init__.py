"""Runs of a study on the federation: rounds, metrics, and the Celery tasks that drive them."""
