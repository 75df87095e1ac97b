"""Aftercare: post-treatment reminders, planned in the database and delivered by Celery."""

__version__ = "0.1.0"
