"""Example Celery application of the bundle (`celery -A celery_example`)."""
from .app import app

__all__ = ["app"]
