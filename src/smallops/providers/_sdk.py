"""What the official openai and anthropic SDKs have in common: their exception shapes."""

from __future__ import annotations

from types import ModuleType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic_core import from_json

from smallops.providers.base import ProviderError, parse_retry_after


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


def _status_kind(status: int) -> str:
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
