"""OpenTelemetry export: real SDK calls against the emulator, spans decoded by a real OTLP/HTTP
receiver, and every figure checked against the log."""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from smallops import secondary
from smallops.storage import otel_export, otel_spans, otel_wire
from smallops.storage.otel_items import Committed, described
from smallops.storage.otel_spans import span_id_of, trace_id_of
from smallops.storage.schema import RUN_COLUMNS
from smallops.testing import recorded_runs

from emulators import delay, ok, refusal, status
from otlp_receiver import OtlpReceiver, Span

pytest.importorskip("opentelemetry.sdk")

CLIENT, INTERNAL, ERROR = 3, 1, 2
EMAIL = {"subject": "Invoice for ann@example.com", "body": "Call me on +44 20 7946 0958."}


@pytest.fixture
def collector(monkeypatch: pytest.MonkeyPatch) -> Iterator[OtlpReceiver]:
    """A receiver, and the environment pointing smallops at it (with a header it must send)."""
    with OtlpReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"x-team-key=k{id(receiver)}")
        monkeypatch.delenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", raising=False)
        yield receiver


def exported(workflow: Any) -> tuple[list[dict[str, Any]], list[Span]]:
    """The workflow's runs from the log, and the spans the collector received."""
    runs = recorded_runs(workflow)
    export = otel_export.live_export()
    assert export is not None and export.flush(10)
    return runs, list(otel_export_receiver_spans())


_current: list[OtlpReceiver] = []


def otel_export_receiver_spans() -> list[Span]:
    return _current[0].spans


@pytest.fixture(autouse=True)
def _remember(request: pytest.FixtureRequest) -> Iterator[None]:
    if "collector" in request.fixturenames:
        _current.append(request.getfixturevalue("collector"))
    yield
    _current.clear()


def tree(spans: list[Span], run: dict[str, Any]) -> tuple[Span, list[Span]]:
    """The run's span and its attempt spans (in order), checked to form one trace."""
    trace = f"{trace_id_of(run['id']):032x}"
    mine = [s for s in spans if s.trace_id == trace]
    roots = [s for s in mine if not s.parent_id]
    assert len(roots) == 1, mine
    root = roots[0]
    children = sorted((s for s in mine if s is not root), key=lambda s: s.start_ns)
    assert all(s.parent_id == root.span_id for s in children)
    assert len(children) == run["attempt_count"]
    return root, children


def ns(moment: datetime) -> int:
    """Epoch nanoseconds of a time from the log (whole microseconds)."""
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (moment.replace(tzinfo=timezone.utc) - epoch) // timedelta(microseconds=1) * 1000


def check_run_span(root: Span, run: dict[str, Any]) -> None:
    a = root.attributes
    assert root.name == f"workflow {run['workflow']}" and root.kind == INTERNAL
    assert root.span_id == f"{span_id_of(run['id'], 'run'):016x}"
    assert a["gen_ai.prompt.name"] == run["workflow"]
    assert a["gen_ai.prompt.version"] == run["prompt_version"]
    assert a["smallops.run.id"] == run["id"] and a["smallops.run.status"] == run["status"]
    assert a.get("smallops.review.route") == run["review_route"]
    assert a["gen_ai.usage.input_tokens"] == run["input_tokens"]
    assert a["gen_ai.usage.output_tokens"] == run["output_tokens"]
    assert a.get("gen_ai.usage.cost") == pytest.approx(run["cost_usd"])
    assert root.service == "smallops"
    assert root.start_ns == ns(run["started_at"])
    assert root.end_ns >= root.start_ns
    if run["error_type"]:
        assert root.status_code == ERROR and a["error.type"] == run["error_type"]
    else:
        assert root.status_code != ERROR and "error.type" not in a


def check_attempt(span: Span, run: dict[str, Any], attempt: dict[str, Any]) -> None:
    a = span.attributes
    assert span.name == f"chat {run['model_requested']}" and span.kind == CLIENT
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.provider.name"] == run["provider"]
    assert a["gen_ai.request.model"] == run["model_requested"]
    assert a["server.address"] == "127.0.0.1" and isinstance(a["server.port"], int)
    assert span.start_ns == ns(datetime.fromtimestamp(attempt["started_at"], timezone.utc))
    usage = attempt.get("usage")
    if usage:
        assert a["gen_ai.response.model"] == attempt["model"]
        assert a["gen_ai.usage.input_tokens"] == usage["input_tokens"]
        assert a["gen_ai.usage.output_tokens"] == usage["output_tokens"]
        assert a["gen_ai.usage.cache_read.input_tokens"] == usage["cached_tokens"]
        assert a["gen_ai.usage.reasoning.output_tokens"] == usage["reasoning_tokens"]
        assert a["gen_ai.response.finish_reasons"] == [attempt["finish"]]
    assert "gen_ai.input.messages" not in a and "gen_ai.output.messages" not in a


def test_success_is_a_run_span_over_one_chat_client_span(make_workflow, emulator, collector):
    emulator.script(ok(input_tokens=120, output_tokens=30, cached_tokens=100, reasoning_tokens=7))
    wf = make_workflow(temperature=0.2, max_tokens=300)
    assert wf.run(**EMAIL).status == "pending_review"
    runs, spans = exported(wf)
    (run,) = runs
    root, (chat,) = tree(spans, run)
    check_run_span(root, run)
    check_attempt(chat, run, run["attempts"][0])
    assert chat.attributes["gen_ai.request.temperature"] == 0.2
    assert chat.attributes["gen_ai.request.max_tokens"] == 300
    assert chat.attributes["gen_ai.response.id"].startswith("chatcmpl")
    assert chat.attributes["gen_ai.usage.cache_read.input_tokens"] == 100
    assert chat.status_code != ERROR
    assert run["cost_usd"] > 0
    assert {h.get("x-team-key") for h in collector.headers} == {f"k{id(collector)}"}


def test_refusal_and_a_retried_429_carry_their_error_types(make_workflow, emulator, collector):
    emulator.script(status(429, retry_after=0.05), ok(), refusal())
    wf = make_workflow()
    wf.run(**EMAIL)
    wf.run(**EMAIL)
    runs, spans = exported(wf)
    retried, refused = runs
    root, (limited, answered) = tree(spans, retried)
    check_run_span(root, retried)
    for span, attempt in zip((limited, answered), retried["attempts"], strict=True):
        check_attempt(span, retried, attempt)
    assert limited.status_code == ERROR and limited.attributes["error.type"] == "rate_limited"
    assert limited.attributes["http.response.status_code"] == 429
    assert answered.status_code != ERROR
    root, (chat,) = tree(spans, refused)
    check_run_span(root, refused)
    assert refused["error_type"] == "refused" and refused["status"] == "queued_for_human"
    assert chat.status_code == ERROR and chat.attributes["error.type"] == "refused"
    assert chat.attributes["gen_ai.response.finish_reasons"] == ["refusal"]


def test_timeout_and_secondary_fallback_are_two_traces(make_workflow, emulator, collector):
    emulator.script(delay(1.0), ok())
    wf = make_workflow(timeout=0.3, retries=0, fallback=secondary("anthropic:claude-sonnet-4-6"))
    assert wf.run(**EMAIL).status == "pending_review"
    runs = recorded_runs(wf)
    _, spans = exported(wf)
    handed, answered = sorted(runs, key=lambda r: r["started_at"])
    root, (timed_out,) = tree(spans, handed)
    check_run_span(root, handed)
    assert handed["status"] == "fallback_secondary" and handed["error_type"] == "timeout"
    assert timed_out.status_code == ERROR and timed_out.attributes["error.type"] == "timeout"
    root, (chat,) = tree(spans, answered)
    check_run_span(root, answered)
    assert chat.name == "chat claude-sonnet-4-6"
    assert chat.attributes["gen_ai.provider.name"] == "anthropic"
    check_attempt(chat, answered, answered["attempts"][0])


def test_repair_is_a_second_chat_span(make_workflow, emulator, collector):
    emulator.script(ok({"category": "nonsense"}), ok())
    wf = make_workflow()
    wf.run(**EMAIL)
    runs, spans = exported(wf)
    (run,) = runs
    root, (first, repair) = tree(spans, run)
    assert first.attributes["smallops.attempt.purpose"] == "call"
    assert repair.attributes["smallops.attempt.purpose"] == "repair"
    assert first.status_code != ERROR and root.status_code != ERROR
    total = (
        first.attributes["gen_ai.usage.input_tokens"]
        + repair.attributes["gen_ai.usage.input_tokens"]
    )
    assert total == run["input_tokens"] == root.attributes["gen_ai.usage.input_tokens"]


def messages_of(spans: list[Span]) -> tuple[str | None, str | None]:
    (chat,) = [s for s in spans if s.kind == CLIENT]
    return chat.attributes.get("gen_ai.input.messages"), chat.attributes.get(
        "gen_ai.output.messages"
    )


@pytest.mark.parametrize("mode", ["full", "redacted", "metadata"])
def test_content_only_when_asked_and_never_beyond_the_mode(
    make_workflow, emulator, collector, monkeypatch, mode
):
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    wf = make_workflow(content=mode, review="none", fallback="raise")
    wf.run(**EMAIL)
    _, spans = exported(wf)
    sent, answer = messages_of(spans)
    if mode == "metadata":
        assert sent is None and answer is None
        return
    import json

    inputs, outputs = json.loads(sent), json.loads(answer)
    assert [m["role"] for m in inputs] == ["system", "user"]
    assert inputs[1]["parts"][0]["type"] == "text"
    assert outputs[0]["role"] == "assistant" and outputs[0]["finish_reason"] == "stop"
    user = inputs[1]["parts"][0]["content"]
    if mode == "full":
        assert "ann@example.com" in user and "7946 0958" in user
    else:
        assert "ann@example.com" not in user and "7946" not in user
        assert "[email]" in user


def test_no_content_by_default(make_workflow, emulator, collector):
    wf = make_workflow(review="none")
    wf.run(**EMAIL)
    _, spans = exported(wf)
    assert messages_of(spans) == (None, None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_collector_that_is_down_costs_calls_nothing_and_drops_are_counted(
    make_workflow, emulator, monkeypatch
):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    wf = make_workflow(review="none")
    wf.run(**EMAIL)  # warm up
    began = time.perf_counter()
    for _ in range(20):
        wf.run(**EMAIL)
    on = time.perf_counter() - began
    assert len(recorded_runs(wf)) == 21  # the log is whole
    export = otel_export.live_export()
    assert export is not None
    assert export.flush(30)
    assert export.dropped == 2 * 21 and export.sent == 0
    assert otel_export.dropped_spans() == 42
    assert on / 20 < 0.25  # each call stays a local round trip, never an export timeout


def test_the_proxy_settings_are_read_once_and_still_obeyed(
    make_workflow, emulator, collector, monkeypatch
):
    """The export's HTTP session reads HTTP_PROXY / NO_PROXY when it starts, not per request:
    a proxy that is down loses the spans (counted); NO_PROXY for the collector sends them."""
    wf = make_workflow(review="none")
    wf.run(**EMAIL)
    (run,), spans = exported(wf)  # the live export's two spans, sent before any proxy
    assert len(spans) == 2
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")  # the SDK's too: after
    monkeypatch.setenv("NO_PROXY", "example.invalid")
    export = otel_export.SpanExport(timeout=0.5)
    export.offer([(run, None, None)])
    assert export.flush(30) and export.sent == 0 and export.dropped == 2
    export.close()
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    export = otel_export.SpanExport(timeout=0.5)
    export.offer([(run, None, None)])
    assert export.flush(30) and export.sent == 2 and export.dropped == 0
    export.close()
    assert len(collector.spans) == 4  # the live export's two, and these


def sent_all_but_the_middle_run(
    items: list[Any], runs: list[dict[str, Any]], collector: OtlpReceiver, before: int, error: str
) -> None:
    """Offer three runs whose middle one cannot be written: its two spans alone are dropped and
    counted, with `error` in the last error, and the other two runs' spans reach the collector
    (after the `before` it held)."""
    export = otel_export.SpanExport()
    export.offer(items)
    assert export.flush(30)
    export.close()
    assert export.sent == 4 and export.dropped == 2
    assert error in (export.last_error or "")
    assert {s.trace_id for s in collector.spans[before:]} == {
        f"{trace_id_of(run['id']):032x}" for run in (runs[0], runs[2])
    }


def test_a_run_whose_spans_cannot_be_written_costs_only_its_own_spans(
    make_workflow, emulator, collector
):
    """Each run's spans are written as it arrives: one that cannot be (an attribute with no
    OTLP encoding) is dropped and counted alone, and its batch still goes."""
    wf = make_workflow(review="none")
    for _ in range(3):
        wf.run(**EMAIL)
    runs, live = exported(wf)  # the live export's spans, sent first
    odd = dict(runs[1], provider=object())  # gen_ai.provider.name of no encodable type
    sent_all_but_the_middle_run(
        [(runs[0], None, None), (odd, None, None), (runs[2], None, None)],
        runs,
        collector,
        len(live),
        "TypeError",
    )


def test_the_writer_only_hands_rows_over_and_a_row_unreadable_costs_only_its_spans(
    make_workflow, emulator, collector, monkeypatch
):
    """The log writer hands committed rows over as they are (`Committed`): the export thread
    reads each back, spread over its own time. A row that cannot be read back is dropped and
    counted alone, its spans counted from its attempt count; a drop counts a row's spans the
    way it counts a read-back run's."""
    handed: list[Any] = []
    offer = otel_export.SpanExport.offer

    def keep(self: Any, items: Any, report_to: Any = None) -> None:
        items = list(items)
        handed.extend(items)
        offer(self, items, report_to)

    monkeypatch.setattr(otel_export.SpanExport, "offer", keep)
    wf = make_workflow(review="none")
    for _ in range(3):
        wf.run(**EMAIL)
    runs, live = exported(wf)
    assert len(live) == 6 and [type(item) for item in handed] == [Committed] * 3
    assert [described(item) for item in handed] == [("triage", 2)] * 3
    assert [described(item.item()) for item in handed] == [("triage", 2)] * 3
    attempts = RUN_COLUMNS.index("attempts")
    row = list(handed[1].run)
    row[attempts] = '[{"started_at": '  # cut short
    broken = dataclasses.replace(handed[1], run=tuple(row))
    sent_all_but_the_middle_run(
        [handed[0], broken, handed[2]],
        runs,
        collector,
        len(live),
        "its spans could not be written",
    )


def test_the_thread_rests_after_each_stretch_of_work_only_while_it_keeps_up(
    make_workflow, emulator, collector, monkeypatch
):
    """Runs are built back to back for about PACE_SECONDS of work (a wait for the next run is
    no work), then the thread rests while it keeps up (SPREAD_SECONDS: the work is spread over
    the calls' time, one wake-up per stretch rather than per run); a backlog gets only brief
    steps aside, so it drains at full speed."""
    rests: list[float] = []

    class Clock:  # the module's time, with the export thread's sleeps noted
        monotonic, perf_counter = staticmethod(time.monotonic), staticmethod(time.perf_counter)

        @staticmethod
        def sleep(seconds: float) -> None:
            if threading.current_thread().name == "smallops-otel":
                rests.append(seconds)
            time.sleep(seconds)

    monkeypatch.setattr(otel_export, "time", Clock)
    spread = otel_export.SPREAD_SECONDS
    wf = make_workflow(review="none")
    wf.run(**EMAIL)
    (run,), _ = exported(wf)
    export = otel_export.SpanExport()
    rests.clear()  # the live export's, for the run above
    monkeypatch.setattr(otel_export, "PACE_SECONDS", 60.0)  # one stretch holds them all
    export.offer([(run, None, None)] * 5)
    assert export.flush(30)
    assert rests.count(spread) == 0
    export.offer([(run, None, None)] * 5)  # queued before the thread rests after any of them
    monkeypatch.setattr(otel_export, "PACE_SECONDS", 0.0)  # a stretch is one run
    assert export.flush(30)
    assert rests.count(spread) >= 3  # after each run while more wait, not after the last
    rests.clear()
    monkeypatch.setattr(otel_export, "PACE_SECONDS", 0.5)
    export.offer([(run, None, None)])
    time.sleep(0.6)  # the batch (a second's linger) waits for more: no work, no rest
    export.offer([(run, None, None)] * 2)
    assert export.flush(30)
    assert rests.count(spread) == 0
    rests.clear()
    monkeypatch.setattr(otel_export, "PACE_SECONDS", 60.0)  # the offer does not step aside
    export.offer([(run, None, None)] * 1000)
    monkeypatch.setattr(otel_export, "PACE_SECONDS", 0.0)
    assert export.flush(60)
    export.close()
    assert export.sent == 2 * 1013 and export.dropped == 0
    # only the last runs (fewer than KEEPING_UP wait) are rested after; the rest step aside
    assert rests.count(spread) < 2 * otel_export.KEEPING_UP
    assert rests.count(otel_export.STEP_ASIDE_SECONDS) > 500


def test_spans_dropped_by_a_close_mid_request_do_not_blame_the_collector(
    make_workflow, emulator, collector
):
    wf = make_workflow(review="none")
    wf.run(**EMAIL)
    runs, _ = exported(wf)
    export = otel_export.SpanExport()
    sdk_export = export._sdk.export

    def closed_meanwhile(spans):
        export._sdk.shutdown()  # as close() from another thread would, while this one sends
        return sdk_export(spans)

    export._sdk.export = closed_meanwhile
    assert export.send_now([(runs[0], None, None)]) == 0
    assert export.dropped == 2
    assert export.last_error is not None and "closed" in export.last_error


def test_the_batch_delay_comes_from_the_sdk_variable():
    assert otel_export.linger_seconds({}) == otel_export.LINGER_SECONDS
    assert otel_export.linger_seconds({"OTEL_BSP_SCHEDULE_DELAY": "250"}) == 0.25
    assert otel_export.linger_seconds({"OTEL_BSP_SCHEDULE_DELAY": "0"}) == 0.0
    for odd in ("soon", "-5", "nan", ""):
        assert otel_export.linger_seconds({"OTEL_BSP_SCHEDULE_DELAY": odd}) == 1.0
    assert otel_export.linger_seconds({"OTEL_BSP_SCHEDULE_DELAY": "1e12"}) == 60.0


def test_backfill_twice_sends_the_ids_the_live_export_sent(
    make_workflow, emulator, collector, capsys, tmp_path
):
    """`smallops export otel` reads the log and sends the very spans the writer sent."""
    from conftest import smallops

    emulator.script(status(429, retry_after=0.05), ok(), refusal(), ok())
    wf = make_workflow()
    for _ in range(3):
        wf.run(**EMAIL)
    _, live = exported(wf)
    (tmp_path / "smallops.toml").write_text(
        f'[smallops]\ndatabase_url = "sqlite:///{tmp_path / "log.db"}"\n'
    )
    sent = []
    for _ in range(2):
        before = len(collector.spans)
        code, out, err = smallops(capsys, "--project", str(tmp_path), "export", "otel")
        assert code == 0, err
        assert "3 runs since 7d: 7 spans sent" in out
        sent.append(collector.spans[before:])

    def key(span: Span) -> tuple[Any, ...]:
        attributes = tuple(sorted((k, repr(v)) for k, v in span.attributes.items()))
        return (
            span.trace_id,
            span.span_id,
            span.parent_id,
            span.name,
            span.start_ns,
            span.end_ns,
            span.status_code,
            attributes,
        )

    assert sorted(map(key, sent[0])) == sorted(map(key, sent[1])) == sorted(map(key, live))
    assert len(live) == 7


def test_a_run_under_the_applications_span_joins_its_trace_live_and_in_backfill(
    make_workflow, emulator, collector, capsys, tmp_path, database_url, settings
):
    """The app traces its request with its own TracerProvider; the run's span hangs under the
    app's span, in the app's trace, with span ids still derived from the run id."""
    import dataclasses

    from opentelemetry.sdk.trace import TracerProvider

    from conftest import smallops

    tracer = TracerProvider().get_tracer("shop")
    emulator.script(status(429, retry_after=0.05), ok(), ok())
    wf = make_workflow(settings=dataclasses.replace(settings, database_url=database_url))
    with tracer.start_as_current_span("POST /triage") as request_span:
        wf.run(**EMAIL)
        caller = request_span.get_span_context()
    wf.run(**EMAIL)  # no span of the app's: a trace of its own
    runs, live = exported(wf)
    inside, outside = sorted(runs, key=lambda r: r["started_at"])
    app_trace, app_span = f"{caller.trace_id:032x}", f"{caller.span_id:016x}"
    assert inside["trace_parent"] == f"{app_trace}-{app_span}"
    assert outside["trace_parent"] is None

    def joined(spans: list[Span]) -> tuple[Span, list[Span]]:
        mine = [s for s in spans if s.trace_id == app_trace]
        (root,) = [s for s in mine if s.parent_id == app_span]
        children = sorted((s for s in mine if s is not root), key=lambda s: s.start_ns)
        assert [s.parent_id for s in children] == [root.span_id] * 2
        return root, children

    root, (limited, answered) = joined(live)
    check_run_span(root, inside)
    assert limited.attributes["error.type"] == "rate_limited"
    assert answered.span_id == f"{span_id_of(inside['id'], 'attempt-2'):016x}"
    assert not [s for s in live if s.trace_id == f"{trace_id_of(inside['id']):032x}"]
    tree(live, outside)  # the other run is a trace of its own, as before
    (tmp_path / "smallops.toml").write_text(f'[smallops]\ndatabase_url = "{database_url}"\n')
    before = len(collector.spans)
    code, out, err = smallops(capsys, "--project", str(tmp_path), "export", "otel")
    assert code == 0 and "2 runs since 7d: 5 spans sent" in out, err
    sent = collector.spans[before:]
    again_root, again_children = joined(sent)
    assert (again_root.span_id, again_root.start_ns) == (root.span_id, root.start_ns)
    assert [s.span_id for s in again_children] == [limited.span_id, answered.span_id]


def test_without_opentelemetry_loaded_a_call_never_imports_it(tmp_path):
    """The request path looks for the app's span only when the app has loaded OpenTelemetry."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import smallops

    source = str(Path(smallops.__file__).resolve().parents[1])
    script = (
        "import sys\n"
        "from smallops import _lifecycle, trace_context\n"
        "assert trace_context.caller_span() is None\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')], 'imported'\n"
        "print('clean')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": source},
        check=False,
    )
    assert done.returncode == 0 and done.stdout.strip() == "clean", done.stderr


def test_span_times_are_rounded_to_the_microsecond_as_the_log_rounds_them():
    """A span's times are the log's: a float time rounded to the microsecond as
    `datetime.fromtimestamp` rounds it (half to even), so live and backfilled spans agree."""
    import random

    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)

    def as_the_log_keeps_it(seconds: float) -> int:
        moment = datetime.fromtimestamp(seconds, timezone.utc)
        return (moment - epoch) // timedelta(microseconds=1) * 1000

    rng = random.Random(13)
    times = [rng.uniform(1.6e9, 1.9e9) for _ in range(20_000)]
    times += [rng.uniform(-5.0, 5.0) for _ in range(2_000)]
    whole = [1_700_000_000 + rng.randrange(10**6) for _ in range(2_000)]
    times += [w + (rng.randrange(10**6) + 0.5) / 1e6 for w in whole]  # half a microsecond
    times += [0.0, -0.0, 0.5e-6, 1.5e-6, -0.5e-6, -1.5e-6, 0.9999995, 1_700_000_000.9999995]
    mismatched = [t for t in times if otel_spans._ns(t) != as_the_log_keeps_it(t)]
    assert mismatched == []


def test_the_response_id_is_read_from_the_body_the_log_kept():
    """gen_ai.response.id: read off the start of a vendor's body (compact or indented), and
    any other body parsed, as JSON readers read it."""
    found = otel_spans._response_id
    assert found('{"id":"chatcmpl-1","object":"chat.completion"}') == "chatcmpl-1"
    assert found('{\n  "id": "msg_01",\n  "type": "message"\n}') == "msg_01"
    assert found('{"id": "a\\"b", "x": 1}') == 'a"b'  # an escape: the body is parsed
    assert found('{"choices": [{"id": "inner"}], "id": "outer"}') == "outer"
    assert found('{"choices": [{"id": "inner"}]}') is None
    assert found('{"id": 7}') is None and found("<html>bad gateway</html>") is None
    assert found('{"id": "cut') is None and found(None) is None
    assert found({"id": "from-postgres"}) == "from-postgres"  # jsonb comes back decoded


def test_a_stored_trace_parent_is_read_only_when_well_formed():
    from smallops.trace_context import parse

    good = f"{'ab' * 16}-{'cd' * 8}"
    assert parse(good) == (int("ab" * 16, 16), int("cd" * 8, 16))
    for bad in (None, "", "x", f"{'ab' * 16}-{'zz' * 8}", f"{'0' * 32}-{'cd' * 8}", good + "0"):
        assert parse(bad) is None


def test_status_shows_the_spans_a_process_could_not_deliver(
    make_workflow, emulator, monkeypatch, capsys, tmp_path
):
    """The process that calls models notes its drops in the project's .smallops folder;
    `smallops status`, another process, reads them per workflow."""
    import json

    from smallops.storage.telemetry_state import telemetry_folder

    from conftest import smallops

    port = free_port()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://user:pw@127.0.0.1:{port}/otlp?k=1")
    wf = make_workflow(review="none")
    for _ in range(3):
        wf.run(**EMAIL)
    assert len(recorded_runs(wf)) == 3
    export = otel_export.live_export()
    assert export is not None and export.flush(30) and export.dropped == 6
    (tmp_path / "smallops.toml").write_text(
        f'[smallops]\ndatabase_url = "sqlite:///{tmp_path / "log.db"}"\n'
        f'[providers.openai]\nbase_url = "{emulator.openai_base_url}"\n'
    )
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "triage.py").write_text(
        "from smallops import Workflow\n"
        "triage = Workflow('triage', model='openai:gpt-4o-mini-2024-07-18',\n"
        "                  prompt='../triage.prompt', review='none', fallback='raise')\n"
        "other = Workflow('other', model='openai:gpt-4o-mini-2024-07-18',\n"
        "                 prompt='../triage.prompt', review='none', fallback='raise')\n"
    )
    assert list(telemetry_folder(tmp_path / ".smallops").glob("otel-*.json"))
    code, out, err = smallops(capsys, "-p", str(tmp_path), "status", "--json")
    assert code == 0, err
    rows = {row["workflow"]: row for row in map(json.loads, out.splitlines())}
    assert rows["other"]["spans_dropped"] is None
    lost = rows["triage"]["spans_dropped"]
    assert lost["spans"] == 6 and lost["processes"] == 1 and lost["last_at"]
    assert (
        lost["last_error"] == f"the collector at http://127.0.0.1:{port} did not accept the spans"
    )
    code, out, _ = smallops(capsys, "-p", str(tmp_path), "status")
    assert code == 0 and "telemetry 6 spans the OpenTelemetry collector did not get" in out
    assert "`smallops export otel --since 1d`" in out and "pw" not in out


def test_a_healthy_export_writes_no_drop_file_and_old_ones_are_not_shown(
    make_workflow, emulator, collector, tmp_path
):
    import json
    import os

    from smallops.storage.telemetry_state import read_drops, telemetry_folder, write_drops

    wf = make_workflow(review="none")
    wf.run(**EMAIL)
    exported(wf)
    folder = telemetry_folder(tmp_path / ".smallops")
    assert not folder.exists()
    assert write_drops(folder, {"triage": 4}, "queue full", 1000.0)
    assert read_drops(folder)["triage"] == {
        "spans": 4,
        "processes": 1,
        "last_error": "queue full",
        "last_at": 1000.0,
    }
    path = folder / f"otel-{os.getpid()}.json"
    state = json.loads(path.read_text())
    state["updated_at"] -= 25 * 3600  # a process that last dropped spans more than a day ago
    path.write_text(json.dumps(state))
    (folder / "otel-1.json").write_text("{half")
    assert read_drops(folder) == {}


def test_the_written_request_is_the_one_the_sdk_would_build(make_workflow, emulator):
    """The export thread writes the protobuf bytes itself, a run's spans at a time: joined,
    they are the very ExportTraceServiceRequest the SDK's encoder makes of the whole batch."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    from smallops.storage.otel_spans import SpanValue, run_spans

    emulator.script(status(429, retry_after=0.05), ok(), refusal(), ok(), ok(), ok())
    wf = make_workflow(content="full")
    for _ in range(5):
        wf.run(**EMAIL)
    runs = recorded_runs(wf)
    spans = [
        span
        for index, run in enumerate(runs)
        for span in run_spans(
            run, {"temperature": 0.5}, content=True, parent=(7, 9) if index == 1 else None
        )
    ]
    odd = {"neg": -3, "zero": 0, "no": False, "empty": "", "pi": 3.25, "list": ["a", 1, None]}
    odd |= {"k" * 200: 300, "big": 2**40, "long": "é" * 100}  # varints of two bytes and more
    spans.append(SpanValue("odd", 5, 6, 7, "CLIENT", 1, 2, {**odd, "map": {"k": -0.0}}, True, "x"))
    sdk = otel_export._Sdk(5.0, "http://127.0.0.1:4318/v1/traces", {})
    whole = encode_spans([sdk._span(span) for span in spans])
    written = [part for span in spans for part in sdk.written([span])]  # one at a time
    assert sdk.encode(spans) == otel_wire.framed_request(*sdk._framing, written)
    sliced = type(whole).FromString(sdk.encode(spans))
    assert sliced == whole
    assert len(sliced.resource_spans) == 1 and len(sliced.resource_spans[0].scope_spans) == 1
    assert sliced.SerializeToString(deterministic=True) == whole.SerializeToString(
        deterministic=True
    )
    sdk.shutdown()


def test_kept_attribute_encodings_are_bounded_and_never_mix_values(monkeypatch):
    """Repeating attributes are encoded once and kept; the store stays bounded, long strings
    (content) are never kept, and True, 1 and "1" keep apart."""
    monkeypatch.setattr(otel_wire, "_PAIRS", {})
    monkeypatch.setattr(otel_wire, "_PAIRS_KEPT", 8)
    values: list[object] = [True, 1, "1", 1, True, "1"]  # True == 1: a dict would mix them
    for value in values:
        assert otel_wire._attribute("k", value) == otel_wire._field(
            9, otel_wire._key_value("k", value)
        )
    assert len({otel_wire._attribute("k", value) for value in values}) == 3
    for n in range(100):
        otel_wire._attribute("run.id", f"run-{n}")
        assert len(otel_wire._PAIRS) <= 8
    otel_wire._attribute("content", "x" * 10_000)
    assert all(len(value) < 1000 for _key, value in otel_wire._PAIRS)


def test_spans_are_built_and_sent_by_a_child_process_that_ends_with_the_export(
    make_workflow, emulator, collector, monkeypatch
):
    """Asked for, a child process builds and sends the spans, and goes away with the export."""
    monkeypatch.setenv(otel_export.PROCESS_VARIABLE, "1")
    import os

    from smallops.storage.otel_process import ProcessExport

    wf = make_workflow(review="none")
    wf.run(**EMAIL)
    runs, spans = exported(wf)
    assert len(runs) == 1 and len(spans) == 2
    export = otel_export.live_export()
    assert isinstance(export, ProcessExport)
    child = export._child
    assert child is not None and child.pid != os.getpid() and child.poll() is None
    otel_export.reset()
    assert child.wait(10) == 0


def test_a_child_that_dies_costs_only_counted_spans_and_is_replaced(
    make_workflow, emulator, collector, monkeypatch
):
    from smallops.storage import otel_process

    monkeypatch.setenv(otel_export.PROCESS_VARIABLE, "1")
    monkeypatch.setattr(otel_process, "RESPAWN_SECONDS", 3600.0)
    wf = make_workflow(review="none")
    wf.run(**EMAIL)
    assert len(recorded_runs(wf)) == 1  # written, so offered to the export
    export = otel_export.live_export()
    assert export is not None and export.flush(10) and export.sent == 2
    export._child.kill()
    export._child.wait(5)
    for _ in range(3):
        wf.run(**EMAIL)
    assert len(recorded_runs(wf)) == 4  # the log is whole
    assert export.flush(10)
    assert export.dropped == 6 and len(collector.spans) == 2
    monkeypatch.setattr(otel_process, "RESPAWN_SECONDS", 0.0)
    wf.run(**EMAIL)
    assert len(recorded_runs(wf)) == 5
    assert export.flush(10) and export.sent == 2  # a new child, counting afresh
    assert len(collector.spans) == 4


def span_key(span: Span) -> tuple[Any, ...]:
    attributes = tuple(sorted((k, repr(v)) for k, v in span.attributes.items()))
    return (span.trace_id, span.span_id, span.parent_id, span.name, span.start_ns, span.end_ns,
            span.status_code, attributes)  # fmt: skip


def test_the_child_reads_committed_runs_from_the_log_and_sends_what_the_thread_sends(
    make_workflow, emulator, collector, settings, database_url, monkeypatch
):
    """The log writer tells the child process only which runs it committed; the child reads
    them from the log (SQLite, or Postgres with its schema in the URL) and sends the very
    spans the thread builds from the rows in hand: content, retries and the app's trace."""
    import dataclasses

    from opentelemetry.sdk.trace import TracerProvider

    from smallops.storage.otel_process import ProcessExport

    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    emulator.script(status(429, retry_after=0.05), ok(), refusal(), ok())
    wf = make_workflow(
        settings=dataclasses.replace(settings, database_url=database_url), content="redacted"
    )
    with TracerProvider().get_tracer("app").start_as_current_span("POST /triage"):
        wf.run(**EMAIL)
    wf.run(**EMAIL)
    wf.run(**EMAIL)
    runs, by_thread = exported(wf)
    assert len(runs) == 3 and len(by_thread) == 3 + 4
    child = ProcessExport()
    told = [(run["id"], run["workflow"], 1 + run["attempt_count"]) for run in runs]
    child.offer_logged(database_url, told)
    assert child.flush(30) and child.sent == len(by_thread) and child.dropped == 0
    child.close()
    by_child = collector.spans[len(by_thread) :]
    assert sorted(map(span_key, by_child)) == sorted(map(span_key, by_thread))
    assert any("gen_ai.input.messages" in span.attributes for span in by_child)


def test_a_log_the_child_cannot_read_costs_only_counted_spans(collector, tmp_path):
    from smallops.storage.otel_process import ProcessExport

    child = ProcessExport()
    missing = f"sqlite:///{tmp_path / 'nowhere' / 'log.db'}"
    child.offer_logged(missing, [("run-1", "triage", 2), ("run-2", "triage", 3)], tmp_path)
    assert child.flush(30) and child.sent == 0 and child.dropped == 5
    child.close()
    assert collector.spans == []


def test_the_export_runs_on_a_thread_unless_a_child_process_is_asked_for(
    make_workflow, emulator, collector, monkeypatch
):
    monkeypatch.delenv(otel_export.PROCESS_VARIABLE, raising=False)
    wf = make_workflow(review="none")
    wf.run(**EMAIL)
    runs, spans = exported(wf)
    assert isinstance(otel_export.live_export(), otel_export.SpanExport)
    assert len(runs) == 1 and len(spans) == 2


@pytest.mark.parametrize("child", [False, True], ids=["thread", "child process"])
def test_a_forked_process_starts_its_own_export(
    make_workflow, emulator, collector, monkeypatch, child
):
    """A server that forks workers after the first call (gunicorn --preload): each worker
    exports on its own, and a child process of the parent's still ends with the parent."""
    import os

    if child:
        monkeypatch.setenv(otel_export.PROCESS_VARIABLE, "1")

    wf = make_workflow(review="none")
    wf.run(**EMAIL)
    assert len(recorded_runs(wf)) == 1
    parent_export = otel_export.live_export()
    assert parent_export is not None and parent_export.flush(10)
    pid = os.fork()
    if pid == 0:  # the worker
        code = 1
        try:
            wf.run(**EMAIL)
            from smallops import flush

            flush()
            mine = otel_export.live_export()
            if mine is not None and mine is not parent_export and mine.flush(10):
                code = 0 if mine.sent == 2 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(collector.spans) == 4
    process = getattr(parent_export, "_child", None)
    otel_export.reset()
    assert (process is not None) == child
    assert process is None or process.wait(10) == 0


def test_smallops_toml_switches_the_export_on_when_the_environment_is_silent(
    make_workflow, emulator, settings, monkeypatch
):
    import dataclasses

    from smallops.config import Telemetry

    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", raising=False)
    with OtlpReceiver() as receiver:
        telemetry = Telemetry(otlp_endpoint=receiver.url, capture_content=True)
        configured = dataclasses.replace(settings, telemetry=telemetry)
        wf = make_workflow(review="none", settings=configured)
        wf.run(**EMAIL)
        assert len(recorded_runs(wf)) == 1
        export = otel_export.live_export()
        assert export is not None and export.flush(10)
        assert sorted(span.kind for span in receiver.spans) == [INTERNAL, CLIENT]
        (chat,) = [span for span in receiver.spans if span.kind == CLIENT]
        assert "Invoice for ann@example.com" in str(chat.attributes["gen_ai.input.messages"])


@pytest.mark.postgres
def test_runs_spooled_while_the_database_is_down_are_exported_when_replayed(
    make_workflow, emulator, collector, settings, postgres_url, tmp_path
):
    import dataclasses

    from smallops.storage.spool import Spool, spool_folder

    from faultkit import proxied

    proxy, url = proxied(postgres_url, tmp_path)
    configured = dataclasses.replace(settings, database_url=url, write_timeout=1.0)
    wf = make_workflow(review="none", settings=configured)
    wf.run(**EMAIL)
    assert len(recorded_runs(wf)) == 1
    proxy.cut()
    try:
        for _ in range(3):
            wf.run(**EMAIL)
        spool = Spool(spool_folder(configured.spool_dir, url))
        deadline = time.monotonic() + 30
        while spool.waiting() < 3:
            assert time.monotonic() < deadline, "the runs never reached the spool"
            time.sleep(0.1)
    finally:
        proxy.restore()
    deadline = time.monotonic() + 60
    while len(runs := recorded_runs(wf)) < 4:
        assert time.monotonic() < deadline, "the spool was never replayed"
        time.sleep(0.2)
    export = otel_export.live_export()
    assert export is not None and export.flush(10)
    roots = [span for span in collector.spans if span.kind == INTERNAL]
    assert sorted(span.trace_id for span in roots) == sorted(
        f"{trace_id_of(run['id']):032x}" for run in runs
    )
    chats = [span for span in collector.spans if span.kind == CLIENT]
    assert len(chats) == 4  # and the replayed runs' spans say what the live one's say
    assert len({tuple(sorted(span.attributes)) for span in chats}) == 1
    proxy.cut()
