"""The anthropic provider through the official SDK against a real local HTTP server."""

from __future__ import annotations

import asyncio

import pytest

from smallops.testing import recorded_runs

from emulators import ok, refusal, status, truncated
from models import GOOD

INPUTS = {"subject": "Invoice", "body": "Where is my May invoice?"}
MODEL = "anthropic:claude-sonnet-4-6"


def test_success_uses_native_structured_output_and_a_system_parameter(make_workflow, emulator):
    emulator.script(ok(GOOD, input_tokens=40, output_tokens=20, cached_tokens=10))
    wf = make_workflow(model=MODEL, max_tokens=256, temperature=0.2)
    result = wf.run(**INPUTS)
    assert result.status == "pending_review" and result.output.urgency == "normal"
    body = emulator.requests[-1].body
    assert body["system"] == "Sort the email."
    assert [m["role"] for m in body["messages"]] == ["user"]
    assert body["output_config"]["format"]["type"] == "json_schema"
    assert body["max_tokens"] == 256 and body["temperature"] == 0.2
    [run] = recorded_runs(wf)
    assert run["provider"] == "anthropic"
    assert run["model_served"] == "claude-sonnet-4-6"
    # input tokens include the cached ones, as for OpenAI
    assert (run["input_tokens"], run["cached_tokens"], run["output_tokens"]) == (50, 10, 20)
    assert run["cost_usd"] > 0 and run["cost_source"] == "genai-prices"


def test_max_tokens_defaults_since_the_messages_api_requires_it(make_workflow, emulator):
    make_workflow(model=MODEL).run(**INPUTS)
    assert emulator.requests[-1].body["max_tokens"] == 1024


def test_refusal_stop_reason_is_refused(make_workflow, emulator):
    emulator.script(refusal("Not something I can help with."))
    result = make_workflow(model=MODEL).run(**INPUTS)
    assert result.error == "refused" and result.error_message == "Not something I can help with."


def test_max_tokens_stop_reason_is_truncated(make_workflow, emulator):
    emulator.script(truncated())
    assert make_workflow(model=MODEL).run(**INPUTS).error == "truncated"


def test_overloaded_529_is_retried_asynchronously(make_workflow, emulator):
    emulator.script(status(529, retry_after=0.1), ok(GOOD))
    result = asyncio.run(make_workflow(model=MODEL).arun(**INPUTS))
    assert result.status == "pending_review" and result.attempts == 2


def test_api_key_is_not_recorded(make_workflow, emulator):
    from conftest import ANTHROPIC_TEST_KEY

    wf = make_workflow(model=MODEL)
    wf.run(**INPUTS)
    assert ANTHROPIC_TEST_KEY not in str(recorded_runs(wf))


@pytest.mark.parametrize("model", ["anthropic:claude-sonnet-4-6", "anthropic:claude-opus-4-7"])
def test_dateless_ids_from_the_4_6_generation_are_pinned(make_workflow, emulator, model):
    assert make_workflow(model=model).run(**INPUTS).status == "pending_review"
