"""Where a route's requests go: a provider's Chat Completions endpoint, spoken to directly.

The gateway forwards the client's JSON as it came (with the pinned model put in), so it talks
HTTP itself through one pooled httpx client per worker instead of rebuilding each request
through an SDK. The provider's key comes from the provider, as for workflows; nothing of the
client's request headers is sent on, so its key never leaves the gateway.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx

from smallops import __version__
from smallops.error_types import ProviderFailure
from smallops.providers.base import Provider, ProviderError, parse_retry_after
from smallops.redact import Redactor

USER_AGENT = f"smallops-gateway/{__version__}"
CONNECT_TIMEOUT = 10.0
#: Up to this many upstream connections are kept open per worker between requests.
POOL = httpx.Limits(max_connections=1000, max_keepalive_connections=256, keepalive_expiry=30)


@dataclass(frozen=True)
class Answer:
    """An upstream response that was read whole."""

    status: int
    headers: httpx.Headers
    content: bytes


class Upstream:
    """One provider's endpoint: its URL and key, and the worker's shared client."""

    def __init__(self, provider: Provider, client: httpx.AsyncClient) -> None:
        self.provider = provider
        self.name = provider.name
        self.endpoint = provider.endpoint
        base_url = str(getattr(provider, "base_url", "") or "")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self._client = client
        self._key: str | None = None

    async def _headers(self) -> dict[str, str]:
        key = self._key
        if key is None:  # the first request asks the provider (a secret store may be slow)
            key = self._key = await asyncio.to_thread(provider_key, self.provider)
        return {
            "authorization": f"Bearer {key}",
            "content-type": "application/json",
            "accept": "application/json",
            "user-agent": USER_AGENT,
        }

    async def post(self, body: bytes, timeout: float) -> Answer:
        """Send and read the whole answer; ProviderError when there is none (or an error)."""
        try:
            response = await self._client.post(
                self.url, content=body, headers=await self._headers(), timeout=_timeout(timeout)
            )
        except httpx.HTTPError as exc:
            raise transport_error(exc) from None
        answer = Answer(response.status_code, response.headers, response.content)
        if answer.status >= 400:
            raise status_error(answer)
        return answer

    async def open_stream(self, body: bytes, timeout: float) -> httpx.Response:
        """Send, and return the response with its body still to be read (200 only)."""
        request = self._client.build_request(
            "POST", self.url, content=body, headers=await self._headers(), timeout=_timeout(timeout)
        )
        try:
            response = await self._client.send(request, stream=True)
            if response.status_code >= 400:
                content = await response.aread()
                await response.aclose()
                raise status_error(Answer(response.status_code, response.headers, content))
        except httpx.HTTPError as exc:
            raise transport_error(exc) from None
        return response


def provider_key(provider: Provider) -> str:
    """The provider's key, as its SDK clients get it (registered for redaction there)."""
    read: Any = getattr(provider, "_key", None) or provider._api_key  # type: ignore[attr-defined]
    return str(read())


def _timeout(seconds: float) -> httpx.Timeout:
    return httpx.Timeout(seconds, connect=min(seconds, CONNECT_TIMEOUT))


def transport_error(exc: httpx.HTTPError) -> ProviderError:
    if isinstance(exc, httpx.TimeoutException):
        return ProviderError("timeout", "the upstream request timed out")
    return ProviderError("connection_error", f"upstream connection failed: {type(exc).__name__}")


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


def status_kind(status: int) -> ProviderFailure:
    """What an HTTP status says about the request, as the SDK providers judge it."""
    if status == 429:
        return "rate_limited"
    if status in (401, 403):
        return "auth_error"
    if status == 408:
        return "timeout"
    if status == 409 or status >= 500:
        return "server_error"
    return "bad_request"


def new_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(limits=POOL, http2=False, follow_redirects=False)
