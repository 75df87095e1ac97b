"""``GET /metrics`` in Prometheus text format."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from aftercare.ops.db_metrics import DatabaseCollector
from aftercare.web.deps import RuntimeDep

router = APIRouter(tags=["operations"])


@router.get("/metrics", response_class=Response)
def metrics(rt: RuntimeDep) -> Response:
    """Reminders by state, channel and step; open flags; overdue work."""
    registry = CollectorRegistry()
    registry.register(DatabaseCollector(rt))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
