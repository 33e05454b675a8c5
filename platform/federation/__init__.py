"""Running Cohort's Flower app: a local deployment (SuperLink + SuperNodes) and its Control API.

Django-free; the portal's Celery tasks and the demo drive studies through it.
"""
