"""The app served by uvicorn on a loopback port, in a thread, configured as ``aftercare run``
serves it: for tests that need real HTTP (raw sockets, chunked bodies, concurrent clients)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn

from aftercare.cli.supervise import uvicorn_config


@dataclass(frozen=True)
class Live:
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@contextmanager
def serve(app: Any) -> Iterator[Live]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn_config(app, host="127.0.0.1", port=port)
    config.lifespan = "off"
    config.access_log = False
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the app did not start under uvicorn")
        time.sleep(0.02)
    try:
        yield Live("127.0.0.1", port)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
