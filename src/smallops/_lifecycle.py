"""The lifecycle of one call: render, send (with retries), validate (one repair), route, record.

The lifecycle is written once, as a generator that yields the two things it cannot do itself,
`Send` a request and `Sleep`; `drive` and `adrive` carry those out with blocking or awaiting I/O.
So `Workflow.run` and `Workflow.arun` share every decision and differ only in how they wait.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError
from pydantic_core import from_json

from smallops import batches
from smallops._effects import Call, Effect, Send, Sleep, io
from smallops.error_types import AnswerProblem, ErrorType, Unfinished
from smallops.errors import (
    ConfigError,
    InputError,
    SmallopsError,
    WorkflowFailed,
    describe_problems,
)
from smallops.ids import uuid7
from smallops.kinds import ReviewRoute, RunStatus
from smallops.labels import classes_of
from smallops.providers.base import ProviderError, Reply
from smallops.records import Caller, RunRecord, Usage, current_caller
from smallops.resilience.steps import admit, breaker_allow, breaker_record
from smallops.result import Result
from smallops.review.policy import needs_review
from smallops.storage.storable import Flag, encodable
from smallops.trace_context import caller_span

if TYPE_CHECKING:
    from smallops._plan import CallPlan

REPAIRABLE: tuple[AnswerProblem, ...] = ("invalid_json", "schema_mismatch")
Problem = tuple[AnswerProblem, str]  # what was wrong with an answer, and a message for the model


Lifecycle = Generator[Effect, Any, Result[Any]]


@dataclass
class _Run:
    """What one call accumulates on its way through the lifecycle."""

    plan: CallPlan
    inputs: dict[str, Any]
    started: float = field(default_factory=time.perf_counter)
    started_at: float = field(default_factory=time.time)
    messages: list[dict[str, str]] | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    served: Reply | None = None
    guards: list[dict[str, Any]] = field(default_factory=list)
    reservation: Any = None
    flags: set[Flag] = field(default_factory=set)
    batch: tuple[str, str] | None = field(default_factory=batches.current.get)
    trace_parent: str | None = field(default_factory=caller_span)
    caller: Caller | None = field(default_factory=current_caller.get)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def lifecycle(plan: CallPlan, inputs: dict[str, Any]) -> Lifecycle:
    """One call from inputs to a recorded Result; yields Send and Sleep effects."""
    run = _Run(plan, inputs)
    try:
        run.messages = _sendable(plan.prompt.render(inputs), run.flags)
        if plan.guards is not None and plan.guards.active:
            admitted = yield from admit(plan.guards, run.messages, run.guards)
            if isinstance(admitted, tuple):
                return (yield from _fallback(run, *admitted))
            run.reservation = admitted
        request = plan.provider.request(plan.prepared, run.messages)
        reply = yield from _exchange(run, request, "call")
        output, problem = _interpret(plan.output, reply)
        if problem and problem[0] in REPAIRABLE:
            assert reply.text is not None
            repair = plan.provider.request(
                plan.prepared, run.messages + _repair(reply.text, problem[1])
            )
            reply = yield from _exchange(run, repair, "repair")
            output, problem = _interpret(plan.output, reply)
    except ProviderError as exc:
        return (yield from _fallback(run, exc.kind, exc.message))
    except GeneratorExit:
        raise
    except BaseException as exc:  # configuration errors, cancellation and bugs: record, re-raise
        _finish(run, "failed", None, _error_type(exc), _describe(exc))
        raise
    if problem:
        return (yield from _fallback(run, *problem))
    served = run.served.model if run.served else None
    classes = classes_of(output, plan.class_fields)
    graduation = plan.graduation
    route = plan.review.route(
        classes, lambda keys: graduation is not None and graduation.graduated(keys, served)
    )
    status: RunStatus = "pending_review" if needs_review(route) else "auto"
    return _finish(run, status, output, route=route, classes=classes)


def _exchange(run: _Run, request: dict[str, Any], purpose: str) -> Generator[Effect, Any, Reply]:
    """Send one request, retrying retryable failures under the policy and the deadline."""
    policy, guards, provider = run.plan.retry, run.plan.guards, run.plan.provider
    tries = 0
    while True:
        tries += 1
        if not provider.key_ready():  # from a secret store: fetched in a blocking Call
            yield from io(True, provider.fetch_key)
        probe = (yield from breaker_allow(guards, run.guards)) if guards is not None else False
        began, began_at = time.perf_counter(), time.time()
        attempt: dict[str, Any] = {
            "n": len(run.attempts) + 1,
            "purpose": purpose,
            "started_at": began_at,
            "request": request,
        }
        run.attempts.append(attempt)
        try:
            timeout = policy.attempt_timeout(run.elapsed())
            reply: Reply = yield Send(run.plan.provider, request, timeout)
        except ProviderError as exc:
            if guards is not None:
                time_left = policy.deadline - run.elapsed()
                yield from breaker_record(guards, probe, exc, time_left, run.guards)
            attempt.update(
                latency_ms=_ms(began),
                status_code=exc.status_code,
                response=exc.raw,
                error_type=exc.kind,
                error_message=exc.message,
            )
            wait = policy.delay(exc, tries, run.elapsed())
            if wait is None:
                raise
            attempt["retry_in_s"] = round(wait, 3)
            yield Sleep(wait)
            continue
        attempt.update(
            latency_ms=_ms(began),
            status_code=reply.status_code,
            response=reply.raw,
            model=reply.model,
            finish=reply.finish,
            request_id=reply.request_id,
            usage=reply.usage.__dict__,
        )
        if guards is not None:
            yield from breaker_record(guards, probe, None, 0.0, run.guards)
        run.usage.add(reply.usage)
        run.served = reply
        return reply


def _interpret(output: type[BaseModel] | None, reply: Reply) -> tuple[Any, Problem | None]:
    """The validated output, or the kind of problem and a message the model can act on."""
    if reply.finish == "refusal" or reply.finish == "content_filter":
        return None, ("refused", reply.refusal or f"the model stopped: {reply.finish}")
    if reply.finish == "length":
        return None, ("truncated", "the output hit the token limit (max_tokens) and was cut off")
    if reply.text is None:
        return None, ("invalid_json", "the model returned no content")
    if output is None:
        return reply.text, None
    try:
        return output.model_validate_json(reply.text), None
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        if any(e["type"] == "json_invalid" for e in errors):
            return None, ("invalid_json", f"the output is not valid JSON: {errors[0]['msg']}")
        return None, ("schema_mismatch", describe_problems(errors))


def _sendable(messages: list[dict[str, str]], flags: set[Flag]) -> list[dict[str, str]]:
    """Messages every SDK can encode: a lone surrogate (from a JSON escape such as "\\ud800"
    in the inputs) cannot be sent as UTF-8, so it becomes U+FFFD, flagged on the run."""
    for message in messages:
        message["content"] = encodable(message["content"], flags)
    return messages


def _repair(reply: str, problem: str) -> list[dict[str, str]]:
    return [
        {"role": "assistant", "content": reply},
        {
            "role": "user",
            "content": f"That reply does not fit the required format: {problem}. "
            "Reply again with only the corrected JSON.",
        },
    ]


def _error_type(exc: BaseException) -> Unfinished:
    if isinstance(exc, (KeyboardInterrupt, SystemExit, asyncio.CancelledError)):
        return "cancelled"
    if isinstance(exc, InputError):
        return "input_error"
    return "config_error" if isinstance(exc, ConfigError) else "internal_error"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SmallopsError):
        return exc.message
    if isinstance(exc, (KeyboardInterrupt, SystemExit, asyncio.CancelledError)):
        return "the process was interrupted before the call finished"
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


def _fallback(run: _Run, kind: ErrorType, message: str) -> Lifecycle:
    """Route a failed call to the workflow's fallback, and record it. A secondary model is
    itself a plan: this run is recorded as handed over, and its lifecycle answers the call."""
    fallback = run.plan.fallback
    if fallback.kind == "secondary" and run.plan.secondary is not None:
        _finish(run, "fallback_secondary", None, kind, message)
        return (yield from lifecycle(run.plan.secondary, run.inputs))
    if fallback.kind == "default":
        return _finish(run, "fallback_default", fallback.value, kind, message)
    if fallback.kind == "review":
        return _finish(
            run, "queued_for_human", None, kind, message, route="fallback", partial=_partial(run)
        )
    result = _finish(run, "failed", None, kind, message)
    raise WorkflowFailed(
        f"{run.plan.name}: {kind}: {message}", run_id=result.run_id, error_type=kind
    )


def _partial(run: _Run) -> Any:
    """Whatever the model did produce, for the human who takes over: JSON if it parses."""
    text = run.served.text if run.served else None
    if not text:
        return None
    try:
        return from_json(text)
    except ValueError:
        return text


def _finish(
    run: _Run,
    status: RunStatus,
    output: Any,
    error: ErrorType | None = None,
    message: str | None = None,
    *,
    route: ReviewRoute | None = None,
    classes: list[str] | None = None,
    partial: Any = None,
) -> Result[Any]:
    plan = run.plan
    latency = _ms(run.started)
    if run.reservation is not None and plan.guards is not None:
        plan.guards.settle_later(run.reservation, run.usage, run.served)
    served = run.served
    run_id = uuid7()
    record = RunRecord(
        id=run_id,
        facts=plan.facts,
        status=status,
        error_type=error,
        error_message=message,
        model_served=served.model if served else None,
        system_fingerprint=served.fingerprint if served else None,
        attempt_count=len(run.attempts),
        usage=run.usage,
        latency_ms=latency,
        started_at=run.started_at,
        inputs=run.inputs,
        messages=run.messages,
        output=output,
        attempts=run.attempts,
        review_route=route,
        guards=run.guards,
        classes=classes or [],
        partial=partial,
        flags=frozenset(run.flags),
        batch=run.batch,
        trace_parent=run.trace_parent,
        caller=run.caller.name if run.caller is not None else None,
    )
    plan.writer.submit(record)
    if run.caller is not None:
        run.caller.runs.append(record)
    return Result(
        run_id=run_id,
        workflow=plan.name,
        status=status,
        output=output,
        error=error,
        error_message=message,
        prompt_version=plan.version.id,
        model=served.model if served else None,
        usage=run.usage,
        latency_ms=latency,
        attempts=len(run.attempts),
    )


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 3)


def _resume(calls: Lifecycle, value: Any, error: BaseException | None) -> Effect | Result[Any]:
    """Hand the lifecycle the outcome of its last effect; get its next effect or its Result.

    An exception (a provider error, a cancellation) is thrown into the lifecycle, which records
    it before deciding whether to retry, fall back or re-raise.
    """
    try:
        return calls.throw(error) if error is not None else calls.send(value)
    except StopIteration as stop:
        result: Result[Any] = stop.value
        return result


def drive(calls: Lifecycle) -> Result[Any]:
    """Carry out a lifecycle's effects with blocking I/O."""
    step = _resume(calls, None, None)
    while not isinstance(step, Result):
        value, error = None, None
        try:
            if isinstance(step, Sleep):
                time.sleep(step.seconds)
            elif isinstance(step, Call):
                value = step.function()
            else:
                value = step.provider.send(step.request, step.timeout)
        except BaseException as exc:
            error = exc
        step = _resume(calls, value, error)
    return step


async def adrive(calls: Lifecycle) -> Result[Any]:
    """Carry out a lifecycle's effects without blocking the event loop."""
    step = _resume(calls, None, None)
    while not isinstance(step, Result):
        value, error = None, None
        try:
            if isinstance(step, Sleep):
                await asyncio.sleep(step.seconds)
            elif isinstance(step, Call):
                value = await asyncio.to_thread(step.function)
            else:
                value = await step.provider.asend(step.request, step.timeout)
        except BaseException as exc:
            error = exc
        step = _resume(calls, value, error)
    return step
