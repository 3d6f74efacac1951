"""Spans written straight into OTLP protobuf bytes, the message the SDK's encoder would build.

The SDK's encoder costs about 0.1 ms of Python per span (an SDK span, then a protobuf object per
span, attribute and value); the export thread holds the GIL meanwhile, and the call threads
pay for it. Writing the wire format from `SpanValue` directly costs a fraction of that. Only
what smallops' spans use is written: no events, links or trace state, the remote flag unset;
field numbers are those of opentelemetry/proto/trace/v1/trace.proto and common.proto. A test
checks the result against the SDK's encoder, message for message.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from smallops.storage.otel_spans import SpanValue

_KINDS = {"INTERNAL": 1, "CLIENT": 3}  # Span.SpanKind
_KIND_FIELDS = {name: b"\x30" + bytes((kind,)) for name, kind in _KINDS.items()}  # field 6
_ERROR = 2  # Status.StatusCode.STATUS_CODE_ERROR
_FLAGS = b"\x85\x01" + struct.pack("<I", 0x100)  # field 16, fixed32: HAS_IS_REMOTE, not remote
_UNSET_STATUS = b"\x7a\x00"  # field 15: an empty Status (code UNSET), as the SDK sends it


def _varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return _SMALL[value]  # most tags, lengths and counts: one byte, no loop
    if value < 0:
        value += 1 << 64  # int64: two's complement, ten bytes
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL = tuple(bytes((n,)) for n in range(0x80))


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (strings, bytes, messages)."""
    size = len(payload)
    return _TAGS[number] + (_SMALL[size] if size < 0x80 else _varint(size)) + payload


_TAGS = tuple(_varint(number << 3 | 2) for number in range(17))  # the field numbers used


def _value(value: Any) -> bytes:
    """An AnyValue, the way the SDK's encoder maps Python values (its fields are a oneof: a
    zero or empty value is still written)."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _field(1, value.encode())
    if isinstance(value, int):
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + struct.pack("<d", value)
    if isinstance(value, bytes):
        return _field(7, value)
    if isinstance(value, Sequence):
        return _field(5, b"".join(_field(1, _value(item)) for item in value))
    if isinstance(value, Mapping):
        return _field(6, b"".join(_field(1, _key_value(str(k), v)) for k, v in value.items()))
    raise TypeError(f"a span attribute of type {type(value).__name__} has no OTLP encoding")


def _key_value(key: str, value: Any) -> bytes:
    return _key(key) + _field(2, _value(value))


def _key(key: str) -> bytes:
    """A KeyValue's key field. Span attribute names are a small fixed set: each is written
    once (up to `_KEYS_KEPT` of them), not per span."""
    found = _KEYS.get(key)
    if found is None:
        found = _field(1, key.encode()) if key else b""
        if len(_KEYS) < _KEYS_KEPT:
            _KEYS[key] = found
    return found


_KEYS: dict[str, bytes] = {}
_KEYS_KEPT = 512


def _attribute(key: str, value: Any) -> bytes:
    """A span attribute as the Span's field 9. Most repeat from run to run (the operation,
    provider, models, status, server): a short string or an integer pair is written once and
    kept, up to `_PAIRS_KEPT` of them (then the store starts again, so unique values such as
    run ids cannot grow it). Content and other long strings are written each time."""
    kind = type(value)
    # bool is not int here: (k, True) == (k, 1) would share a slot.
    if not (kind is int or (kind is str and len(value) <= _PAIR_CHARS)):
        return _field(9, _key_value(key, value))
    pair = (key, value)
    found = _PAIRS.get(pair)
    if found is None:
        found = _field(9, _key_value(key, value))
        if len(_PAIRS) >= _PAIRS_KEPT:
            _PAIRS.clear()
        _PAIRS[pair] = found
    return found


_PAIRS: dict[tuple[str, Any], bytes] = {}
_PAIRS_KEPT = 4096
_PAIR_CHARS = 256


def span_bytes(span: SpanValue) -> bytes:
    """One Span message."""
    parts = [  # the ids' fields: tag and length (fixed) then the bytes
        b"\x0a\x10" + span.trace_id.to_bytes(16, "big"),
        b"\x12\x08" + span.span_id.to_bytes(8, "big"),
    ]
    if span.parent_id is not None:
        parts.append(b"\x22\x08" + span.parent_id.to_bytes(8, "big"))
    if span.name:
        parts.append(_field(5, span.name.encode()))
    parts.append(_KIND_FIELDS[span.kind])
    if span.start_ns:
        parts.append(b"\x39" + struct.pack("<Q", span.start_ns))
    if span.end_ns:
        parts.append(b"\x41" + struct.pack("<Q", span.end_ns))
    kept = _PAIRS
    for key, value in span.attributes.items():
        kind = type(value)  # as in _attribute: only a str or an int (never a bool) is kept
        found = kept.get((key, value)) if kind is str or kind is int else None
        parts.append(found if found is not None else _attribute(key, value))
    if span.error:
        message = span.description if isinstance(span.description, str) else ""
        parts.append(_field(15, (_field(2, message.encode()) if message else b"") + b"\x18\x02"))
    else:
        parts.append(_UNSET_STATUS)
    parts.append(_FLAGS)
    return b"".join(parts)


def framed_span(span: SpanValue) -> bytes:
    """One Span message as a field of its ScopeSpans, ready to be joined with others."""
    return _field(2, span_bytes(span))


def request_bytes(resource: bytes, scope: bytes, spans: Iterable[bytes]) -> bytes:
    """An ExportTraceServiceRequest: one resource, one scope, the spans (each a Span message,
    from `span_bytes`). `resource` and `scope` are serialized Resource and InstrumentationScope
    messages."""
    return framed_request(resource, scope, [_field(2, span) for span in spans])


def framed_request(resource: bytes, scope: bytes, framed: list[bytes]) -> bytes:
    """`request_bytes` of spans already framed (`framed_span`): one join, no Python per span,
    so the export thread holds the interpreter only briefly when a batch goes."""
    scope_spans = _field(1, scope) + b"".join(framed)
    return _field(1, _field(1, resource) + _field(2, scope_spans))
