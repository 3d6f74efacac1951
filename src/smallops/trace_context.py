"""The application's own OpenTelemetry span at the moment a workflow call starts.

When the application traces its requests, the run's spans join that trace: the call captures
the active span's trace id and span id, the log keeps them (`runs.trace_parent`), and the export
puts the run's span under it, live and in a backfill alike. OpenTelemetry is never imported for
this: an application that does not use it has no "opentelemetry" module loaded, and the request
path pays one dictionary lookup.
"""

from __future__ import annotations

import sys


def caller_span() -> str | None:
    """ "<trace id>-<span id>" (32 and 16 hex digits) of the active span, or None when there is
    none, it is not valid, or the application does not use OpenTelemetry."""
    if "opentelemetry" not in sys.modules:
        return None
    try:
        from opentelemetry import trace

        context = trace.get_current_span().get_span_context()
    except Exception:  # an API missing or broken in the application never fails a call
        return None
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}-{context.span_id:016x}"


def parse(value: object) -> tuple[int, int] | None:
    """(trace id, span id) from a stored "<trace id>-<span id>", or None if it is not one."""
    if not isinstance(value, str):
        return None
    trace_hex, _, span_hex = value.partition("-")
    if len(trace_hex) != 32 or len(span_hex) != 16:
        return None
    try:
        trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    except ValueError:
        return None
    return (trace_id, span_id) if trace_id and span_id else None
