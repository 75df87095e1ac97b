"""The HTTP layer under the ``twilio`` client: a small ``twilio.http.HttpClient`` over httpx.

httpx does the HTTP: one client per adapter keeps its connections alive and its proxy settings
(``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY``, ``NO_PROXY`` from the environment), verifies
certificates, and decodes compressed or chunked answers. This module adds what twilio's
interface and delivery need: the connect/read timeouts, requests' form encoding and CA-bundle
variables (what the stock requests-based client honoured), no logging of URLs (a lookup's URL
holds the recipient's number), and a :class:`HttpFailure` that says whether a failed request may
have reached Twilio. It never retries and never follows redirects.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import ssl
import threading
import weakref
from logging import Logger
from urllib.parse import urlencode, urlsplit

import httpx
from twilio.http import HttpClient
from twilio.http.response import Response

# The proxy schemes httpx speaks without extras; a SOCKS proxy keeps the stock client.
SUPPORTED_PROXY_SCHEMES = frozenset({"http", "https"})
_JSON_TYPES = ("application/json", "application/scim+json")
# httpx logs every request's URL at INFO, httpcore its steps at DEBUG.
_LOGGERS = ("httpx", "httpcore.connection", "httpcore.http11", "httpcore.proxy")
# The request never left: the connection, proxy tunnel or TLS handshake did not complete.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.ProxyError, httpx.PoolTimeout)


class HttpFailure(Exception):
    """No HTTP answer. ``sent`` is False only when the request certainly never left (the
    connection, proxy tunnel or TLS handshake did not complete)."""

    def __init__(self, kind: str, *, sent: bool) -> None:
        super().__init__(kind)
        self.kind = kind
        self.sent = sent


def proxy_for(url: str) -> str | None:
    """The proxy the environment names for ``url`` (``*_PROXY``, ``NO_PROXY``), with a scheme;
    ``None`` for a direct connection."""
    from requests.utils import get_environ_proxies, prepend_scheme_if_needed, select_proxy

    proxy = select_proxy(url, get_environ_proxies(url))
    return prepend_scheme_if_needed(proxy, "http") if proxy else None


def supported(url: str) -> bool:
    """True when httpx can reach ``url`` as the environment says (no SOCKS proxy)."""
    proxy = proxy_for(url)
    return proxy is None or urlsplit(proxy).scheme in SUPPORTED_PROXY_SCHEMES


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


class _Sending(threading.local):
    active = False


_sending = _Sending()


class _NotWhileSending(logging.Filter):
    """Drop httpx's and httpcore's records made while this thread sends through Twilio."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _sending.active


_QUIET = _NotWhileSending()


def _quieten() -> None:
    """Silence httpx's and httpcore's loggers: their levels up (httpcore's tracing otherwise
    formats a dozen DEBUG lines a request), and the filter for a configuration that lowers them."""
    for name in ("httpx", "httpcore"):
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.WARNING:
            logger.setLevel(logging.WARNING)
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if _QUIET not in logger.filters:
            logger.addFilter(_QUIET)


def _verify() -> ssl.SSLContext | bool:
    """requests' CA-bundle variables, if set; else httpx's own (certifi, ``SSL_CERT_FILE``)."""
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if not bundle:
        return True
    if os.path.isdir(bundle):
        return ssl.create_default_context(capath=bundle)
    return ssl.create_default_context(cafile=bundle)


class HttpxClient(HttpClient):  # type: ignore[misc]
    """The twilio client's HTTP layer over one ``httpx.Client``; see the module docstring."""

    def __init__(self, *, connect_timeout: float, read_timeout: float, logger: Logger) -> None:
        super().__init__(logger, False, read_timeout)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        _quieten()
        self._client = httpx.Client(
            # Connect and write under the connect timeout, the answer under the read timeout.
            timeout=httpx.Timeout(connect_timeout, read=read_timeout),
            verify=_verify(),
            follow_redirects=False,
            trust_env=True,
            # As the stock client was answered: uncompressed, nothing to undo.
            headers={"Accept-Encoding": "identity"},
        )
        self._auth: dict[tuple[str, str], str] = {}
        # The thread that built it may end without closing it.
        weakref.finalize(self, self._client.close)

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
        sent_headers = dict(headers or {})
        if params:
            url = f"{url}{'&' if '?' in url else '?'}{form_encode(params)}"
        body: bytes | None = None
        if data and sent_headers.get("Content-Type") in _JSON_TYPES:
            body = json.dumps(data, allow_nan=False).encode()
        elif data:
            body = form_encode(data).encode()
        if auth is not None:
            sent_headers["Authorization"] = self._basic(auth)
        _sending.active = True
        try:
            answer = self._client.request(
                method.upper(),
                url,
                content=body,
                headers=sent_headers,
                timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout,
            )
        except _NOT_SENT as exc:
            raise HttpFailure(type(exc).__name__, sent=False) from None
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise HttpFailure(f"InvalidURL: {exc}", sent=False) from None
        except httpx.HTTPError as exc:
            raise HttpFailure(type(exc).__name__, sent=True) from None
        finally:
            _sending.active = False
        return Response(answer.status_code, answer.text, answer.headers)

    def close(self) -> None:
        """Close every kept-alive connection."""
        self._client.close()

    def _basic(self, auth: tuple[str, str]) -> str:
        value = self._auth.get(auth)
        if value is None:
            value = self._auth[auth] = basic_auth(*auth)
        return value
