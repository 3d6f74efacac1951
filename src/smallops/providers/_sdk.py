"""What the official openai and anthropic SDKs have in common: clients, base URLs, exceptions."""

from __future__ import annotations

import asyncio
import inspect
import os
import weakref
from functools import lru_cache
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic_core import from_json

from smallops.error_types import ProviderFailure
from smallops.errors import ConfigError
from smallops.providers.base import ProviderError, parse_retry_after
from smallops.redact import REDACTED, register

# Per wire format: the variable its SDK reads the base URL from, and the SDK's default.
BASE_URLS = {
    "openai": ("OPENAI_BASE_URL", "https://api.openai.com/v1"),
    "anthropic": ("ANTHROPIC_BASE_URL", "https://api.anthropic.com"),
}


def resolve_base_url(kind: str, configured: str | None) -> str:
    """Where requests go: the configured base URL, else the one the SDK would read from the
    environment, else its default. Given to the SDK explicitly, so the one recorded is the one
    used."""
    variable, default = BASE_URLS[kind]
    return configured or os.environ.get(variable) or default


class SdkClients:
    """Sync and async SDK clients made on first use, with the key read from the environment.

    The key is never stored anywhere but in the SDK client; `keyless` servers (a local Ollama)
    get a placeholder, since the SDKs insist on one.
    """

    name: str
    base_url: str
    api_key_env: str
    keyless: bool = False
    _sync: Any = None
    _async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] | None = None

    def check(self) -> None:
        self._api_key()

    def _api_key(self) -> str:
        key = os.environ.get(self.api_key_env)
        if key:
            register(key)  # whatever the variable is called, the key is redacted everywhere
            return key
        if self.keyless:
            return "unused"
        raise ConfigError(
            f"{self.api_key_env} is not set",
            hint=f"export {self.api_key_env}=... (or set api_key_env for provider "
            f"'{self.name}' in smallops.toml)",
        )

    def error(self, exc: Exception, sdk: ModuleType) -> ProviderError:
        """The SDK's exception as a ProviderError, with our own key masked: some servers repeat
        the key they were sent in a 401's message, and the message reaches the application."""
        error = to_provider_error(exc, sdk)
        key = os.environ.get(self.api_key_env)
        if key and len(key) >= 8:
            error.message = error.message.replace(key, REDACTED)
            error.args = (error.message,)
            if error.raw:
                error.raw = error.raw.replace(key, REDACTED)
        return error

    def sync_client(self, cls: Any) -> Any:
        if self._sync is None:
            self._sync = cls(api_key=self._api_key(), base_url=self.base_url, max_retries=0)
        return self._sync

    def async_client(self, cls: Any) -> Any:
        """One async client per event loop: a client's connections belong to the loop they were
        opened on, and scripts often call asyncio.run more than once."""
        loop = asyncio.get_running_loop()
        if self._async is None:
            self._async = weakref.WeakKeyDictionary()
        client = self._async.get(loop)
        if client is None:
            client = cls(api_key=self._api_key(), base_url=self.base_url, max_retries=0)
            self._async[loop] = client
        return client

    async def aclose(self) -> None:
        """Close this event loop's client: its connections belong to the loop, and would
        otherwise stay open (half-closed) after the loop ends."""
        client = self._async.pop(asyncio.get_running_loop(), None) if self._async else None
        if client is not None:
            await client.close()


def sdk_arguments(create: Any, request: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for an SDK `create` method: fields it does not name (say `temperature`
    on an SDK that dropped it) travel in `extra_body`, so the wire request stays as recorded."""
    known = _parameters(getattr(create, "__func__", create))
    if all(key in known for key in request):
        return request
    arguments = {k: v for k, v in request.items() if k in known}
    arguments["extra_body"] = {k: v for k, v in request.items() if k not in known}
    return arguments


@lru_cache(maxsize=16)
def _parameters(function: Any) -> frozenset[str]:
    return frozenset(inspect.signature(function).parameters)


def to_provider_error(exc: Exception, sdk: ModuleType) -> ProviderError:
    """Translate an SDK exception into a ProviderError of the right kind."""
    if isinstance(exc, sdk.APITimeoutError):
        return ProviderError("timeout", "the request timed out")
    if isinstance(exc, sdk.APIConnectionError):
        cause = exc.__cause__ or exc
        return ProviderError("connection_error", f"connection failed: {type(cause).__name__}")
    if isinstance(exc, sdk.APIStatusError):
        status = exc.status_code
        raw = _body_text(exc.response)
        message = f"HTTP {status}: {_vendor_message(raw) or exc.message}"
        retry_after = parse_retry_after(exc.response.headers)
        return ProviderError(
            _status_kind(status), message, status_code=status, retry_after=retry_after, raw=raw
        )
    return ProviderError("bad_response", f"{type(exc).__name__}: {exc}")


def _status_kind(status: int) -> ProviderFailure:
    if status == 429:
        return "rate_limited"
    if status in (401, 403):
        return "auth_error"
    if status == 408:
        return "timeout"
    if status == 409 or status >= 500:
        return "server_error"
    return "bad_request"


def _body_text(response: Any) -> str | None:
    try:
        return str(response.text)
    except Exception:
        return None


def _vendor_message(raw: str | None) -> str | None:
    """The `error.message` both vendors put in their error envelopes."""
    if not raw:
        return None
    try:
        body = from_json(raw)
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return str(message) if message else None


def parse_body(http_response: Any) -> tuple[dict[str, Any], str]:
    """The JSON body of a successful response and its text; malformed JSON is a bad_response."""
    raw = http_response.text
    try:
        body = from_json(raw)
    except ValueError:
        raise ProviderError(
            "bad_response", "the response body is not valid JSON", raw=raw[:2000]
        ) from None
    if not isinstance(body, dict):
        raise ProviderError("bad_response", "the response body is not a JSON object", raw=raw)
    return body, raw


def public_endpoint(base_url: str | None) -> str | None:
    """A base URL fit for the audit trail: no user, password, query or fragment."""
    if not base_url:
        return None
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))
