"""Who the client is: the connecting address, or what a trusted reverse proxy says it is.

``X-Forwarded-For`` is believed only from the proxies named in ``AFTERCARE_TRUSTED_PROXIES``
(IPs or CIDR networks; empty by default). From those, the client is the rightmost address that is
not itself a trusted proxy: a client can prepend whatever it likes to the header, but not what
the proxy appends. The parsing is uvicorn's own ``ProxyHeadersMiddleware``; uvicorn's
``--proxy-headers`` must stay off (``aftercare run`` and docker-compose turn it off), or it would
rewrite the address before this middleware sees the connection.
"""

from __future__ import annotations

from typing import Any, cast

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from aftercare.web.deps import app_runtime


class TrustedProxies:
    """ASGI middleware: forwarded headers from the configured proxies only (read per request, so
    the app can be built before its settings are)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._by_setting: dict[str, ProxyHeadersMiddleware] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        settings = app_runtime(scope["app"]).settings
        if not settings.trusted_proxies:
            await self.app(scope, receive, send)
            return
        inner = self._by_setting.get(settings.trusted_proxies)
        if inner is None:
            # uvicorn's ASGI type aliases are its own; the callables are the same.
            inner = ProxyHeadersMiddleware(
                cast("Any", self.app), trusted_hosts=settings.trusted_proxy_list
            )
            self._by_setting[settings.trusted_proxies] = inner
        await inner(cast("Any", scope), cast("Any", receive), cast("Any", send))
