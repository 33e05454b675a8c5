"""Runs of a study on the federation: their rounds and metrics, and the Celery tasks driving them."""
