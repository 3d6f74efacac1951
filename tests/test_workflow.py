"""Workflow definition checks, and the call lifecycle's routes, with the fake provider."""

from __future__ import annotations

import asyncio
import threading

import pytest

from smallops import (
    ConfigError,
    FakeProvider,
    FakeReply,
    InputError,
    MissingFallbackError,
    ProviderError,
    WorkflowFailed,
    default,
)
from smallops.testing import recorded_runs

from models import GOOD, Triage

FAKE = {"model": "fake:rules"}


def test_a_workflow_without_a_fallback_is_refused(make_workflow):
    with pytest.raises(MissingFallbackError, match='fallback="review"'):
        make_workflow(fallback=None)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"fallback": "ignore"}, "unknown fallback"),
        ({"review": "sometimes"}, "unknown review policy"),
        ({"output": dict}, "BaseModel"),
        ({"temperature": 3}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"name": "Email Triage"}, "not valid"),
        ({"name": "email-triage\n"}, "not valid"),  # a $ would match before the newline
        ({"retries": -1}, "retries"),
        ({"fallback": default({"category": "nope"})}, "does not fit Triage"),
        ({"prompt": "missing.prompt"}, "does not exist"),
        ({"model": "mystery:model-1"}, "unknown provider"),
    ],
)
def test_bad_definitions_are_config_errors(make_workflow, overrides, message):
    with pytest.raises(ConfigError, match=message):
        make_workflow(**overrides)


def test_review_none_auto_actions_and_all_waits_for_review(make_workflow):
    provider = FakeProvider(lambda _: GOOD)
    assert (
        make_workflow(**FAKE, provider=provider, review="none").run(subject="s", body="b").status
        == "auto"
    )
    assert (
        make_workflow(**FAKE, provider=provider, review="all").run(subject="s", body="b").status
        == "pending_review"
    )


def test_a_default_fallback_answers_with_the_default_and_records_why(make_workflow):
    fallback = {"category": "other", "urgency": "normal", "summary": "needs a human"}
    wf = make_workflow(
        **FAKE, provider=FakeProvider(lambda _: FakeReply(refusal="no")), fallback=default(fallback)
    )
    result = wf.run(subject="s", body="b")
    assert result.status == "fallback_default" and result.output == Triage(**fallback)
    [run] = recorded_runs(wf)
    assert run["error_type"] == "refused" and run["output"] == fallback


def test_run_and_arun_record_the_same_things(make_workflow):
    wf = make_workflow(**FAKE, provider=FakeProvider.queue(["bad", GOOD, "bad", GOOD]))
    sync = wf.run(subject="s", body="b")
    async_ = asyncio.run(wf.arun(subject="s", body="b"))
    assert (sync.status, sync.attempts, sync.output) == (
        async_.status,
        async_.attempts,
        async_.output,
    )
    first, second = recorded_runs(wf)
    strip = ("id", "started_at", "finished_at", "latency_ms", "attempts")
    assert {k: v for k, v in first.items() if k not in strip} == {
        k: v for k, v in second.items() if k not in strip
    }


def test_a_missing_input_is_recorded_then_raised(make_workflow):
    wf = make_workflow(**FAKE, provider=FakeProvider())
    with pytest.raises(InputError, match="'body'"):
        wf.run(subject="only")
    [run] = recorded_runs(wf)
    assert run["status"] == "failed" and run["error_type"] == "input_error"
    assert run["inputs"] == {"subject": "only"} and run["attempt_count"] == 0


def test_a_bug_in_a_responder_is_recorded_then_raised(make_workflow):
    def broken(_):
        raise ZeroDivisionError("oops")

    wf = make_workflow(**FAKE, provider=FakeProvider(broken))
    with pytest.raises(ZeroDivisionError):
        wf.run(subject="s", body="b")
    assert recorded_runs(wf)[0]["error_type"] == "internal_error"


def test_a_cancelled_async_call_is_recorded_as_cancelled(make_workflow):
    started = threading.Event()

    class Slow(FakeProvider):
        async def asend(self, request, timeout):
            started.set()
            await asyncio.sleep(10)
            raise AssertionError("not reached")

    wf = make_workflow(**FAKE, provider=Slow())

    async def cancel_it() -> None:
        task = asyncio.ensure_future(wf.arun(subject="s", body="b"))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_it())
    assert recorded_runs(wf)[0]["error_type"] == "cancelled"


def test_fallback_raise_carries_the_run_id(make_workflow):
    wf = make_workflow(
        **FAKE,
        fallback="raise",
        provider=FakeProvider(lambda _: ProviderError("server_error", "down")),
    )
    with pytest.raises(WorkflowFailed) as caught:
        wf.run(subject="s", body="b")
    assert recorded_runs(wf)[0]["id"] == caught.value.run_id


def test_replace_makes_a_new_prompt_version_for_a_new_model(make_workflow):
    wf = make_workflow()
    other = wf.replace(model="openai:gpt-4.1-mini-2025-04-14")
    assert other.version.id != wf.version.id and other.name == wf.name


def test_the_fake_queue_answers_in_order_then_reports_it_is_empty(make_workflow):
    wf = make_workflow(**FAKE, provider=FakeProvider.queue([GOOD]), retries=0)
    assert wf.run(subject="s", body="b").ok
    result = wf.run(subject="s", body="b")
    assert result.error == "bad_request" and "queue is empty" in result.error_message


def test_fake_truncation_and_refusal_use_the_same_routes_as_a_real_model(make_workflow):
    wf = make_workflow(
        **FAKE,
        provider=FakeProvider.queue(
            [FakeReply(text='{"cat', finish="length"), FakeReply(refusal="won't")]
        ),
    )
    assert wf.run(subject="s", body="b").error == "truncated"
    assert wf.run(subject="s", body="b").error == "refused"
