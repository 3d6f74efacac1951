"""The Provider interface: what the call lifecycle needs from a model API, and nothing more.

A provider turns messages into one wire request (`prepare` once per workflow, `request` per call),
sends it (`send` / `asend`, the only sync/async pair), and normalises the answer into a Reply,
or raises ProviderError with a `kind` the retry policy and the audit trail understand.
"""

from __future__ import annotations

import email.utils
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from smallops.errors import (
    ProviderError as ProviderError,  # providers raise it; it lives in errors.py
)
from smallops.records import Usage


@dataclass(frozen=True)
class Params:
    """Generation parameters a workflow pins along with its model."""

    temperature: float | None = None
    max_tokens: int | None = None


@dataclass
class Reply:
    """A normalised model response.

    `finish` is one of: stop, length (truncated), refusal, content_filter, or the vendor's own word.
    """

    text: str | None
    finish: str
    model: str | None
    raw: str
    usage: Usage = field(default_factory=Usage)
    refusal: str | None = None
    fingerprint: str | None = None
    status_code: int = 200
    request_id: str | None = None


class Provider(ABC):
    """A model API: `name` as written in `provider:model`, `kind` its wire format."""

    name: str
    kind: str
    endpoint: str | None = None  # where requests go, without credentials; None: not over HTTP

    @abstractmethod
    def prepare(self, model: str, output: type[BaseModel] | None, params: Params) -> dict[str, Any]:
        """The part of the request that is the same for every call of a workflow."""

    def request(self, prepared: dict[str, Any], messages: list[dict[str, str]]) -> dict[str, Any]:
        """The full request body for one call."""
        return {**prepared, "messages": messages}

    async def aclose(self) -> None:  # noqa: B027 - most providers hold no connections
        """Close what the provider opened for the running event loop (before the loop ends)."""

    def check(self) -> None:  # noqa: B027 - most providers need no check
        """Raise ConfigError when the provider cannot be used as configured (a missing key), or
        KeyUnavailableError when its key's store does not answer: what the CLI checks before
        a batch of calls. Defining a workflow never calls it."""

    def key_ready(self) -> bool:
        """Whether a request can be sent without first fetching the key from a store."""
        return True

    def fetch_key(self) -> None:  # noqa: B027 - most providers need no key
        """Fetch the key (blocking, up to the store's fetch_timeout); ProviderError
        ("secret_unavailable") when it cannot be had. The call's lifecycle runs it in a worker
        thread for asyncio callers, before each attempt whose key is not at hand."""

    @abstractmethod
    def send(self, request: dict[str, Any], timeout: float) -> Reply:
        """Send one request; raise ProviderError on failure."""

    @abstractmethod
    async def asend(self, request: dict[str, Any], timeout: float) -> Reply:
        """Send one request without blocking the event loop."""


def parse_retry_after(headers: Any) -> float | None:
    """Seconds to wait from `retry-after-ms` or `retry-after` (seconds or an HTTP date)."""
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())
