"""The effects a call's lifecycle asks its driver to carry out: the only I/O it does not do.

`drive` blocks on them, `adrive` awaits them (a Call runs in a worker thread), so the lifecycle
itself is one piece of code for both.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Protocol


class Sender(Protocol):
    """What a provider is to a driver: a blocking and an awaiting way to send one request."""

    def send(self, request: dict[str, Any], timeout: float) -> Any: ...

    async def asend(self, request: dict[str, Any], timeout: float) -> Any: ...


@dataclass(frozen=True)
class Send:
    """Send `request` with `provider` within `timeout` seconds (a fallback to a secondary model
    sends to another provider in the middle of the same lifecycle)."""

    provider: Sender
    request: dict[str, Any]
    timeout: float


@dataclass(frozen=True)
class Sleep:
    """Wait before trying again."""

    seconds: float


@dataclass(frozen=True)
class Call:
    """Run a blocking function (a Redis or database round trip); its result is sent back."""

    function: Callable[[], Any]


Effect = Send | Sleep | Call


def io(needs_io: bool, function: Callable[[], Any]) -> Generator[Effect, Any, Any]:
    """Run `function` directly when it is in-memory work, or as a Call when it does I/O."""
    if not needs_io:
        return function()
    return (yield Call(function))
