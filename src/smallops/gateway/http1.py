"""A small HTTP/1.1 client for the gateway's upstream requests: asyncio protocols (uvloop's when
it runs) and httptools' parser (the C parser uvicorn uses), with a pool of keep-alive
connections per host.

httpx's async client costs about a millisecond per request on this path and collapses under
concurrency (its pool's locking); the gateway sends one kind of request to a few hosts, so a
client that does only that keeps the added latency in the tens of microseconds. A connection
closed before the whole answer was read is dropped, never reused, which is how a client that
leaves mid-stream cancels the upstream request.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import httptools

IDLE_PER_HOST = 256  # keep-alive connections kept open per host between requests
IDLE_FOR = 30.0  # seconds an idle connection is kept
#: The most an answer's status line and headers may take: past it, the connection is dropped.
MAX_HEAD_BYTES = 64 * 1024
#: Body bytes held unread (a stream's reader slower than its upstream) before the connection
#: stops reading from the socket; it reads again once they are down to a quarter of it.
HIGH_WATER = 1024 * 1024


class UpstreamConnectionError(ConnectionError):
    """The connection failed or closed before the answer was whole."""


class AnswerTooLarge(Exception):
    """A body longer than the reader's limit: the connection was dropped, unread."""

    def __init__(self, limit: int) -> None:
        size = f"{limit >> 20} MiB" if limit % 2**20 == 0 else f"{limit} bytes"
        super().__init__(f"the upstream's answer is over the gateway's limit of {size}")
        self.limit = limit


class Http1Response:
    """An answer whose status and headers are in; the body is read with `read` or `chunks`."""

    def __init__(self, connection: _Connection, pool: Http1Pool, key: tuple[str, int, bool]):
        self._connection = connection
        self._pool = pool
        self._key = key
        self.status = connection.status
        self.headers = connection.headers

    async def read(self, timeout: float, limit: int) -> bytes:
        """The whole body, within `timeout` seconds in all: an upstream that trickles its
        answer does not stretch it (TimeoutError); one longer than `limit` bytes is dropped
        as soon as that is known (AnswerTooLarge), from its content-length or as it comes."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        connection, parts, size = self._connection, [], 0
        try:
            if declared_length(self.headers) > limit:
                raise AnswerTooLarge(limit)
            while (chunk := await connection.next_chunk(max(0.0, end - loop.time()))) is not None:
                size += len(chunk)
                if size > limit:
                    raise AnswerTooLarge(limit)
                parts.append(chunk)
        except BaseException:
            self.close()
            raise
        self._pool.release(self._key, connection)
        return b"".join(parts)

    async def chunks(self, left: Callable[[], float]) -> AsyncIterator[bytes]:
        """The body as it arrives; each wait for more is bounded by the seconds `left()` gives
        when it starts (TimeoutError)."""
        connection = self._connection
        try:
            while True:
                chunk = await connection.next_chunk(left())
                if chunk is None:
                    break
                yield chunk
        except BaseException:
            self.close()
            raise
        self._pool.release(self._key, connection)

    def close(self) -> None:
        """Drop the connection (an unread answer cannot be followed on it)."""
        self._connection.close()


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self) -> None:
        self.transport: Any = None  # an asyncio.Transport (uvloop's are not its subclasses)
        self.closed = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = False
        self._interim = False
        self.keep_alive = False
        self._body: deque[bytes] = deque()
        self._head: asyncio.Future[None] | None = None
        self._more: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._head_bytes = self._header_bytes = 0
        self._buffered = 0
        self._paused = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if not self.status:  # the status line and headers are still coming: not for ever
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
            if not self.status and self._head_bytes > MAX_HEAD_BYTES:
                raise _head_too_large()
        except httptools.HttpParserError as exc:
            cause = exc.__context__ if isinstance(exc.__context__, UpstreamConnectionError) else exc
            self._fail(UpstreamConnectionError(f"unreadable answer: {cause}"))
            self.close()
        except UpstreamConnectionError as exc:
            self._fail(exc)
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete:
            self._fail(UpstreamConnectionError("the upstream closed the connection"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEAD_BYTES:
            raise _head_too_large()
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status == 101:  # no upgrade is asked for: what would follow is not HTTP
            raise UpstreamConnectionError("the upstream switched protocols (101)")
        if 100 <= status < 200:
            # An interim answer (103 Early Hints, say): the real one follows on the same
            # connection; its bytes count toward the head's bound all the same.
            self._interim = True
            self.headers = []
            return
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()  # known only until the body is read
        _wake(self._head)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._paused and not self.closed:
            self._paused = True
            self.transport.pause_reading()
        _wake(self._more)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self.complete = True
        _wake(self._more)

    # the request
    async def send(self, request: bytes, timeout: float) -> None:
        """Write the request and wait for the answer's status and headers."""
        if self.transport is None or self.closed:
            raise UpstreamConnectionError("the connection is closed")
        self._reset()
        self._head = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        await asyncio.wait_for(self._head, timeout)
        self._head = None

    async def next_chunk(self, timeout: float) -> bytes | None:
        """The next piece of body, or None at its end."""
        while not self._body:
            if self.complete:
                return None
            if self._error is not None:
                raise self._error
            self._more = asyncio.get_running_loop().create_future()
            await asyncio.wait_for(self._more, timeout)
            self._more = None
        chunk = self._body.popleft()
        self._buffered -= len(chunk)
        if self._paused and self._buffered <= HIGH_WATER // 4 and not self.closed:
            self._paused = False
            self.transport.resume_reading()
        return chunk

    @property
    def heard(self) -> bool:
        """Whether any of the answer to the request sent last has come."""
        return self._head_bytes > 0

    def reusable(self) -> bool:
        return self.complete and not self.closed and self.keep_alive

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _fail(self, error: BaseException) -> None:
        self._error = error
        for waiter in (self._head, self._more):
            if waiter is not None and not waiter.done():
                waiter.set_exception(error)


def _head_too_large() -> UpstreamConnectionError:
    return UpstreamConnectionError(f"the answer's headers are over {MAX_HEAD_BYTES >> 10} KiB")


def declared_length(headers: list[tuple[bytes, bytes]]) -> int:
    """The answer's content-length, or -1 when it has none that can be read."""
    for name, value in headers:
        if name == b"content-length":
            return int(value) if value.strip().isdigit() else -1
    return -1


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


class Http1Pool:
    """Keep-alive connections by (host, port, TLS), for one event loop."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int, bool], deque[_Connection]] = {}
        self._tls: ssl.SSLContext | None = None

    async def post(
        self, url: str, headers: dict[str, str], body: bytes, timeout: float, connect: float
    ) -> Http1Response:
        """Send a POST and return once its status and headers are in."""
        parts = urlsplit(url)
        tls = parts.scheme == "https"
        host = parts.hostname or ""
        key = (host, parts.port or (443 if tls else 80), tls)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        head = [f"POST {path} HTTP/1.1", f"host: {parts.netloc.rpartition('@')[2]}"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        head.append(f"content-length: {len(body)}")
        request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        connection = self._take(key)
        if connection is not None:
            try:
                await connection.send(request, timeout)
                return Http1Response(connection, self, key)
            except UpstreamConnectionError:
                connection.close()
                if connection.heard:  # it had the request (an interim answer, say): not twice
                    raise
                # closed by the server while idle: try a new one
            except BaseException:
                connection.close()
                raise
        connection = await self._open(key, connect)
        try:
            await connection.send(request, timeout)
        except BaseException:
            connection.close()
            raise
        return Http1Response(connection, self, key)

    def release(self, key: tuple[str, int, bool], connection: _Connection) -> None:
        if not connection.reusable():
            connection.close()
            return
        idle = self._idle.setdefault(key, deque())
        if len(idle) >= IDLE_PER_HOST:
            connection.close()
            return
        connection.idle_since = asyncio.get_running_loop().time()
        idle.append(connection)

    def close(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()

    def _take(self, key: tuple[str, int, bool]) -> _Connection | None:
        idle = self._idle.get(key)
        now = asyncio.get_running_loop().time()
        while idle:
            connection = idle.pop()
            if not connection.closed and now - connection.idle_since < IDLE_FOR:
                return connection
            connection.close()
        return None

    async def _open(self, key: tuple[str, int, bool], timeout: float) -> _Connection:
        host, port, tls = key
        if tls and self._tls is None:
            self._tls = ssl.create_default_context()
        loop = asyncio.get_running_loop()
        _, connection = await asyncio.wait_for(
            loop.create_connection(
                _Connection,
                host,
                port,
                ssl=self._tls if tls else None,
                server_hostname=host if tls else None,
            ),
            timeout,
        )
        return connection
