"""The web face: JSON API, webhooks and staff pages (FastAPI)."""
