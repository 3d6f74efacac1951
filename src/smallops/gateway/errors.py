"""Errors as the OpenAI API words them, so every OpenAI SDK raises its usual exception.

`{"error": {"message", "type", "param", "code"}}` with the status code the SDKs map to their
classes (401 AuthenticationError, 404 NotFoundError, 429 RateLimitError, 5xx InternalServerError).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic_core import from_json, to_json

from smallops.error_types import GuardRefusal
from smallops.providers.base import ProviderError


@dataclass
class GatewayError(Exception):
    """A request the gateway answers with an error of its own."""

    status: int
    message: str
    type: str
    code: str | None = None
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    retry: bool = False  # whether the client's SDK should try again (x-should-retry)
    raw: bytes | None = None  # the upstream's own error body, passed on as it came

    def body(self) -> bytes:
        if self.raw is not None:
            return self.raw
        return error_body(self.message, self.type, self.code, self.param)


def error_body(message: str, kind: str, code: str | None, param: str | None = None) -> bytes:
    return to_json({"error": {"message": message, "type": kind, "param": param, "code": code}})


def unauthorized(message: str) -> GatewayError:
    return GatewayError(401, message, "invalid_request_error", "invalid_api_key")


def bad_request(message: str, param: str | None = None, code: str | None = None) -> GatewayError:
    return GatewayError(400, message, "invalid_request_error", code, param)


def unsupported(message: str, param: str) -> GatewayError:
    """A field the route cannot honour (OpenAI's own code for it), on either kind of route."""
    return bad_request(message, param, "unsupported_parameter")


def rate_limited(message: str, retry_after: float) -> GatewayError:
    """A limit of the gateway's own: the client may wait Retry-After and try again."""
    seconds = max(1, int(retry_after + 0.999))
    return GatewayError(
        429,
        message,
        "rate_limit_error",
        "rate_limit_exceeded",
        headers={"retry-after": str(seconds)},
        retry=True,
    )


def budget_exhausted(message: str) -> GatewayError:
    return GatewayError(429, message, "insufficient_quota", "budget_exhausted")


def budget_unavailable(message: str) -> GatewayError:
    """A budget whose store does not answer: nothing was tried, so soon again is worth it."""
    return GatewayError(
        503,
        message,
        "server_error",
        "budget_unavailable",
        headers={"retry-after": "2"},
        retry=True,
    )


def upstream_failed(status: int, message: str, code: str) -> GatewayError:
    return GatewayError(status, message, "server_error", code)


def client_error(error: ProviderError) -> GatewayError:
    """The last upstream failure, as the client gets it (the gateway has already retried)."""
    if error.kind in ("breaker_open", "secret_unavailable"):  # nothing was sent upstream
        return GatewayError(503, error.message, "server_error", error.kind)
    if error.kind == "auth_error":
        return upstream_failed(
            502,
            f"the upstream refused the gateway's provider key ({error.message[:200]})",
            "upstream_auth_error",
        )
    if error.status_code is not None and error.raw is not None:
        if _is_openai_error(error.raw):
            return GatewayError(
                error.status_code, error.message, "upstream", raw=error.raw.encode("utf-8")
            )
        translated = _anthropic_error(error.raw)
        if translated is not None:
            message, kind, code = translated
            status = 503 if error.status_code == 529 else error.status_code
            return GatewayError(status, message, kind, code)
        flat = _flat_error(error.raw, error.status_code)
        if flat is not None:
            return GatewayError(error.status_code, *flat)
    if error.kind == "timeout":
        return upstream_failed(504, "the upstream did not answer in time", "upstream_timeout")
    if error.kind == "connection_error":
        return upstream_failed(502, error.message, "upstream_unreachable")
    return upstream_failed(502, error.message, "upstream_bad_response")


def _is_openai_error(raw: str) -> bool:
    try:
        body = from_json(raw)
    except ValueError:
        return False
    # Anthropic's envelope has an `error` object too, under "type": "error".
    return (
        isinstance(body, dict)
        and isinstance(body.get("error"), dict)
        and body.get("type") != "error"
    )


#: Anthropic's error types as OpenAI's.
ANTHROPIC_ERROR_TYPES = {
    "invalid_request_error": "invalid_request_error",
    "not_found_error": "invalid_request_error",
    "request_too_large": "invalid_request_error",
    "authentication_error": "authentication_error",
    "permission_error": "permission_error",
    "rate_limit_error": "rate_limit_error",
    "api_error": "server_error",
    "overloaded_error": "server_error",
    "timeout_error": "server_error",
}


def _anthropic_error(raw: str) -> tuple[str, str, str] | None:
    """An Anthropic error body's (message, OpenAI error type, code); None if it is not one."""
    try:
        body = from_json(raw)
    except ValueError:
        return None
    if not isinstance(body, dict) or body.get("type") != "error":
        return None
    detail = body.get("error")
    if not isinstance(detail, dict) or not isinstance(detail.get("type"), str):
        return None
    kind = detail["type"][:60]
    message = detail.get("message")
    text = message if isinstance(message, str) else kind
    return text, ANTHROPIC_ERROR_TYPES.get(kind, "server_error"), kind


def _flat_error(raw: str, status: int) -> tuple[str, str, str | None, str | None] | None:
    """An error body of another shape, as (message, type, code, param): Mistral's flat
    `{"object": "error", "message", "type", "param", "code"}` (whose message may be an object,
    its 422's `{"detail": [...]}`), a bare `{"message": ...}` or a `{"detail": ...}` (FastAPI's,
    as vLLM and the like answer); None if it is none of these."""
    try:
        body = from_json(raw)
    except ValueError:
        return None
    if not isinstance(body, dict) or ("message" not in body and "detail" not in body):
        return None
    said = body.get("message", body.get("detail"))
    message = said if isinstance(said, str) else to_json(said).decode()
    kind = body.get("type")
    if not isinstance(kind, str) or not kind:
        kind = "server_error" if status >= 500 else "invalid_request_error"
    code, param = body.get("code"), body.get("param")
    code = str(code)[:60] if isinstance(code, (str, int)) and not isinstance(code, bool) else None
    return message, kind[:60], code, param if isinstance(param, str) else None


def refusal_type(error: GatewayError) -> GuardRefusal:
    if error.code == "budget_exhausted":
        return "budget_exhausted"
    if error.code == "budget_unavailable":
        return "budget_unavailable"
    return "throttled"


def no_route(name: str) -> GatewayError:
    return GatewayError(
        404,
        f"the model {name!r} does not exist or you do not have access to it",
        "invalid_request_error",
        "model_not_found",
        "model",
    )


def not_allowed(method: str, allowed: str) -> GatewayError:
    return GatewayError(
        405,
        f"{method} is not allowed here; use {allowed}",
        "invalid_request_error",
        "method_not_allowed",
        headers={"allow": allowed},
    )
