"""Server-sent events cut from a byte stream, however small the pieces it arrives in.

Joining what was left of the last piece to each new one and searching it all again costs time
that grows with the square of an event's size: an upstream trickling a large event a few bytes
at a time would hold the gateway's loop. Here each byte is scanned once and copied at most
twice, so the cost follows the bytes received.
"""

from __future__ import annotations

_BLANK_LINE = b"\n\n"


class EventSplitter:
    """Whole events (each ending in its blank line, CRLF line ends read as LF) out of the
    pieces fed; what follows the last blank line waits for the next piece."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._scanned = 0  # the buffer before this holds no blank line
        self._carriage = False  # the last piece ended in CR: its LF may start the next

    def feed(self, piece: bytes) -> list[bytes]:
        """The events that `piece` completes, in order."""
        if self._carriage:
            piece = b"\r" + piece
        self._carriage = piece.endswith(b"\r")
        if self._carriage:
            piece = piece[:-1]
        buffer = self._buffer
        buffer += piece.replace(b"\r\n", b"\n")
        events: list[bytes] = []
        start = 0
        search = max(self._scanned - 1, 0)  # a blank line may straddle the old end
        while (end := buffer.find(_BLANK_LINE, search)) >= 0:
            events.append(bytes(buffer[start : end + 2]))
            start = search = end + 2
        if start:
            del buffer[:start]
        self._scanned = len(buffer)
        return events

    @property
    def pending(self) -> int:
        """Bytes waiting for their event's end."""
        return len(self._buffer) + self._carriage

    def rest(self) -> bytes:
        """What followed the last blank line (the stream has ended); the splitter is left empty."""
        rest = bytes(self._buffer) + (b"\r" if self._carriage else b"")
        self._buffer.clear()
        self._scanned, self._carriage = 0, False
        return rest


def event_data(event: bytes) -> bytes | None:
    """An event's payload: its `data:` lines joined by newlines, as SSE readers join them;
    None when it has none."""
    lines = [line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(lines) if lines else None
