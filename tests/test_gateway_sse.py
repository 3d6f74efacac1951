"""The gateway's SSE splitter: the same events as splitting the whole stream at once, whatever
the pieces it arrives in (CRLF cut between two pieces included)."""

from __future__ import annotations

import random

import pytest

from smallops.gateway.sse import EventSplitter

STREAM = (
    b'data: {"id":"c1","choices":[{"delta":{"content":"h\\u00e9"}}]}\r\n\r\n'
    b": keep-alive\n\n"
    b"event: ping\r\ndata: {}\r\n\r\n"
    b'data: {"id":"c1","choices":[],"usage":{"prompt_tokens":3}}\n\n'
    b"data: [DONE]\n\n"
    b"data: cut sh"
)


def whole(stream: bytes) -> tuple[list[bytes], bytes]:
    normal = stream.replace(b"\r\n", b"\n")
    *events, rest = normal.split(b"\n\n")
    return [event + b"\n\n" for event in events], rest


@pytest.mark.parametrize("seed", range(40))
def test_any_cut_of_the_stream_gives_the_events_of_the_whole(seed: int) -> None:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(STREAM)), rng.randint(1, 60)))
    pieces = [STREAM[a:b] for a, b in zip([0, *cuts], [*cuts, len(STREAM)], strict=True)]
    splitter = EventSplitter()
    events = [event for piece in pieces for event in splitter.feed(piece)]
    assert (events, splitter.rest()) == whole(STREAM)
    assert splitter.pending == 0 and splitter.feed(b"") == []


def test_a_crlf_blank_line_cut_after_each_byte_still_ends_the_event() -> None:
    splitter = EventSplitter()
    got = [splitter.feed(bytes([byte])) for byte in b"data: 1\r\n\r\ndata: 2\r"]
    assert [event for events in got for event in events] == [b"data: 1\n\n"]
    assert splitter.pending == len(b"data: 2\r")
    assert splitter.feed(b"\n\r\n") == [b"data: 2\n\n"]


def test_pending_counts_an_unfinished_event_fed_in_small_pieces() -> None:
    splitter = EventSplitter()
    for _ in range(1000):
        assert splitter.feed(b"x" * 64) == []
    assert splitter.pending == 64_000
    assert splitter.feed(b"\n\n") == [b"x" * 64_000 + b"\n\n"]
    assert splitter.pending == 0
