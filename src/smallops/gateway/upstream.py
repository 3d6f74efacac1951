"""Where a route's requests go: a provider's Chat Completions endpoint, spoken to directly.

The gateway forwards the client's JSON as it came (with the pinned model put in), so it talks
HTTP itself instead of rebuilding each request through an SDK: through its own small HTTP/1.1
client (http1.py), or through httpx when a proxy (HTTPS_PROXY and the like) stands between it
and the provider. The provider's key comes from the provider, as for workflows; nothing of the
client's request headers is sent on, so its key never leaves the gateway.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
from pydantic_core import from_json, to_json

from smallops import __version__
from smallops.gateway.http1 import (
    AnswerTooLarge,
    Http1Pool,
    Http1Response,
    UpstreamConnectionError,
)
from smallops.providers._sdk import SdkClients, status_kind
from smallops.providers.base import Provider, ProviderError, parse_retry_after
from smallops.redact import Redactor

USER_AGENT = f"smallops-gateway/{__version__}"
CONNECT_TIMEOUT = 10.0
#: Up to this many upstream connections are kept open per worker between requests (httpx).
POOL = httpx.Limits(max_connections=1000, max_keepalive_connections=256, keepalive_expiry=30)
#: The most of a whole answer (or an error's body) read into memory: an upstream that sends
#: more is cut off there, and its answer is a bad_response.
MAX_ANSWER_BYTES = 32 * 2**20
#: The most of one streamed event held while it comes (no event of a chat stream is near it):
#: an upstream that sends more without ending the event has its stream cut as a bad_response.
MAX_EVENT_BYTES = 4 * 2**20


def event_too_large() -> ProviderError:
    return ProviderError("bad_response", f"an upstream event is over {MAX_EVENT_BYTES >> 20} MiB")


@dataclass(frozen=True)
class Answer:
    """An upstream response that was read whole."""

    status: int
    headers: httpx.Headers
    content: bytes
    wire: bytes | None = None  # the upstream's own body, when `content` is its translation


class Streamed(Protocol):
    """A 200 answer whose body is still to be read, event by event."""

    headers: httpx.Headers

    def chunks(self) -> AsyncIterator[bytes]: ...

    def progressed(self) -> None:
        """A real event came (not a keep-alive): the wait for the next one starts again."""

    async def aclose(self) -> None: ...


class StreamIdle(TimeoutError):
    """A stream that sent no real event for its route's timeout (keep-alives do not count)."""


class Upstream:
    """One provider's endpoint: its URL and key, and the worker's connections to it."""

    path = "/chat/completions"  # after the provider's base URL

    def __init__(self, provider: Provider, connections: Connections) -> None:
        self.provider = provider
        self.name = provider.name
        self.endpoint = provider.endpoint
        base_url = str(getattr(provider, "base_url", "") or "")
        self.url = base_url.rstrip("/") + self.path
        self._connections = connections
        self.proxied = uses_proxy(self.url)
        #: Whether the provider refused `stream_options` (Mistral's 422): it is not sent again.
        self.no_stream_options = False

    def request_body(
        self, request: dict[str, Any], model: str, stream: bool
    ) -> tuple[dict[str, Any], bytes]:
        """What is sent for the client's request: as it came, with the pinned model put in
        (and usage asked for, when streamed, unless the provider refuses to be asked); as a
        dict for the log, and as bytes."""
        sent = {**request, "model": model}
        if stream and self.no_stream_options:
            sent.pop("stream_options", None)
        elif stream:
            sent["stream_options"] = {**(sent.get("stream_options") or {}), "include_usage": True}
        return sent, to_json(sent)

    @staticmethod
    def sent_key(headers: dict[str, str]) -> str:
        """The provider key that `headers` carry."""
        return headers["authorization"].removeprefix("Bearer ")

    async def _headers(self, key: str | None = None) -> dict[str, str]:
        """The request's headers, with the provider's key as its cache has it now (a store's
        key is fetched in a thread: a store may be slow)."""
        if key is None:
            key = await provider_key(self.provider)
        return {
            "authorization": f"Bearer {key}",
            "content-type": "application/json",
            "accept": "application/json",
            "user-agent": USER_AGENT,
        }

    async def post(self, body: bytes, timeout: float) -> Answer:
        """Send and read the whole answer; ProviderError when there is none (or an error).
        After a 401, once more with the key fetched again, if it changed (a rotation)."""
        headers = await self._headers()
        try:
            return await self._post(body, timeout, headers)
        except ProviderError as exc:
            rotated = await rotated_key(self.provider, exc, self.sent_key(headers))
            if rotated is None:
                raise
            return await self._post(body, timeout, await self._headers(rotated))

    async def _post(self, body: bytes, timeout: float, headers: dict[str, str]) -> Answer:
        try:
            if self.proxied:  # httpx bounds each read only: the whole is bounded here
                sending = self._httpx_post(body, headers, timeout)
                answer = await asyncio.wait_for(sending, timeout)
            else:
                loop = asyncio.get_running_loop()
                end = loop.time() + timeout
                direct = await self._connections.http1().post(
                    self.url, headers, body, timeout, min(timeout, CONNECT_TIMEOUT)
                )
                content = await direct.read(end - loop.time(), MAX_ANSWER_BYTES)
                answer = Answer(direct.status, httpx.Headers(direct.headers), content)
        except Exception as exc:
            raise as_provider_error(exc) from None
        if answer.status >= 400:
            raise status_error(answer)
        return answer

    async def open_stream(self, body: bytes, timeout: float) -> Streamed:
        """Send, and return the answer with its body still to be read (200 only); after a
        401, once more with a rotated key, as `post`. A provider that refuses the field
        `stream_options` (Mistral answers 422: it sends usage unasked, in its last chunk) is
        sent the request again without it, and from then on never asked."""
        headers = await self._headers()
        if self.no_stream_options and b'"stream_options"' in body:
            body = without_stream_options(body)
        try:
            return await self._open_stream(body, timeout, headers)
        except ProviderError as exc:
            # Sent with it (a request that went out before the refusal was known, too), and
            # only the gateway's ask in it: else the client's own field may be the fault.
            if refuses_stream_options(exc) and only_usage_asked(body):
                self.no_stream_options = True
                return await self.open_stream(body, timeout)
            rotated = await rotated_key(self.provider, exc, self.sent_key(headers))
            if rotated is None:
                raise
            return await self._open_stream(body, timeout, await self._headers(rotated))

    async def _httpx_post(self, body: bytes, headers: dict[str, str], timeout: float) -> Answer:
        client = self._connections.httpx()
        request = client.build_request(
            "POST", self.url, content=body, headers=headers, timeout=_timeout(timeout)
        )
        response = await client.send(request, stream=True)
        try:
            return Answer(response.status_code, response.headers, await _read_whole(response))
        finally:
            await response.aclose()

    async def _open_stream(self, body: bytes, timeout: float, headers: dict[str, str]) -> Streamed:
        try:
            if self.proxied:
                return await self._httpx_stream(body, headers, timeout)
            direct = await self._connections.http1().post(
                self.url, headers, body, timeout, min(timeout, CONNECT_TIMEOUT)
            )
            if direct.status >= 400:
                content = await direct.read(timeout, MAX_ANSWER_BYTES)
                raise status_error(Answer(direct.status, httpx.Headers(direct.headers), content))
            return _Http1Stream(direct, timeout)
        except ProviderError:
            raise
        except Exception as exc:
            raise as_provider_error(exc) from None

    async def _httpx_stream(self, body: bytes, headers: dict[str, str], timeout: float) -> Streamed:
        client = self._connections.httpx()
        request = client.build_request(
            "POST", self.url, content=body, headers=headers, timeout=_timeout(timeout)
        )
        response = await client.send(request, stream=True)
        if response.status_code >= 400:
            try:  # httpx bounds each read only: an error body trickled in is bounded here
                content = await asyncio.wait_for(_read_whole(response), timeout)
            finally:
                await response.aclose()
            raise status_error(Answer(response.status_code, response.headers, content))
        return _HttpxStream(response, timeout)


class _IdleBounded:
    """A stream whose every wait for more is bounded from its last real event (`progressed`),
    not from its last bytes: an upstream that sends only keep-alive comments or pings, or
    nothing, is cut off `idle` seconds after its last data (StreamIdle), its connection
    closed."""

    def __init__(self, idle: float) -> None:
        self._idle = idle
        self._until = asyncio.get_running_loop().time() + idle

    def progressed(self) -> None:
        self._until = asyncio.get_running_loop().time() + self._idle

    def left(self) -> float:
        return max(0.0, self._until - asyncio.get_running_loop().time())

    async def chunks(self) -> AsyncIterator[bytes]:
        raw = self._raw()
        while True:
            try:
                chunk = await self._next(raw)
            except StopAsyncIteration:
                return
            except (TimeoutError, asyncio.TimeoutError):
                raise StreamIdle(f"the upstream sent no data for {self._idle:.3g} s") from None
            yield chunk

    def _raw(self) -> AsyncIterator[bytes]:
        raise NotImplementedError

    async def _next(self, raw: AsyncIterator[bytes]) -> bytes:
        raise NotImplementedError


class _Http1Stream(_IdleBounded):
    def __init__(self, response: Http1Response, timeout: float) -> None:
        super().__init__(timeout)
        self._response = response
        self.headers = httpx.Headers(response.headers)

    def _raw(self) -> AsyncIterator[bytes]:
        return self._response.chunks(self.left)  # its waits end when the bound does

    async def _next(self, raw: AsyncIterator[bytes]) -> bytes:
        return await anext(raw)

    async def aclose(self) -> None:
        self._response.close()


class _HttpxStream(_IdleBounded):
    def __init__(self, response: httpx.Response, timeout: float) -> None:
        super().__init__(timeout)
        self._response = response
        self.headers = response.headers

    def _raw(self) -> AsyncIterator[bytes]:
        return self._response.aiter_raw()

    async def _next(self, raw: AsyncIterator[bytes]) -> bytes:
        return await asyncio.wait_for(anext(raw), self.left())

    async def aclose(self) -> None:
        await self._response.aclose()


class Connections:
    """The worker's upstream connections: its HTTP/1.1 pool, and an httpx client for proxies."""

    def __init__(self) -> None:
        self._http1: Http1Pool | None = None
        self._httpx: httpx.AsyncClient | None = None

    def http1(self) -> Http1Pool:
        if self._http1 is None:
            self._http1 = Http1Pool()
        return self._http1

    def httpx(self) -> httpx.AsyncClient:
        if self._httpx is None:
            self._httpx = httpx.AsyncClient(limits=POOL, follow_redirects=False, trust_env=True)
        return self._httpx

    async def aclose(self) -> None:
        if self._http1 is not None:
            self._http1.close()
        if self._httpx is not None:
            await self._httpx.aclose()


def uses_proxy(url: str) -> bool:
    """Whether the environment puts a proxy between the gateway and `url` (as httpx reads it)."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    if not (proxies.get(parts.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(parts.hostname or "")


async def provider_key(provider: Provider) -> str:
    """The provider's key, as its SDK clients get it (registered for redaction there);
    ProviderError("secret_unavailable") when none can be had."""
    if not isinstance(provider, SdkClients):
        raise ProviderError("bad_request", f"provider '{provider.name}' has no HTTP endpoint")
    return await provider.akey()


async def rotated_key(provider: Provider, error: ProviderError, sent: str) -> str | None:
    """After the upstream refused the key `sent` with a 401: the key fetched again if it
    changed, else None (the refusal stands). A 403 is not a rotation."""
    if error.status_code != 401 or not isinstance(provider, SdkClients):
        return None
    return await asyncio.to_thread(provider.rotated, sent)


def refuses_stream_options(error: ProviderError) -> bool:
    """Whether an upstream's 400 or 422 is its refusal of the field `stream_options`."""
    return error.status_code in (400, 422) and "stream_options" in (error.raw or "")


def only_usage_asked(body: bytes) -> bool:
    """Whether the request's `stream_options` is the gateway's own ask for usage alone: a
    refusal of anything more may be of what the client put there, and is the client's."""
    try:
        return bool(from_json(body).get("stream_options") == {"include_usage": True})
    except ValueError:
        return False


def without_stream_options(body: bytes) -> bytes:
    request = from_json(body)
    request.pop("stream_options", None)
    return to_json(request)


async def _read_whole(response: httpx.Response) -> bytes:
    """An httpx answer's body (decoded), up to MAX_ANSWER_BYTES: AnswerTooLarge past it."""
    limit = MAX_ANSWER_BYTES
    declared = response.headers.get("content-length", "")
    if declared.strip().isdigit() and int(declared) > limit:
        raise AnswerTooLarge(limit)
    parts, size = [], 0
    async for part in response.aiter_bytes():
        size += len(part)
        if size > limit:
            raise AnswerTooLarge(limit)
        parts.append(part)
    return b"".join(parts)


def _timeout(seconds: float) -> httpx.Timeout:
    return httpx.Timeout(seconds, connect=min(seconds, CONNECT_TIMEOUT))


def as_provider_error(exc: BaseException) -> ProviderError:
    """A failure to get an answer (either client's) as the ProviderError it amounts to."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, AnswerTooLarge):
        return ProviderError("bad_response", f"{exc}: it was not read")
    if isinstance(exc, UpstreamConnectionError):  # the gateway's own words: no upstream text
        return ProviderError("connection_error", f"upstream connection failed: {exc}")
    if isinstance(exc, StreamIdle):
        return ProviderError("timeout", f"{exc} (keep-alives aside)")
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError, httpx.TimeoutException)):
        return ProviderError("timeout", "the upstream request timed out")
    if isinstance(exc, (OSError, httpx.HTTPError)):
        return ProviderError(
            "connection_error", f"upstream connection failed: {type(exc).__name__}"
        )
    return ProviderError("bad_response", f"upstream failure: {type(exc).__name__}")


def status_error(answer: Answer) -> ProviderError:
    """An upstream error response as a ProviderError that keeps its status, body and wait."""
    raw = Redactor.from_environment()(answer.content.decode("utf-8", "replace")) or ""
    return ProviderError(
        status_kind(answer.status),
        f"HTTP {answer.status}: {raw[:500]}",
        status_code=answer.status,
        retry_after=parse_retry_after(answer.headers),
        raw=raw,
    )
