"""What every command shares: the project, consoles, --since parsing and JSON output."""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

if TYPE_CHECKING:
    from smallops.project import Project

T = TypeVar("T")

#: No :emoji: codes: text from the project (a reference like `doppler:X: ...`) prints as written.
out = Console(highlight=False, soft_wrap=True, emoji=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)

#: --help wraps at the terminal's width, and at 100 columns on a wider one (click keeps two
#: columns spare, hence 102).
HELP_WIDTH = {"max_content_width": 102}

#: How commands that take a run id describe it (see storage.queries.run_id_matches).
RUN_ID_HELP = "The run id as printed, the whole id, or a unique start of either (8+)."

#: The most rows a --limit may ask for: far more than a terminal shows, far below what a
#: database's LIMIT (a 64-bit integer) refuses.
MAX_LIMIT = 1_000_000


def project(ctx: typer.Context) -> Project:
    """The project given by --project, or found from the current folder upward."""
    from smallops.project import Project

    given: Path | None = (ctx.find_root().obj or {}).get("project")
    return Project.find(given)


def since(value: str | None, option: str = "--since") -> datetime | None:
    """`7d`, `24h`, `30m`, `2w` ago, or an ISO date/time (UTC unless it says otherwise)."""
    from smallops.timespan import moment

    return None if value is None else moment(value, f"{option} {value!r}")


class Hangup(BaseException):
    """SIGTERM, or SIGHUP (the terminal closed, the SSH session dropped), raised in the main
    thread as Ctrl-C raises KeyboardInterrupt, so that a command can tidy up before it exits
    (with 128 + the signal's number). Not an Exception: nothing on the way may swallow it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


#: The signals Hangups turns into Hangup (Windows has no SIGHUP).
HANGUP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)
)


class Hangups:
    """While entered (in the main thread): HANGUP_SIGNALS raise Hangup; the handlers before
    are put back on the way out. Inside `held()` a signal waits for its end, so that two steps
    that belong together (a claim, and noting what was claimed) are never cut apart."""

    def __init__(self) -> None:
        self._previous: dict[int, Any] = {}
        self._holding = False
        self._pending: int | None = None

    def __enter__(self) -> Hangups:
        if threading.current_thread() is threading.main_thread():
            for signum in HANGUP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._raise)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    @contextmanager
    def held(self) -> Iterator[None]:
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
        if self._pending is not None:
            raise Hangup(self._pending)

    def _raise(self, signum: int, _frame: FrameType | None) -> None:
        if self._holding:
            self._pending = signum
            return
        raise Hangup(signum)


def print_json(value: Any, redact: Callable[[str], str | None] | None = None) -> None:
    """One JSON document per line on stdout, for scripts (no character a reader might take for
    a line break is left unescaped); `redact` removes secrets from the line."""
    line = json.dumps(value, default=_default, ensure_ascii=False)
    line = (redact(line) or line) if redact else line
    # U+2028 and U+2029 are valid inside JSON strings, but many line readers split on them.
    sys.stdout.write(line.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029") + "\n")


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if hasattr(value, "__dict__"):
        return vars(value)
    return str(value)


def money(value: float | None) -> str:
    return "unpriced" if value is None else f"${value:,.4f}"


def when(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value else ""


def section(title: str) -> None:
    """A section's heading in a one-record view (`show`, `review next`)."""
    out.print(f"\n[bold]── {escape(title)}[/bold]")


def print_fields(value: Any, kept: bool = True, indent: int = 2) -> None:
    """A recorded value for reading: an object as one `name  value` line per field (text as it
    is, line breaks and all, continued under its first line), other values as text or JSON."""
    pad = " " * indent
    if value is None or value == {}:
        out.print(pad + ("(none)" if kept else "(not kept)"), markup=False)
        return
    if not isinstance(value, dict):
        for line in _readable(value).splitlines() or [""]:
            out.print(pad + line, markup=False)
        return
    width = min(max(len(str(key)) for key in value), 24)
    for key, field in value.items():
        first, *rest = _readable(field).splitlines() or [""]
        out.print(f"{pad}{key!s:<{width}}  {first}".rstrip(), markup=False)
        for line in rest:
            out.print(f"{pad}{'':<{width}}  {line}".rstrip(), markup=False)


def _readable(value: Any) -> str:
    if isinstance(value, str):
        return value
    line = json.dumps(value, ensure_ascii=False, default=str)
    if isinstance(value, (dict, list)) and len(line) > 60:
        return json.dumps(value, indent=2, ensure_ascii=False, default=str)
    return line


def run_async(work: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, closing the providers' connections of the loop before the loop ends (they
    belong to it, and would otherwise stay open, half-closed, until the process exits)."""
    import asyncio

    from smallops.providers import close_loop_clients

    async def then_close() -> T:
        try:
            return await work
        finally:
            await close_loop_clients()

    return asyncio.run(then_close())


def wrapped(prefix: str, markup: str) -> None:
    """`prefix` then `markup` wrapped to the terminal's width, its later lines indented as
    far as the prefix reaches (no line padded with spaces)."""
    console = out
    head = Text.from_markup(prefix, emoji=False)
    indent = head.cell_len
    body = Text.from_markup(markup, emoji=False)
    lines = body.wrap(console, max(20, console.width - indent), overflow="fold")
    for number, line in enumerate(lines):
        line.rstrip()
        console.print(head if number == 0 else " " * indent, line, sep="", soft_wrap=True)
