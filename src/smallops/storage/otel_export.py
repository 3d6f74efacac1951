"""Sending logged runs to an OpenTelemetry collector over OTLP/HTTP, off by default.

Export is on when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set;
the SDK's exporter reads those and `OTEL_EXPORTER_OTLP_HEADERS` itself. Message content goes
only when `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true`, and never beyond the run's
content mode. The SDK is imported only when export is on (`pip install smallops[otel]`).

The log writer hands committed runs to `SpanExport.offer`, which only puts them on a bounded
queue: a thread of its own batches and sends them. When the collector is slow or down, the
queue fills and further runs are dropped and counted (`dropped`), so neither the request path
nor the writer ever waits for telemetry.

The writer hands over the committed rows as they are (`Committed`). The thread reads each run
back and builds and encodes its spans as the run arrives, in stretches of about `PACE_SECONDS`
of work (a stretch ends with the run that reaches it) with a rest after each while it keeps
up, and at the end of a batch only joins the bytes and sends them. A writer batch's runs are so
spread over the time of many calls: built in one go, they would hold the GIL in a burst that
one call waits out whole (the p99), and a whole second's batch (~50 ms of Python) would stall
the calls made meanwhile one after the other. A stretch holds several runs, not one: every
wake-up of the thread costs the calls a hand-over of the GIL (the median). When runs pile up,
the thread only steps aside now and then (`_Pace`).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import queue
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from smallops.config import Telemetry
from smallops.errors import ConfigError
from smallops.storage.otel_http import lean_transport
from smallops.storage.otel_items import Committed, Item, described
from smallops.storage.otel_process import ProcessExport
from smallops.storage.otel_spans import CONTENT_VARIABLE, SpanValue, content_wanted, run_spans
from smallops.storage.otel_wire import framed_request, framed_span, request_bytes, span_bytes
from smallops.storage.telemetry_state import REPORT_SECONDS, DropTally

log = logging.getLogger("smallops")

QUEUE_RUNS = 2048  # runs waiting to be sent; past that they are dropped and counted
BATCH_RUNS = 256  # runs per export request
EXPORT_TIMEOUT = 5.0  # seconds one export request (with the SDK's own retries) may take
_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_STOP = object()
_LINGERED = object()  # a batch waited its linger out: it goes as it is
_CLOSED = "the export was closed before these were sent"
LINGER_SECONDS = 1.0  # a batch waits this long for more runs: each request costs the GIL too
_LINGER_VARIABLE = "OTEL_BSP_SCHEDULE_DELAY"  # the SDK's batch delay, in milliseconds
_CA_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")  # read by requests from the environment
_SESSION_VARIABLE = "OTEL_PYTHON_EXPORTER_OTLP_HTTP_TRACES_CREDENTIAL_PROVIDER"
PACE_SECONDS = 0.0004  # the export thread's work before it rests (ends with the run reaching it)
STEP_ASIDE_SECONDS = 0.0  # time.sleep(0) releases the GIL: a waiting thread takes it
SPREAD_SECONDS = 0.001  # the export thread's rest after a stretch while it keeps up
KEEPING_UP = 64  # runs waiting: below this the thread rests after a stretch, above steps aside


def export_wanted(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment asks for export (an OTLP endpoint is set)."""
    env = os.environ if environ is None else environ
    return any(env.get(name, "").strip() for name in _ENDPOINT_VARIABLES)


def export_environment(
    telemetry: Telemetry | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, str] | None:
    """The environment the export runs with: the process's, with smallops.toml's [telemetry]
    filling in what the OTEL_* variables leave unset; None when neither asks for export."""
    env = dict(os.environ if environ is None else environ)
    if not export_wanted(env):
        if telemetry is None or not telemetry.otlp_endpoint:
            return None
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = telemetry.otlp_endpoint
    if not env.get(CONTENT_VARIABLE, "").strip() and telemetry is not None:
        env[CONTENT_VARIABLE] = "true" if telemetry.capture_content else "false"
    return env


def traces_endpoint(env: Mapping[str, str]) -> str:
    """Where spans go, as the OTLP exporter reads it: the traces endpoint as given, else the
    base endpoint with /v1/traces."""
    given = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    if given:
        return given
    return env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip().rstrip("/") + "/v1/traces"


class SpanExport:
    """A bounded queue of runs and a thread that sends them as spans to the OTLP endpoint."""

    def __init__(
        self,
        *,
        content: bool | None = None,
        timeout: float = EXPORT_TIMEOUT,
        capacity: int = 0,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        env = dict(os.environ if environ is None else environ)
        self.content = content_wanted(env) if content is None else content
        self.endpoint = traces_endpoint(env)
        self.timeout = timeout
        self.linger = linger_seconds(env)
        self.sent = 0  # spans the collector accepted
        self._queue: queue.Queue[Any] = queue.Queue(capacity or QUEUE_RUNS)
        self._sdk = _Sdk(timeout, self.endpoint, env)  # ConfigError when the extra is missing
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.drops = DropTally()  # spans not delivered: queue full, or the collector failed

    def offer(self, items: Iterable[Item | Committed], report_to: Path | None = None) -> None:
        """Queue runs for export; never blocks: what does not fit is dropped and counted (and,
        with `report_to`, a project's telemetry folder, noted there for `smallops status`)."""
        self._start()
        pace = _Pace()  # `items` may be built as they come (the writer decodes each run)
        for item in items:
            try:
                self._queue.put_nowait((item, report_to))
            except queue.Full:
                workflow, count = described(item)
                self.drops.note(
                    workflow, count, report_to, "the export queue was full: the collector is slow"
                )
            pace()

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until every run queued so far was sent (or dropped)."""
        if self._thread is None:
            return True
        done = threading.Event()
        try:
            self._queue.put(done, timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        thread = self._thread
        if thread is not None:
            with contextlib.suppress(queue.Full):
                self._queue.put(_STOP, timeout=timeout)
            thread.join(timeout)
            self._thread = None
        self._sdk.shutdown()

    def send_now(self, items: Iterable[Item]) -> int:
        """Export on the calling thread (the backfill command); the spans the collector took."""
        pace = _Pace()
        ready = []
        for item in items:
            ready.append(self._ready(item, None))
            pace()
        return self._send(ready)

    def _ready(self, item: Item | Committed, folder: Path | None) -> _Ready:
        """A run's spans, built and written as the request will carry them. A run whose spans
        cannot be built costs only its own spans (dropped and counted), not its batch's."""
        ready = _Ready(*described(item), folder=folder, spans=[])
        if self._sdk.closed:
            return ready  # closing: dropped (and counted) at send time, without building it
        try:
            if isinstance(item, Committed):
                item = item.item()
            ready.spans = self._sdk.written(self._spans(item))
        except Exception as exc:
            log.exception("smallops: could not build the spans of a %s run", ready.workflow)
            reason = f"its spans could not be written: {type(exc).__name__}"
            self.drops.note(ready.workflow, ready.count, folder, reason)
            ready.count = 0
        else:
            ready.count = len(ready.spans)
        return ready

    def _send(self, batch: list[_Ready]) -> int:
        batch = [ready for ready in batch if ready.count]  # the unbuildable were counted
        if self._sdk.closed:
            for ready in batch:
                self._drop(ready, _CLOSED)
            return 0
        spans = [span for ready in batch for span in ready.spans]
        if not spans:
            return 0
        if not self._sdk.export(spans):
            reason = (
                _CLOSED  # closed while the request was going: the collector is not to blame
                if self._sdk.closed
                else f"the collector at {shown(self.endpoint)} did not accept the spans"
            )
            for ready in batch:
                self._drop(ready, reason)
            return 0
        self.sent += len(spans)
        return len(spans)

    @property
    def dropped(self) -> int:
        return self.drops.count

    @property
    def last_error(self) -> str | None:
        return self.drops.last_error

    def _drop(self, ready: _Ready, reason: str) -> None:
        self.drops.note(ready.workflow, ready.count, ready.folder, reason)

    def _spans(self, item: Item) -> list[SpanValue]:
        row, params, parent = item
        return run_spans(row, params, content=self.content, parent=parent)

    def _start(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                thread = threading.Thread(target=self._loop, name="smallops-otel", daemon=True)
                thread.start()
                self._thread = thread

    def _loop(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=REPORT_SECONDS)
            except queue.Empty:
                self.drops.report()  # drops noted less than a second after the last report
                continue
            items: list[_Ready] = []
            markers, stop = [], False
            began = time.monotonic()
            pace = _Pace()
            while True:
                if item is _STOP:
                    stop = True
                elif isinstance(item, threading.Event):
                    markers.append(item)
                else:
                    items.append(self._ready(*item))  # built now: the work follows the calls
                    self._rest(pace)
                if stop or markers or len(items) >= BATCH_RUNS:
                    break
                item = self._next(self.linger - (time.monotonic() - began), pace)
                if item is _LINGERED:
                    break
            if items:
                try:
                    self._send(items)
                except Exception as exc:
                    log.exception("smallops: telemetry export hit an unexpected error")
                    reason = f"unexpected error: {type(exc).__name__}"
                    for ready in items:
                        self._drop(ready, reason)
            self.drops.report(force=bool(markers) or stop)
            for marker in markers:
                marker.set()
            if stop:
                return

    def _next(self, wait: float, pace: _Pace) -> Any:
        """The batch's next item, waiting up to `wait` seconds for it, else `_LINGERED`. A
        wait is no work: after one, the stretch starts again."""
        try:
            return self._queue.get_nowait()
        except queue.Empty:
            if wait <= 0:
                return _LINGERED
        try:
            item = self._queue.get(timeout=wait)
        except queue.Empty:
            return _LINGERED
        pace.restart()
        return item

    def _rest(self, pace: _Pace) -> None:
        """After a run, once the stretch of work since the last rest or wait reaches
        `PACE_SECONDS`, if more runs wait: while the export keeps up (few wait), a rest, so
        that a writer batch's runs are built over the time of many calls instead of in one
        burst that a single call waits out; when runs pile up, only a brief step aside. With
        none waiting, the wait for the next run is the rest."""
        if pace.due():
            waiting = self._queue.qsize()
            if waiting:
                time.sleep(SPREAD_SECONDS if waiting < KEEPING_UP else STEP_ASIDE_SECONDS)
                pace.restart()


@dataclass
class _Ready:
    """A run waiting in a batch: its spans as the request will carry them, and what a drop of
    them is noted with."""

    workflow: str | None
    count: int  # its spans: what a drop counts
    folder: Path | None
    spans: list[Any]


class _Pace:
    """Steps aside (sleeps briefly, releasing the GIL) once the export thread has run for
    `PACE_SECONDS` since it last did, so call threads never wait long for the interpreter."""

    def __init__(self) -> None:
        self._since = time.perf_counter()

    def due(self) -> bool:
        return time.perf_counter() - self._since >= PACE_SECONDS

    def __call__(self) -> None:
        if self.due():
            time.sleep(STEP_ASIDE_SECONDS)
            self.restart()

    def restart(self) -> None:
        self._since = time.perf_counter()


def linger_seconds(env: Mapping[str, str]) -> float:
    """How long a batch waits for more runs: OTEL_BSP_SCHEDULE_DELAY (milliseconds, as the
    SDK's batch processor reads it) when it is a number, else `LINGER_SECONDS`."""
    try:
        delay = float(env.get(_LINGER_VARIABLE, "").strip()) / 1000
    except ValueError:
        return LINGER_SECONDS
    return min(delay, 60.0) if delay >= 0 else LINGER_SECONDS


def _http_options(exporter: type, endpoint: str, env: Mapping[str, str]) -> dict[str, Any]:
    """How the exporter sends: through the lean `http.client` transport (otel_http.py) where it
    sends what requests would, else through a requests session that reads the proxy settings
    once, when the export starts (by default requests walks the whole environment again on
    every request, with the GIL held). The exporter makes its own session where the
    environment names a session provider, or a CA bundle for requests that the lean transport
    cannot take (a proxy, an older SDK)."""
    if env.get(_SESSION_VARIABLE):
        return {}
    if "_transport" in inspect.signature(exporter).parameters:
        transport = lean_transport(endpoint, env)
        if transport is not None:
            return {"_transport": transport}
    if any(env.get(name) for name in _CA_VARIABLES):
        return {}
    import requests
    from requests.utils import get_environ_proxies

    session = requests.Session()
    session.trust_env = False  # no per-request look at proxies, CA bundles or ~/.netrc
    session.proxies.update(get_environ_proxies(endpoint))  # NO_PROXY applied
    return {"session": session}


class _Sdk:
    """The OpenTelemetry SDK's OTLP/HTTP exporter and the span type it sends.

    The exporter's own `export` encodes a whole batch in one go with the SDK's encoder (about
    0.1 ms of Python per span). Here each span is written as protobuf bytes by otel_wire.py when
    its run arrives (`written`), a batch's request only joins them, and the exporter's HTTP
    client sends it (same endpoint, headers, compression, timeout and retries)."""

    def __init__(self, timeout: float, endpoint: str, env: Mapping[str, str]) -> None:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import ReadableSpan
            from opentelemetry.sdk.trace.export import SpanExportResult
            from opentelemetry.sdk.util.instrumentation import InstrumentationScope
            from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
        except ImportError as exc:
            raise ConfigError(
                "OpenTelemetry export needs the SDK and its OTLP/HTTP exporter",
                hint="pip install 'smallops[otel]' (or unset OTEL_EXPORTER_OTLP_ENDPOINT)",
            ) from exc
        self._exporter = OTLPSpanExporter(
            endpoint=endpoint, timeout=timeout, **_http_options(OTLPSpanExporter, endpoint, env)
        )
        self._resource = Resource.create({"service.name": "smallops"})
        self._scope = InstrumentationScope("smallops", _version())
        self._readable, self._context, self._ok = ReadableSpan, SpanContext, SpanExportResult
        self._kinds = {"INTERNAL": SpanKind.INTERNAL, "CLIENT": SpanKind.CLIENT}
        self._status, self._code, self._sampled = Status, StatusCode, TraceFlags(1)
        # The exporter's HTTP client and size limit, and the resource and scope as the SDK
        # encodes them; without these (another SDK release), the exporter's own export sends.
        self._client = getattr(self._exporter, "_client", None)
        self._max_bytes = getattr(self._exporter, "_max_request_size", 0) or 0
        self._framing = self._resource_and_scope()

    @property
    def closed(self) -> bool:
        return bool(getattr(self._exporter, "_shutdown", False))

    @property
    def _writes_bytes(self) -> bool:
        return self._framing is not None and callable(getattr(self._client, "export", None))

    def written(self, spans: list[SpanValue]) -> list[Any]:
        """The spans as `export` takes them: each a serialized Span message framed as a field
        of its ScopeSpans, or (without the SDK's framing, another SDK release) the SDK's own
        span."""
        if self._writes_bytes:
            return [framed_span(span) for span in spans]
        return [self._span(span) for span in spans]

    def export(self, written: list[Any]) -> bool:
        """Send spans from `written` in one request; whether the collector took them."""
        if self.closed:
            return False  # what is left is dropped and counted, as with the SDK's own export
        if self._framing is None or not self._writes_bytes:
            return bool(self._exporter.export(written) is self._ok.SUCCESS)
        data = framed_request(*self._framing, written)
        if 0 < self._max_bytes < len(data):
            log.warning(
                "smallops: dropped a span batch of %d bytes (the exporter's limit is %d)",
                len(data),
                self._max_bytes,
            )
            return False
        return bool(self._client.export(data).success)  # type: ignore[union-attr]

    def encode(self, spans: list[SpanValue]) -> bytes:
        """The serialized ExportTraceServiceRequest of `spans`."""
        if self._framing is None:
            raise RuntimeError("the SDK's resource and scope encoding is unavailable")
        return request_bytes(*self._framing, [span_bytes(span) for span in spans])

    def shutdown(self) -> None:
        self._exporter.shutdown()  # type: ignore[no-untyped-call]

    def _resource_and_scope(self) -> tuple[bytes, bytes] | None:
        """The serialized Resource and InstrumentationScope, from the SDK's own encoder."""
        try:
            try:
                from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
            except ImportError:  # older releases
                from opentelemetry.exporter.otlp.proto.common._internal.trace_encoder import (
                    encode_spans,
                )
            probe = SpanValue("probe", 1, 1, None, "INTERNAL", 1, 1, {})
            request = encode_spans([self._span(probe)])
            (resource_spans,) = request.resource_spans
            (scope_spans,) = resource_spans.scope_spans
            if resource_spans.schema_url or scope_spans.schema_url:
                return None  # otel_wire writes neither
            return (
                resource_spans.resource.SerializeToString(),
                scope_spans.scope.SerializeToString(),
            )
        except Exception:
            return None

    def _span(self, span: SpanValue) -> Any:
        context = self._context(span.trace_id, span.span_id, False, self._sampled)
        parent = (
            self._context(span.trace_id, span.parent_id, False, self._sampled)
            if span.parent_id is not None
            else None
        )
        status = (
            self._status(self._code.ERROR, span.description)
            if span.error
            else self._status(self._code.UNSET)
        )
        return self._readable(
            span.name,
            context=context,
            parent=parent,
            resource=self._resource,
            attributes=span.attributes,
            kind=self._kinds[span.kind],
            status=status,
            start_time=span.start_ns,
            end_time=span.end_ns,
            instrumentation_scope=self._scope,
        )


def shown(endpoint: str) -> str:
    """The endpoint as a message may show it: scheme, host and port (never a user, a password
    or a query string it might carry)."""
    parts = urlsplit(endpoint)
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{parts.hostname}{port}" if parts.hostname else "(unparsed)"


def _version() -> str:
    try:
        return metadata.version("smallops")
    except metadata.PackageNotFoundError:
        return "unknown"


_export: SpanExport | ProcessExport | None = None
_export_lock = threading.Lock()


_unavailable = False  # export was asked for and the SDK is missing: said once
PROCESS_VARIABLE = "SMALLOPS_OTEL_PROCESS"  # "1": export from a child process, not a thread


def live_export(telemetry: Telemetry | None = None) -> SpanExport | ProcessExport | None:
    """The process's span export when the environment (or, where it is silent, `telemetry`:
    smallops.toml's [telemetry]) asks for one, else None: a thread of this process, or with
    SMALLOPS_OTEL_PROCESS=1 a child process (otel_process.py). A missing SDK is logged once and
    leaves the log writer as it was: telemetry never costs a record."""
    global _export, _unavailable
    if _export is not None or _unavailable:
        return _export
    env = export_environment(telemetry)
    if env is None:
        return None
    with _export_lock:
        if _export is None and not _unavailable:
            try:
                if env.get(PROCESS_VARIABLE, "").strip() == "1":
                    _sdk_installed()
                    _export = ProcessExport(env)
                else:
                    _export = SpanExport(environ=env)
            except ConfigError as exc:
                _unavailable = True
                log.error("smallops: no OpenTelemetry export: %s (%s)", exc.message, exc.hint)
    return _export


def _sdk_installed() -> None:
    """ConfigError unless the OTLP/HTTP exporter can be imported (checked without importing
    it: the child process does that)."""
    from importlib.util import find_spec

    try:
        found = find_spec("opentelemetry.exporter.otlp.proto.http") is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        raise ConfigError(
            "OpenTelemetry export needs the SDK and its OTLP/HTTP exporter",
            hint="pip install 'smallops[otel]' (or unset OTEL_EXPORTER_OTLP_ENDPOINT)",
        )


def after_fork() -> None:
    """In a forked process: forget the parent's export; the first run exported here starts
    this process's own."""
    global _export, _export_lock
    if isinstance(_export, ProcessExport):
        _export.abandon()
    _export, _export_lock = None, threading.Lock()


def dropped_spans() -> int:
    """Spans this process could not deliver to the collector."""
    return _export.dropped if _export is not None else 0


def reset() -> None:
    """Send what is queued and forget the export (tests, and apps that change the endpoint)."""
    global _export, _unavailable
    with _export_lock:
        if _export is not None:
            _export.flush(10.0)
            _export.close()
        _export, _unavailable = None, False
