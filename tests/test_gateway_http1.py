"""The gateway's HTTP/1.1 upstream client against a raw asyncio server on 127.0.0.1: keep-alive
reuse, a connection the server closed while idle, chunked bodies, timeouts, a cut answer."""

from __future__ import annotations

import asyncio

import pytest

from smallops.gateway.http1 import HIGH_WATER, AnswerTooLarge, Http1Pool, UpstreamConnectionError

OK = b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 12\r\n\r\n{"ok": true}'


class Cut(bytes):
    """An answer after which the server closes the connection."""


class RawServer:
    """Answers each request with the next of `answers` (bytes; None: close without a word;
    Cut: close after it), counting connections and requests."""

    def __init__(self, *answers: bytes | None, close_after: bool = False) -> None:
        self.answers = list(answers)
        self.close_after = close_after
        self.connections = 0
        self.requests = 0

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1/chat/completions"

    async def __aexit__(self, *_: object) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                await reader.readexactly(length)
                self.requests += 1
                answer = self.answers.pop(0) if self.answers else OK
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if self.close_after or isinstance(answer, Cut):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


def post(pool: Http1Pool, url: str, timeout: float = 2.0):
    async def go():
        response = await pool.post(url, {"content-type": "application/json"}, b"{}", timeout, 1.0)
        return response.status, dict(response.headers), await response.read(timeout, 2**20)

    return go()


def test_connections_are_kept_alive_and_reused():
    async def main():
        pool = Http1Pool()
        server = RawServer()
        async with server as url:
            for _ in range(5):
                status, headers, body = await post(pool, url)
                assert (status, body) == (200, b'{"ok": true}')
            assert headers[b"content-type"] == b"application/json"
            assert server.connections == 1
        pool.close()

    asyncio.run(main())


def test_a_connection_the_server_closed_while_idle_is_replaced():
    async def main():
        pool = Http1Pool()
        server = RawServer(close_after=True)
        async with server as url:
            assert (await post(pool, url))[0] == 200
            await asyncio.sleep(0.05)  # the close reaches the idle connection
            assert (await post(pool, url))[0] == 200
            assert server.connections == 2
        pool.close()

    asyncio.run(main())


def test_a_chunked_body_arrives_whole_and_a_cut_answer_is_a_connection_error():
    chunked = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    cut = b'HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{"partial"'

    async def main():
        pool = Http1Pool()
        async with RawServer(chunked, cut, close_after=False) as url:
            assert (await post(pool, url))[2] == b"hello world"
        server = RawServer(cut, close_after=True)
        async with server as url:
            with pytest.raises(UpstreamConnectionError):
                await post(pool, url)
        pool.close()

    asyncio.run(main())


def test_no_answer_in_time_is_a_timeout():
    async def main():
        pool = Http1Pool()
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        with pytest.raises((asyncio.TimeoutError, TimeoutError)):
            await post(pool, f"http://127.0.0.1:{port}/v1", timeout=0.2)
        server.close()
        pool.close()

    asyncio.run(main())


def test_a_reader_slower_than_the_upstream_holds_a_bounded_part_of_the_body():
    """20 MiB streamed to a reader that waits: the connection stops reading once HIGH_WATER is
    held (the rest waits in the sockets, the upstream's writes held back), then the whole body
    still arrives once the reader reads."""
    size = 20 * 2**20
    answer = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size + b"x" * size

    async def main():
        pool = Http1Pool()
        async with RawServer(answer) as url:
            response = await pool.post(url, {}, b"{}", 5.0, 1.0)
            await asyncio.sleep(0.5)
            held = response._connection._buffered
            assert 0 < held < HIGH_WATER + 2**20
            got = 0
            async for chunk in response.chunks(lambda: 5.0):
                got += len(chunk)
            assert got == size
        pool.close()

    asyncio.run(main())


def test_an_answer_over_the_readers_limit_is_dropped_at_its_content_length():
    big = b"HTTP/1.1 200 OK\r\ncontent-length: 999999999\r\n\r\n{"

    async def main():
        pool = Http1Pool()
        async with RawServer(big) as url:
            response = await pool.post(url, {}, b"{}", 5.0, 1.0)
            with pytest.raises(AnswerTooLarge):
                await response.read(5.0, 2**20)
            assert response._connection.closed
        pool.close()

    asyncio.run(main())


def test_interim_answers_are_skipped_and_count_toward_the_heads_bound():
    early = b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n"
    endless = b"HTTP/1.1 100 Continue\r\nx-pad: " + b"p" * 1000 + b"\r\n\r\n"

    async def main():
        pool = Http1Pool()
        server = RawServer(early + b"HTTP/1.1 100 Continue\r\n\r\n" + OK)
        async with server as url:
            status, headers, body = await post(pool, url)
            assert (status, body) == (200, b'{"ok": true}')
            assert b"link" not in headers and headers[b"content-type"] == b"application/json"
            assert (await post(pool, url))[0] == 200  # the connection stays usable
            assert server.connections == 1
        async with RawServer(endless * 80) as url:  # interim answers without end: 80 KB
            with pytest.raises(UpstreamConnectionError, match="headers are over 64 KiB"):
                await post(pool, url)
        pool.close()

    asyncio.run(main())


def test_a_kept_alive_connection_cut_after_it_began_answering_is_not_sent_the_request_again():
    """A connection reused from the pool that closes before any answer was closed while idle:
    the request goes again on a new one. One that closes after an interim answer (or part of
    a head) had the request: sending it again would have the upstream answer it twice."""

    async def main():
        pool = Http1Pool()
        server = RawServer(OK, Cut(b"HTTP/1.1 103 Early Hints\r\n\r\n"))
        async with server as url:
            assert (await post(pool, url))[0] == 200
            with pytest.raises(UpstreamConnectionError, match="closed the connection"):
                await post(pool, url)
            assert (server.requests, server.connections) == (2, 1)
        pool.close()

    asyncio.run(main())


def test_a_switch_of_protocols_the_gateway_never_asked_for_is_an_unreadable_answer():
    """A 101 is no answer to a POST that asked for no upgrade: what follows it is not HTTP,
    so it is a connection error, not a final answer with an empty body."""
    switched = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\nconnection: upgrade\r\n\r\nxyz"

    async def main():
        pool = Http1Pool()
        async with RawServer(switched) as url:
            with pytest.raises(UpstreamConnectionError, match="101"):
                await post(pool, url)
        pool.close()

    asyncio.run(main())
