"""A lean HTTP layer for the ``twilio`` client: a ``twilio.http.HttpClient`` over ``http.client``.

Why: the stock ``TwilioHttpClient`` goes through ``requests``, which per request re-reads the
proxy variables from the whole environment (``merge_environment_settings``, twice over
``os.environ``), rebuilds and re-merges the request, and writes headers and body in two socket
writes; that was ~0.65 ms of CPU per SMS. Here each origin's proxy is resolved once (with
requests' own rules, so ``HTTPS_PROXY``/``NO_PROXY`` mean what they meant), and a request is
one write on a kept-alive connection.

One client per thread (it holds one connection per origin and no lock). It never retries, never
follows redirects and logs nothing (request URLs hold the recipient's number). A failure below
HTTP is a :class:`HttpFailure` that says whether the request may have reached the server.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import select
import socket
import ssl
import weakref
import zlib
from dataclasses import dataclass
from logging import Logger
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit

from twilio.http import HttpClient
from twilio.http.response import Response

# The proxy schemes this layer speaks; anything else (socks, a TLS proxy) keeps the stock client.
SUPPORTED_PROXY_SCHEMES = frozenset({"http"})
_JSON_TYPES = ("application/json", "application/scim+json")


class HttpFailure(Exception):
    """No HTTP answer. ``sent`` is False only when the request certainly never left (the
    connection, proxy tunnel or TLS handshake did not complete)."""

    def __init__(self, kind: str, *, sent: bool) -> None:
        super().__init__(kind)
        self.kind = kind
        self.sent = sent


@dataclass(frozen=True)
class Route:
    """How to reach one origin: directly, or through an HTTP proxy (with its credentials)."""

    scheme: str
    host: str
    port: int
    proxy_host: str = ""
    proxy_port: int = 0
    proxy_auth: str = ""  # a ready Proxy-Authorization value, or ""

    @property
    def proxied(self) -> bool:
        return bool(self.proxy_host)


def proxy_for(url: str) -> str | None:
    """The proxy requests would use for ``url`` from the environment (``*_PROXY``, ``NO_PROXY``),
    with a scheme; ``None`` for a direct connection."""
    from requests.utils import get_environ_proxies, prepend_scheme_if_needed, select_proxy

    proxy = select_proxy(url, get_environ_proxies(url))
    return prepend_scheme_if_needed(proxy, "http") if proxy else None


def supported(url: str) -> bool:
    """True when this layer can reach ``url`` as requests would (no socks or TLS proxy)."""
    proxy = proxy_for(url)
    return proxy is None or urlsplit(proxy).scheme in SUPPORTED_PROXY_SCHEMES


def route_for(url: str) -> Route:
    """Resolve ``url``'s origin and proxy once; raises ValueError for what cannot be reached."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {scheme or 'no scheme'}")
    port = parts.port or (443 if scheme == "https" else 80)
    proxy = proxy_for(url)
    if proxy is None:
        return Route(scheme, parts.hostname, port)
    pparts = urlsplit(proxy)
    if pparts.scheme not in SUPPORTED_PROXY_SCHEMES or not pparts.hostname:
        raise ValueError(f"unsupported proxy scheme: {pparts.scheme}")
    auth = ""
    if pparts.username is not None:
        auth = basic_auth(unquote(pparts.username), unquote(pparts.password or ""))
    return Route(scheme, parts.hostname, port, pparts.hostname, pparts.port or 80, auth)


def basic_auth(username: str, password: str) -> str:
    """An ``Authorization: Basic`` value, encoded as requests encodes it."""
    token = base64.b64encode(f"{username}:{password}".encode("latin1")).decode("ascii")
    return f"Basic {token}"


def form_encode(data: dict[str, object]) -> str:
    """Form-encode ``data`` as requests does: list values repeat the key, ``None`` items drop."""
    pairs: list[tuple[str, object]] = []
    for key, value in data.items():
        values = value if isinstance(value, list | tuple) else [value]
        pairs.extend((key, v) for v in values if v is not None)
    return urlencode(pairs)


class _OneWrite:
    """Mixin for ``http.client`` connections: :meth:`send_request` hands the whole request
    (request line, headers and body) to the socket in one write, not one per part."""

    _pending: list[bytes] | None = None

    def send(self, data: Any) -> None:
        if self._pending is not None:
            self._pending.append(bytes(data))
        else:
            super().send(data)  # type: ignore[misc]

    def send_request(
        self, method: str, target: str, body: bytes | None, headers: dict[str, str]
    ) -> None:
        self._pending = []
        try:
            self.request(method, target, body=body, headers=headers)  # type: ignore[attr-defined]
            data = b"".join(self._pending)
        finally:
            self._pending = None
        self.send(data)


class _Http(_OneWrite, http.client.HTTPConnection):
    pass


class _Https(_OneWrite, http.client.HTTPSConnection):
    pass


def _dropped(sock: socket.socket) -> bool:
    """An idle kept-alive socket with something to read has been closed (or is out of step)."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class LeanHttpClient(HttpClient):  # type: ignore[misc]
    """The twilio client's HTTP layer over ``http.client``; see the module docstring."""

    def __init__(self, *, connect_timeout: float, read_timeout: float, logger: Logger) -> None:
        super().__init__(logger, False, read_timeout)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._routes: dict[tuple[str, str], Route] = {}
        self._conns: dict[Route, _Http | _Https] = {}
        self._auth: dict[tuple[str, str], str] = {}
        self._tls: ssl.SSLContext | None = None
        # The thread that built it may end without closing it (as urllib3's pools do on GC).
        weakref.finalize(self, _close_all, self._conns)

    def request(  # noqa: PLR0917 (twilio's HttpClient.request signature)
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> Response:
        """Send one request and read the whole answer (redirects are returned, not followed)."""
        if timeout is not None and timeout <= 0:
            raise ValueError(timeout)
        method = method.upper()
        connect, read = (
            (self.connect_timeout, self.read_timeout) if timeout is None else (timeout, timeout)
        )
        parts = urlsplit(url)
        try:
            route = self._route(parts.scheme, parts.netloc, url)
        except ValueError as exc:
            raise HttpFailure(f"InvalidURL: {exc}", sent=False) from None
        target = parts.path or "/"
        query = parts.query
        if params:
            encoded = form_encode(params)
            query = f"{query}&{encoded}" if query else encoded
        if query:
            target = f"{target}?{query}"
        if route.proxied and route.scheme == "http":
            # A plain-HTTP request through a proxy names the whole URL.
            target = f"http://{parts.netloc.rpartition('@')[2]}{target}"
        sent_headers = dict(headers or {})
        content_type = sent_headers.get("Content-Type")
        body: bytes | None
        if data and content_type in _JSON_TYPES:
            body = json.dumps(data, allow_nan=False).encode()
        elif data:
            body = form_encode(data).encode()
        else:
            body = None if method in ("GET", "HEAD") else b""
        if auth is not None:
            sent_headers["Authorization"] = self._basic(auth)
        if route.proxied and route.scheme == "http" and route.proxy_auth:
            sent_headers["Proxy-Authorization"] = route.proxy_auth
        conn = self._connection(route, connect)
        try:
            conn.sock.settimeout(connect)
            conn.send_request(method, target, body, sent_headers)
            conn.sock.settimeout(read)
            answer = conn.getresponse()
            raw = answer.read()
        except TimeoutError:
            self._discard(route)
            raise HttpFailure("ReadTimeout", sent=True) from None
        except (OSError, http.client.HTTPException) as exc:
            self._discard(route)
            raise HttpFailure(type(exc).__name__, sent=True) from None
        if answer.will_close:
            self._discard(route)
        return Response(answer.status, _text(answer, raw), answer.headers)

    def close(self) -> None:
        """Close every kept-alive connection."""
        _close_all(self._conns)

    def _basic(self, auth: tuple[str, str]) -> str:
        value = self._auth.get(auth)
        if value is None:
            value = self._auth[auth] = basic_auth(*auth)
        return value

    def _route(self, scheme: str, netloc: str, url: str) -> Route:
        key = (scheme, netloc)
        route = self._routes.get(key)
        if route is None:
            route = self._routes[key] = route_for(url)
        return route

    def _connection(self, route: Route, connect_timeout: float) -> _Http | _Https:
        """This origin's open connection, reused while the server keeps it, else a new one."""
        conn = self._conns.get(route)
        if conn is not None and conn.sock is not None and not _dropped(conn.sock):
            return conn
        self._discard(route)
        conn = self._open(route, connect_timeout)
        self._conns[route] = conn
        return conn

    def _open(self, route: Route, connect_timeout: float) -> _Http | _Https:
        host, port = (
            (route.proxy_host, route.proxy_port) if route.proxied else (route.host, route.port)
        )
        conn: _Http | _Https
        if route.scheme == "https":
            conn = _Https(host, port, timeout=connect_timeout, context=self._tls_context())
            if route.proxied:
                tunnel = {"Proxy-Authorization": route.proxy_auth} if route.proxy_auth else None
                conn.set_tunnel(route.host, route.port, headers=tunnel)
        else:
            conn = _Http(host, port, timeout=connect_timeout)
        try:
            conn.connect()  # TCP, then the proxy tunnel and the TLS handshake: nothing sent yet
            # Like urllib3: a request is one write, and nothing should wait for an ACK.
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except TimeoutError:
            conn.close()
            raise HttpFailure("ConnectTimeout", sent=False) from None
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise HttpFailure(type(exc).__name__, sent=False) from None
        return conn

    def _discard(self, route: Route) -> None:
        conn = self._conns.pop(route, None)
        if conn is not None:
            conn.close()

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            from urllib3.util import create_urllib3_context

            # requests' certificate bundle, and its variables to replace it.
            bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
            if not bundle:
                import certifi

                bundle = certifi.where()
            context = create_urllib3_context()
            if os.path.isdir(bundle):
                context.load_verify_locations(capath=bundle)
            else:
                context.load_verify_locations(cafile=bundle)
            self._tls = context
        return self._tls


def _close_all(conns: dict[Route, _Http | _Https]) -> None:
    while conns:
        conns.popitem()[1].close()


def _text(answer: http.client.HTTPResponse, raw: bytes) -> str:
    """The body as text: undone if compressed anyway, decoded by its charset (else UTF-8)."""
    if answer.getheader("Content-Encoding", "identity").lower() in ("gzip", "x-gzip", "deflate"):
        raw = zlib.decompressobj(zlib.MAX_WBITS | 32).decompress(raw)
    charset = answer.headers.get_content_charset() or "utf-8"
    try:
        return raw.decode(charset, errors="replace")
    except LookupError:
        return raw.decode("utf-8", errors="replace")
