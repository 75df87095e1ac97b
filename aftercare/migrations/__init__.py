"""Alembic migrations (run with ``aftercare migrate``)."""
