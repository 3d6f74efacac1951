"""Errors as the OpenAI API words them, so every OpenAI SDK raises its usual exception.

`{"error": {"message", "type", "param", "code"}}` with the status code the SDKs map to their
classes (401 AuthenticationError, 404 NotFoundError, 429 RateLimitError, 5xx InternalServerError).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic_core import to_json


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


def upstream_failed(status: int, message: str, code: str) -> GatewayError:
    return GatewayError(status, message, "server_error", code)
