"""What the official openai and anthropic SDKs have in common: clients, base URLs, exceptions."""

from __future__ import annotations

import asyncio
import inspect
import os
import weakref
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic_core import from_json

from smallops.config import SecretSettings
from smallops.error_types import ProviderFailure
from smallops.errors import ConfigError
from smallops.providers.base import ProviderError, parse_retry_after
from smallops.redact import Redactor
from smallops.secret_refs import SecretRef
from smallops.secrets.base import SecretStoreError
from smallops.secrets.keys import KeySource

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
    """Sync and async SDK clients made on first use, with the key from the provider's source.

    The key lives only in the SDK clients and the secret cache. A client is made again when
    the key changes (a refresh, a rotation), lazily: the sync one, and each event loop's own.
    A 401 fetches the key once more; if it changed, the request is sent again with the new
    one within the same attempt, so a rotation is never an error nor a breaker failure.
    """

    name: str
    base_url: str
    keys: KeySource
    _sync: tuple[str, Any] | None = None
    _async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[str, Any]] | None = None

    @property
    def api_key_env(self) -> str | None:
        """The environment variable holding the key, when the key lives in one."""
        return self.keys.ref.path if self.keys.ref.scheme == "env" else None

    def check(self) -> None:
        self.keys.check()

    def key_ready(self) -> bool:
        return self.keys.cached() is not None

    def fetch_key(self) -> None:
        self._key()

    def _key(self) -> str:
        """The key (blocking while it is fetched); ProviderError("secret_unavailable")."""
        key = self.keys.cached()
        if key is not None:
            return key
        try:
            return self.keys.get()
        except SecretStoreError as exc:
            raise unavailable(self.name, exc) from None

    async def _akey(self) -> str:
        key = self.keys.cached()
        return key if key is not None else await asyncio.to_thread(self._key)

    async def akey(self) -> str:
        """The key for a request made outside the SDK (the gateway's own client): never
        blocks the event loop; ProviderError("secret_unavailable") when none can be had."""
        return await self._akey()

    def rotated(self, rejected: str) -> str | None:
        """After a 401 on `rejected` outside the SDK: the key fetched again if it changed."""
        return self._rotated(rejected)[0]

    def _rotated(self, rejected: str) -> tuple[str | None, str]:
        """After a 401: the key fetched again if it changed; else None, and why the 401 stands
        (said in its message, for a key from a store)."""
        try:
            fresh = self.keys.refetch(rejected)
        except (SecretStoreError, ConfigError) as exc:
            return None, f"the key could not be fetched again: {exc.message}"
        if fresh is not None or self.keys.ref.scheme == "env":
            return fresh, ""
        return None, f"the key from {self.keys.ref} was fetched again: unchanged"

    def call(self, cls: Any, sdk: ModuleType, request: Callable[[Any], Any]) -> Any:
        """`request(client)` with the current key; after a 401, once more with a new key."""
        key = self._key()
        try:
            return request(self.sync_client(cls, key))
        except sdk.AuthenticationError as exc:
            fresh, why = self._rotated(key)
            if fresh is None:
                raise self.error(exc, sdk, why) from None
        except sdk_errors(sdk) as exc:
            raise self.error(exc, sdk) from None
        try:
            return request(self.sync_client(cls, fresh))
        except sdk_errors(sdk) as exc:
            raise self.error(exc, sdk) from None

    async def acall(self, cls: Any, sdk: ModuleType, request: Callable[[Any], Any]) -> Any:
        """`call` for asyncio: waits for a fetch in a worker thread, never in the loop."""
        key = await self._akey()
        try:
            return await request(self.async_client(cls, key))
        except sdk.AuthenticationError as exc:
            fresh, why = await asyncio.to_thread(self._rotated, key)
            if fresh is None:
                raise self.error(exc, sdk, why) from None
        except sdk_errors(sdk) as exc:
            raise self.error(exc, sdk) from None
        try:
            return await request(self.async_client(cls, fresh))
        except sdk_errors(sdk) as exc:
            raise self.error(exc, sdk) from None

    def error(self, exc: Exception, sdk: ModuleType, why: str = "") -> ProviderError:
        """The SDK's exception as a ProviderError (`why` a 401 stands added), with every key
        masked (this one, the one before a rotation, any other registered): some servers
        repeat the key they were sent in a 401's message, and the message reaches the
        application."""
        error = to_provider_error(exc, sdk)
        if why:
            error.message += f" ({why})"
        redact = Redactor()
        error.message = redact(error.message) or error.message
        error.args = (error.message,)
        if error.raw:
            error.raw = redact(error.raw)
        return error

    def sync_client(self, cls: Any, key: str) -> Any:
        current = self._sync
        if current is None or current[0] != key:
            current = self._sync = (key, self._client(cls, key))
            _with_clients.add(self)
        return current[1]

    def async_client(self, cls: Any, key: str) -> Any:
        """One async client per event loop: a client's connections belong to the loop they were
        opened on, and scripts often call asyncio.run more than once."""
        loop = asyncio.get_running_loop()
        if self._async is None:
            self._async = weakref.WeakKeyDictionary()
        current = self._async.get(loop)
        if current is None or current[0] != key:
            current = self._async[loop] = (key, self._client(cls, key))
            _with_clients.add(self)
        return current[1]

    def _client(self, cls: Any, key: str) -> Any:
        return cls(api_key=key, base_url=self.base_url, max_retries=0)

    async def aclose(self) -> None:
        """Close this event loop's client: its connections belong to the loop, and would
        otherwise stay open (half-closed) after the loop ends."""
        current = self._async.pop(asyncio.get_running_loop(), None) if self._async else None
        if current is not None:
            await current[1].close()


#: The providers holding SDK clients: a forked child must not share their connections.
_with_clients: weakref.WeakSet[SdkClients] = weakref.WeakSet()


def _forget_clients_after_fork() -> None:
    """In a forked child, each provider makes its own clients: the parent's hold keep-alive
    connections whose sockets both processes would read, mixing their responses."""
    for provider in list(_with_clients):
        provider._sync = None
        provider._async = None


os.register_at_fork(after_in_child=_forget_clients_after_fork)


def key_source(
    provider: str,
    api_key: SecretRef | str | None,
    api_key_env: str | None,
    default_env: str,
    secrets: SecretSettings | None,
    root: Path | None,
    *,
    keyless: bool,
) -> KeySource:
    """Where a provider's key lives, from its constructor's arguments: a reference (or its
    text), the name of an environment variable, or the SDK's own variable."""
    if api_key is not None and api_key_env is not None:
        raise ConfigError(
            f"provider '{provider}' has both api_key and api_key_env",
            hint='keep one: api_key = "env:NAME" says the same as api_key_env = "NAME"',
        )
    if isinstance(api_key, str):
        api_key = SecretRef.parse(api_key, f"the api_key of provider '{provider}'")
    if api_key_env is not None:  # checked as smallops.toml's is: a key pasted here is refused
        where = f"the api_key_env of provider '{provider}'"
        api_key = SecretRef.parse(f"env:{api_key_env.strip()}", where)
    ref = api_key or SecretRef("env", default_env)
    return KeySource(
        ref,
        secrets or SecretSettings(),
        provider=provider,
        keyless=keyless,
        root=root,
    )


def unavailable(provider: str, exc: SecretStoreError) -> ProviderError:
    """A key that could not be had, as the error a call goes to its fallback with."""
    return ProviderError("secret_unavailable", f"no key for provider '{provider}': {exc.message}")


def sdk_errors(sdk: ModuleType) -> type[Exception]:
    """The base class of an SDK's exceptions."""
    base: type[Exception] = getattr(sdk, "OpenAIError", None) or sdk.AnthropicError
    return base


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
            status_kind(status), message, status_code=status, retry_after=retry_after, raw=raw
        )
    return ProviderError("bad_response", f"{type(exc).__name__}: {exc}")


def status_kind(status: int) -> ProviderFailure:
    """What an HTTP status says about a request; the gateway judges its upstream alike."""
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
