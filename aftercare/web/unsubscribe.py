"""Routes: unsubscribe (built in its own issue)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
