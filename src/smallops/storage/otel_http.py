"""A lean HTTP transport for the OTLP exporter: one kept-alive `http.client` connection.

The exporter's default transport, `requests`, runs about 2 ms of Python around each request of
a second's spans (several hundred KB), holding the interpreter lock that the application's
calls need meanwhile. `http.client` sends the same request with a tenth of that: the headers and
body go in one `sendall`, which releases the lock. Endpoint, headers, compression, timeout and
retries stay the exporter's own (its client calls `request` as it would call requests').

It is used where no proxy applies to the endpoint (the environment's HTTP(S)_PROXY /
NO_PROXY), no session provider is named and the SDK takes a transport. TLS verifies against the
certificate OTEL_EXPORTER_OTLP_(TRACES_)CERTIFICATE names, else the bundle REQUESTS_CA_BUNDLE or
CURL_CA_BUNDLE names, else certifi's (requests' default), with the client certificate and key
the SDK's variables name. A ~/.netrc is not read.
"""

from __future__ import annotations

import functools
import http.client
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

#: The most of a collector's answer that is read (it is an empty or tiny protobuf message);
#: past it the connection is closed rather than read on.
MAX_ANSWER_BYTES = 1 << 20

_CERTIFICATE = ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE")
_REQUESTS_BUNDLE = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")  # requests reads these too
_CLIENT_KEY = ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", "OTEL_EXPORTER_OTLP_CLIENT_KEY")
_CLIENT_CERTIFICATE = (
    "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
)


def lean_transport(endpoint: str, env: Mapping[str, str]) -> Any | None:
    """The transport for `endpoint`, or None where the exporter's own should send (a proxy,
    an SDK release without transports, an endpoint that is not http(s), a certificate that
    cannot be loaded)."""
    try:
        from requests.utils import get_environ_proxies

        transport = _classes()[1]
    except ImportError:
        return None
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    if get_environ_proxies(endpoint):
        return None  # requests knows proxies; this transport does not
    try:
        context = _tls_context(env) if parts.scheme == "https" else None
    except (OSError, ValueError):  # a certificate file missing or unreadable: the SDK's own
        return None  # transport reports it on each request, as it would without this one
    return transport(parts, context)


def _first(env: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return value
    return None


def _tls_context(env: Mapping[str, str]) -> ssl.SSLContext:
    """What to verify the collector with: the certificate the SDK's variable names, else the
    bundle requests' variables name, else certifi's (requests' default), else the system's; and
    the client certificate (with its key) if one is named. (requests itself lets
    REQUESTS_CA_BUNDLE override the SDK's certificate; here the SDK's own setting wins.)"""
    cafile = _first(env, _CERTIFICATE) or _first(env, _REQUESTS_BUNDLE)
    if cafile is None:
        try:
            import certifi

            cafile = certifi.where()
        except ImportError:
            cafile = None
    context = ssl.create_default_context(cafile=cafile)
    client_certificate = _first(env, _CLIENT_CERTIFICATE)
    if client_certificate:
        context.load_cert_chain(client_certificate, _first(env, _CLIENT_KEY))
    return context


@functools.cache
def _classes() -> tuple[type, type]:
    """The result and transport classes, made once on the SDK's base classes (which exist only
    when the SDK is installed, in releases that take a transport): ImportError otherwise."""
    from opentelemetry.exporter.http.transport._base import BaseHTTPResult, BaseHTTPTransport

    @dataclass(frozen=True, slots=True)
    class Result(BaseHTTPResult):
        body: bytes = field(default=b"", repr=False)
        header_map: Any = field(default=None, repr=False, hash=False, compare=False)

        def content(self) -> bytes:
            return self.body

        def headers(self) -> Mapping[str, str]:
            return self.header_map if self.header_map is not None else {}

    class Transport(BaseHTTPTransport):
        """One connection, opened when first needed and again after any failure."""

        def __init__(self, parts: Any, context: ssl.SSLContext | None) -> None:
            self._host, self._port = parts.hostname, parts.port
            self._context = context
            self._connection: http.client.HTTPConnection | None = None
            self._lock = threading.Lock()

        def request(
            self,
            method: str,
            url: str,
            *,
            headers: dict[str, str] | None = None,
            timeout: float | None = None,
            data: bytes | None = None,
        ) -> Any:
            parts = urlsplit(url)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            with self._lock:
                try:
                    connection = self._open(timeout)
                    connection.request(method, target, body=data, headers=headers or {})
                    response = connection.getresponse()
                    body = response.read(MAX_ANSWER_BYTES)
                    if not response.isclosed():  # an answer too long to read on
                        self._close()
                except Exception as error:
                    self._close()  # a stale keep-alive, a reset, a timeout: reconnect next time
                    return Result(error=error)
            return Result(
                status_code=response.status,
                reason=response.reason,
                body=body,
                header_map=response.msg,
            )

        def is_connection_error(self, exception: Exception | None) -> bool:
            """Refused, reset, closed, timed out, TLS or name lookup failed: what requests
            counts as a connection error (the exporter retries those)."""
            return isinstance(exception, (OSError, http.client.HTTPException))

        def close(self) -> None:
            with self._lock:
                self._close()

        def _open(self, timeout: float | None) -> http.client.HTTPConnection:
            connection = self._connection
            if connection is None:
                if self._context is None:
                    connection = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
                else:
                    connection = http.client.HTTPSConnection(
                        self._host, self._port, timeout=timeout, context=self._context
                    )
                self._connection = connection
            else:
                connection.timeout = timeout
                if connection.sock is not None:
                    connection.sock.settimeout(timeout)
            return connection

        def _close(self) -> None:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    return Result, Transport
