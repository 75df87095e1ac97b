"""The Celery face: the app, its configuration, and thin tasks that take ids."""
