"""Serve a worker's metrics. Prefork children share counters through multiprocess files."""

from __future__ import annotations

import os
import shutil

from aftercare.private import private_dir
from aftercare.settings import Settings


def serve_worker_metrics(settings: Settings) -> None:
    """Start the metrics endpoint; must run before prometheus_client is used in this process."""
    folder = settings.data_dir / "metrics" / f"worker-{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)
    private_dir(folder)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    start_http_server(settings.worker_metrics_port, registry=registry)
