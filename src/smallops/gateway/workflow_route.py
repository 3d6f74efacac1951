"""Routes answered by a workflow: a chat request becomes one `Workflow.arun` call, and its
Result a chat.completion.

What is read from the request and what the answer means is set out in gateway_config's
docstring and the README's Gateway section. The workflow's lifecycle does all a call does
(pinned model, prompt version, schema and its repair, its guards, review policy, fallback) and
logs its runs itself, with the key's name on them; the gateway adds the key's rate limit and
budget, and logs a run of its own only when those refuse the request. A client that
disconnects while the workflow runs cancels its call (its upstream request is closed), and the
workflow records its run as cancelled, as for a plain route's stream.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import logging
import time
from collections.abc import Coroutine, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel
from pydantic_core import to_json

from smallops.config import Settings
from smallops.error_types import ErrorType
from smallops.errors import ConfigError, InputError, SmallopsError, WorkflowFailed
from smallops.gateway.asgi import Receive, Send, respond, respond_error
from smallops.gateway.errors import (
    GatewayError,
    bad_request,
    budget_exhausted,
    budget_unavailable,
    rate_limited,
    refusal_type,
    unsupported,
)
from smallops.gateway.guards import GatewayGuards
from smallops.gateway.keys import KeyInfo
from smallops.gateway_config import Route, WorkflowRoute, check_workflows, resolve_workflow
from smallops.ids import uuid7
from smallops.pricing import price_run
from smallops.records import Caller, RunRecord, Usage, current_caller
from smallops.result import Result

if TYPE_CHECKING:
    from smallops.workflow import Workflow

log = logging.getLogger("smallops")

STATUS_HEADER = b"x-smallops-status"
UNSUPPORTED = ("tools", "functions", "logprobs")  # what a workflow's answer cannot honour
Headers = list[tuple[bytes, bytes]]
T = TypeVar("T")


class ClientLeft(Exception):
    """The client disconnected before the workflow's call ended."""


class WorkflowRoutes:
    """The workflows the routes name, loaded and planned when the gateway starts."""

    def __init__(
        self, settings: Settings, routes: Mapping[str, Route | WorkflowRoute], guards: GatewayGuards
    ) -> None:
        self.guards = guards
        self.workflows: dict[str, Workflow[Any]] = {}
        wanted = [route for route in routes.values() if isinstance(route, WorkflowRoute)]
        if not wanted:  # a gateway of models only never imports the workflow machinery
            return
        from smallops.project import Project

        found, problems = Project(settings.root, settings).load_workflows()
        try:
            check_workflows(settings.gateway, found)
        except ConfigError:
            if problems:  # the workflow may be in the module that does not load
                raise problems[0] from None
            raise
        for route in wanted:
            workflow = found[resolve_workflow(route.workflow, found) or route.workflow]
            workflow.plan()  # provider, request, log writer: now, not on the first request
            self.workflows[route.name] = workflow

    async def chat(
        self,
        key: KeyInfo,
        route: WorkflowRoute,
        body: bytes,
        request: dict[str, Any],
        began: float,
        receive: Receive,
        send: Send,
    ) -> None:
        workflow = self.workflows[route.name]
        plan = workflow.plan()
        _refuse_unsupported(request)
        inputs = inputs_of(request["messages"], plan.prompt.variables, workflow.name)
        decisions: list[dict[str, Any]] = []
        try:  # the key's guards; the workflow's own apply inside its call
            held = await self.guards.admit(
                key,
                route,
                body + plan.prompt.text.encode(),
                {"max_tokens": workflow.params.max_tokens},
                plan.facts.pricing,
                workflow.model.model,
                decisions,
            )
        except GatewayError as refused:
            run_id = _log_refusal(workflow, inputs, key.name, refused, decisions)
            await respond_error(send, refused, _headers(run_id, began, 0.0))
            return
        caller = Caller(key.name)
        token = current_caller.set(caller)
        called = time.perf_counter()
        error: GatewayError | None = None
        try:
            result = await _unless_client_leaves(workflow.arun(**inputs), receive)
        except ClientLeft:  # the call was cancelled: its run records that, with what it had
            return
        except WorkflowFailed as failed:
            error = _failure(failed)
        except InputError as exc:  # the inputs do not render (the run records it)
            error = bad_request(exc.message, "messages", "invalid_input")
        except SmallopsError as exc:  # the workflow's configuration, e.g. no provider key
            error = GatewayError(500, exc.message, "server_error", "workflow_error")
        except Exception as exc:  # a bug in the workflow's code: its run records it
            log.exception("smallops: gateway: workflow %r failed", workflow.name)
            message = f"workflow {workflow.name!r} failed: {type(exc).__name__}"
            error = GatewayError(500, message, "server_error", "internal_error")
        finally:
            current_caller.reset(token)
            self.guards.release(held, _cost(caller.runs))
        waited = time.perf_counter() - called
        if error is not None:
            run_id = caller.runs[-1].id if caller.runs else ""
            await respond_error(send, error, _headers(run_id, began, waited))
            return
        status, answer = _completion(result, caller.runs)
        headers = [
            *_headers(result.run_id, began, waited),
            (STATUS_HEADER, result.status.encode()),
            (b"x-smallops-prompt-version", result.prompt_version.encode()),
        ]
        if request.get("stream") is True:
            await _stream(send, status, answer, request, headers)
        else:
            await respond(send, status, to_json(answer), headers)


async def _unless_client_leaves(call: Coroutine[Any, Any, T], receive: Receive) -> T:
    """The call's result; ClientLeft, once the call is cancelled (its upstream request closed,
    its run recorded as cancelled), when the client disconnects first."""
    calling = asyncio.ensure_future(call)

    async def client_left() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    watching = asyncio.ensure_future(client_left())
    try:
        await asyncio.wait({calling, watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (watching, calling):
            if not task.done():
                task.cancel()
        await asyncio.gather(calling, watching, return_exceptions=True)
    if calling.cancelled():
        raise ClientLeft
    return calling.result()


# -- the request ------------------------------------------------------------------------------


def inputs_of(messages: list[Any], variables: frozenset[str], workflow: str) -> dict[str, Any]:
    """The workflow's inputs from the last user message: a JSON object of every prompt variable,
    or, for a prompt with one variable, any other text; a 400 naming the input that is wrong."""
    text = _last_user_text(messages)
    names = sorted(variables)
    given, why = _json_object(text)
    if given is None:
        if len(names) <= 1:
            return {names[0]: text} if names else {}
        raise _input_error(
            f"workflow {workflow!r} takes {len(names)} inputs ({', '.join(names)}): send the "
            f"last user message as a JSON object of them{'; ' + why if why else ''}"
        )
    unknown = sorted(given.keys() - variables)
    if unknown:
        close = difflib.get_close_matches(unknown[0], names, n=1)
        also = f"; did you mean {close[0]!r}?" if close else ""
        raise _input_error(
            f"unknown input {unknown[0]!r} for workflow {workflow!r}{also} "
            f"(it takes {', '.join(names) or 'none'}){_wrap_hint(names)}"
        )
    missing = sorted(variables - given.keys())
    if missing:
        raise _input_error(
            f"input {missing[0]!r} is missing for workflow {workflow!r} "
            f"(it takes {', '.join(names)}){_wrap_hint(names)}"
        )
    return given


def _wrap_hint(names: list[str]) -> str:
    if len(names) != 1:
        return ""
    return f'; other JSON goes in as text: {{"{names[0]}": "..."}}'


def _input_error(message: str) -> GatewayError:
    return bad_request(message, "messages", "invalid_input")


def _last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text(message.get("content"))
    raise _input_error("no user message: its text is the workflow's input")


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text" or not isinstance(part.get("text"), str):
                raise _input_error(f"a workflow route takes text only, not a part of type {kind!r}")
            texts.append(part["text"])
        return "\n".join(texts)
    raise _input_error("the last user message has no text content")


def _json_object(text: str) -> tuple[dict[str, Any] | None, str | None]:
    """The text as a JSON object, or None and why not (None when it does not look like one).
    The standard parser, since it takes what JSON allows and pydantic's refuses: an escaped
    lone surrogate, which the lifecycle then makes sendable and flags."""
    if not text.lstrip().startswith("{"):
        return None, None
    try:
        value = json.loads(text)
    except ValueError as exc:
        return None, f"it is not valid JSON ({exc})"
    except RecursionError:
        return None, "it is not valid JSON (nested too deep)"
    return (value, None) if isinstance(value, dict) else (None, None)


def _refuse_unsupported(request: dict[str, Any]) -> None:
    n = request.get("n")
    if n is not None and n != 1:
        raise unsupported("a workflow route gives one answer: n must be 1", "n")
    for name in UNSUPPORTED:
        if request.get(name):
            raise unsupported(
                f"a workflow route answers with the workflow's output: {name} is not supported",
                name,
            )


# -- the answer -------------------------------------------------------------------------------


def _completion(result: Result[Any], runs: list[RunRecord]) -> tuple[int, dict[str, Any]]:
    """The HTTP status and the chat.completion for a Result: 200 with the output, or 202 when a
    human has the work (content null, the refusal saying so)."""
    content, refusal, status = _content(result.output), None, 200
    if result.status == "queued_for_human":
        status = 202
        why = f"{result.error}: {(result.error_message or '')[:300]}"
        refusal = (
            f"no answer yet: the model failed ({why}); workflow {result.workflow!r} queued the "
            f"work for a human (run {result.run_id})"
        )
    message: dict[str, Any] = {
        "role": "assistant",
        "content": content,
        "refusal": refusal,
        "annotations": [],
    }
    return status, {
        "id": f"chatcmpl-{result.run_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": result.model or (runs[-1].facts.model_requested if runs else result.workflow),
        "system_fingerprint": runs[-1].system_fingerprint if runs else None,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
        "usage": _usage(runs),
    }


def _content(output: Any) -> str | None:
    if output is None:
        return None
    if isinstance(output, BaseModel):
        return output.model_dump_json()
    if isinstance(output, str):
        return output  # a free-text workflow's answer, as is
    return to_json(output).decode()


def _usage(runs: list[RunRecord]) -> dict[str, Any]:
    """Every model call of the request: a repair and a secondary model's included."""
    total = Usage()
    for run in runs:
        total.add(run.usage)
    return {
        "prompt_tokens": total.input_tokens,
        "completion_tokens": total.output_tokens,
        "total_tokens": total.input_tokens + total.output_tokens,
        "prompt_tokens_details": {"cached_tokens": total.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": total.reasoning_tokens},
    }


async def _stream(
    send: Send, status: int, answer: dict[str, Any], request: dict[str, Any], headers: Headers
) -> None:
    """The whole answer as one chunk, the usage chunk if the client asked, then [DONE]."""
    base = {k: answer[k] for k in ("id", "created", "model", "system_fingerprint")}
    base["object"] = "chat.completion.chunk"
    choice = answer["choices"][0]
    delta = {k: choice["message"][k] for k in ("role", "content", "refusal")}
    chunks: list[dict[str, Any]] = [
        {
            **base,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": "stop"}],
        }
    ]
    options = request.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        chunks[0]["usage"] = None
        chunks.append({**base, "choices": [], "usage": answer["usage"]})
    body = b"".join(b"data: " + to_json(chunk) + b"\n\n" for chunk in chunks) + b"data: [DONE]\n\n"
    start = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
    await send({"type": "http.response.start", "status": status, "headers": [*start, *headers]})
    await send({"type": "http.response.body", "body": body})


#: The status of a failure other than 502 (the model's, or its provider's), by the run's error
#: type: what was never sent is the gateway's 503.
WORKFLOW_STATUSES: dict[ErrorType, int] = {
    "timeout": 504,
    "breaker_open": 503,
    "secret_unavailable": 503,
}


def _failure(failed: WorkflowFailed) -> GatewayError:
    """A run that failed under fallback "raise", as the client gets it; its code is the run's
    error type. Only a rate limit, or a budget store that did not answer, is worth the SDK's
    retry: the workflow has retried the model already."""
    message, kind = f"{failed.message} (run {failed.run_id})", failed.error_type
    if kind == "throttled":
        return rate_limited(message, 1.0)
    if kind == "budget_exhausted":
        return budget_exhausted(message)
    if kind == "budget_unavailable":  # a guard refused before the model was tried
        return budget_unavailable(message)
    if kind == "bad_request":  # the provider refused what the input made, e.g. too long
        return bad_request(message, "messages", kind)
    status = WORKFLOW_STATUSES.get(kind, 502)
    return GatewayError(status, message, "server_error", kind)


def _cost(runs: list[RunRecord]) -> float:
    """What the request's runs cost, for the key's budget (an unpriced run counts as $0, as
    the gateway's own routes do)."""
    return sum(
        price_run(run.facts.pricing, run.model_served or run.facts.model_requested, run.usage)[0]
        or 0.0
        for run in runs
    )


def _headers(run_id: str, began: float, waited: float) -> Headers:
    """The run's id, and the gateway's own time: the workflow's call excluded (its run has it)."""
    overhead = max(0.0, time.perf_counter() - began - waited) * 1000
    headers = [(b"x-smallops-overhead-ms", f"{overhead:.3f}".encode())]
    if run_id:
        headers.append((b"x-smallops-run-id", run_id.encode()))
    return headers


def _log_refusal(
    workflow: Workflow[Any],
    inputs: dict[str, Any],
    caller: str,
    refused: GatewayError,
    decisions: list[dict[str, Any]],
) -> str:
    """A request the key's guards refused is still a run of the workflow, with nothing sent."""
    plan = workflow.plan()
    run_id = uuid7()
    plan.writer.submit(
        RunRecord(
            id=run_id,
            facts=plan.facts,
            status="failed",
            error_type=refusal_type(refused),
            error_message=refused.message,
            model_served=None,
            system_fingerprint=None,
            attempt_count=0,
            usage=Usage(),
            latency_ms=0.0,
            started_at=time.time(),
            inputs=inputs,
            messages=None,
            output=None,
            attempts=[],
            review_route=None,
            guards=decisions,
            classes=[],
            partial=None,
            caller=caller,
        )
    )
    return run_id
