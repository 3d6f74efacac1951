"""The gateway's ASGI application: `GET /v1/models` and `POST /v1/chat/completions`.

Plain ASGI, no framework: a request is authenticated (its key hashed and looked up, cached),
routed (the public name to a pinned model), guarded (rate limits, budgets, breaker), forwarded
in the OpenAI wire format, answered with the upstream's body as it came, and logged as a run
after the answer is sent. The client's headers are never sent upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import httpx
from pydantic_core import from_json, to_json

from smallops.config import Settings
from smallops.gateway import anthropic_wire
from smallops.gateway import stream as streaming
from smallops.gateway.anthropic_upstream import AnthropicUpstream
from smallops.gateway.asgi import (
    JSON,
    Receive,
    Scope,
    Send,
    bearer,
    parse_request,
    read_body,
    respond,
    respond_error,
)
from smallops.gateway.errors import (
    GatewayError,
    client_error,
    no_route,
    not_allowed,
    refusal_type,
    unauthorized,
)
from smallops.gateway.guards import GatewayGuards, Held, Target
from smallops.gateway.keys import KeyCache, KeyInfo
from smallops.gateway.log_room import LogRoom
from smallops.gateway.runs import Leg, facts_for, pricing_for, record, text_of, usage_of
from smallops.gateway.upstream import Answer, Connections, Streamed, Upstream
from smallops.gateway.workflow_route import WorkflowRoutes
from smallops.gateway_config import Route, WorkflowRoute
from smallops.kinds import Origin, RunStatus
from smallops.pinning import ModelRef
from smallops.providers import resolve_provider
from smallops.providers.base import ProviderError
from smallops.records import WorkflowFacts
from smallops.resilience.retry import RetryPolicy
from smallops.resilience.shared import describe
from smallops.storage.db import ensure_schema, log_database
from smallops.storage.writer import writer_for

log = logging.getLogger("smallops")


class Exchange:
    """One request on its way through: the route, the legs tried, the guards' decisions."""

    def __init__(self, key: KeyInfo, route: Route, request: dict[str, Any], began: float) -> None:
        self.key, self.route, self.request = key, route, request
        self.began = began  # when the request reached the application
        self.waited = 0.0  # seconds spent waiting on the upstream (and between its retries)
        self.decisions: list[dict[str, Any]] = []
        self.legs: list[Leg] = []
        self.held: Held = []
        self.probe = False  # whether the stream that answered is the breaker's probe

    def overhead_ms(self) -> str:
        return f"{max(0.0, time.perf_counter() - self.began - self.waited) * 1000:.3f}"


class Gateway:
    """The application: one per worker process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        url, engine = log_database(settings.log)
        ensure_schema(engine)
        self._engine = engine
        self.routes = settings.gateway.routes
        self.keys = KeyCache(lambda: engine)
        self.guards = GatewayGuards(lambda: engine, url, settings.redis_url)
        self.workflow_routes = WorkflowRoutes(settings, self.routes, self.guards)
        self.writer = writer_for(settings.log)
        self.log_room = LogRoom(lambda: self.writer.backlog)
        self.created = int(time.time())
        self._connections = Connections()
        self._upstreams: dict[str, Upstream] = {}
        self._targets: dict[tuple[str, str], tuple[Target, Upstream, WorkflowFacts]] = {}
        #: Routes with an Anthropic model (as model or fallback): plain chat only.
        self._plain_chat: set[str] = set()
        for route in self.routes.values():  # an unknown provider fails at start, not per call
            if isinstance(route, WorkflowRoute):
                continue
            for ref in (route.model, route.fallback):
                if ref is None:
                    continue
                if resolve_provider(ref.provider, settings.providers).kind == "anthropic":
                    self._plain_chat.add(route.name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        try:
            if path == "/v1/chat/completions":
                if method != "POST":
                    raise not_allowed(method, "POST")
                await self.chat(scope, receive, send)
            elif path == "/v1/models" or path.startswith("/v1/models/"):
                if method != "GET":
                    raise not_allowed(method, "GET")
                await self.models(scope, send, path.removeprefix("/v1/models").strip("/"))
            else:
                raise _unknown_endpoint(method, path)
        except GatewayError as error:
            await respond_error(send, error)
        except Exception:  # a bug: the client still gets an answer in OpenAI's shape
            log.exception("smallops: gateway: %s %s failed", method, path)
            internal = GatewayError(500, "the gateway failed", "server_error", "internal_error")
            with contextlib.suppress(Exception):  # unless its answer had already started
                await respond_error(send, internal)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._connections.aclose()
                await asyncio.to_thread(self.writer.flush, 10.0)
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- the endpoints ---------------------------------------------------------------------

    async def models(self, scope: Scope, send: Send, one: str) -> None:
        key = await self.authenticate(scope)
        names = [name for name in self.routes if key.may_use(name)]
        if one:
            if one not in names:
                raise no_route(one)
            await respond(send, 200, to_json(self._model_entry(one)))
            return
        listing = {"object": "list", "data": [self._model_entry(name) for name in names]}
        await respond(send, 200, to_json(listing))

    def _model_entry(self, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": self.created, "owned_by": "smallops"}

    async def chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        began = time.perf_counter()
        key = await self.authenticate(scope)
        body = await read_body(receive)
        request = parse_request(body)
        route = self.routes.get(request["model"])
        if route is None:
            raise no_route(request["model"])
        if not key.may_use(route.name):
            raise GatewayError(
                403,
                f"key {key.name!r} may not use model {route.name!r}",
                "permission_error",
                "model_not_allowed",
                "model",
            )
        await self.log_room.wait()  # the log writer is far behind: let it catch up first
        if isinstance(route, WorkflowRoute):  # gateway/workflow_route.py
            await self.workflow_routes.chat(key, route, body, request, began, receive, send)
            return
        if route.name in self._plain_chat:
            anthropic_wire.check(request, route.name)
        exchange = Exchange(key, route, request, began)
        primary = self._target(route, route.model, "app")
        try:
            exchange.held = await self.guards.admit(
                key,
                route,
                body,
                request,
                primary[0].pricing,
                primary[0].model,
                exchange.decisions,
            )
        except GatewayError as refused:
            leg = Leg(primary[0], primary[2])
            leg.error_type = refusal_type(refused)
            leg.error_message = refused.message
            exchange.legs.append(leg)
            await respond_error(send, refused, _run_headers(exchange))
            self._log(exchange, ok=False)
            return
        if request.get("stream") is True:
            await self._chat_streamed(exchange, receive, send)
        else:
            await self._chat_whole(exchange, send)

    async def _chat_whole(self, exchange: Exchange, send: Send) -> None:
        ok = False
        try:
            _, answer = await self.forward(exchange, stream=False)
            assert isinstance(answer, Answer)
            headers = [
                *JSON,
                (b"content-length", str(len(answer.content)).encode()),
                *_run_headers(exchange),
                *_passed_on(answer.headers),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": answer.content})
            ok = True
        except GatewayError as error:
            await respond_error(send, error, _run_headers(exchange))
        finally:
            self._log(exchange, ok=ok)

    async def _chat_streamed(self, exchange: Exchange, receive: Receive, send: Send) -> None:
        ok = False
        try:
            leg, response = await self.forward(exchange, stream=True)
            assert not isinstance(response, Answer)
            if leg.attempts:
                leg.attempts[-1]["request_id"] = request_id_of(response.headers)
            headers = [*_run_headers(exchange), *_passed_on(response.headers)]
            try:
                ok = await streaming.relay(exchange.request, leg, response, receive, send, headers)
            finally:  # a stream that fails midway counts against the breaker, as an answer
                failure = streaming.upstream_failure(leg)
                await self.guards.record(leg.target, exchange.probe, failure, 0.0)
        except GatewayError as error:
            await respond_error(send, error, _run_headers(exchange))
        finally:
            self._log(exchange, ok=ok)

    # -- forwarding ------------------------------------------------------------------------

    async def forward(self, exchange: Exchange, stream: bool) -> tuple[Leg, Answer | Streamed]:
        """The pinned model, then (when it gives no answer) the route's fallback model; the
        leg that answered and its answer, or GatewayError with the last failure."""
        route = exchange.route
        refs: list[tuple[ModelRef, Origin]] = [(route.model, "app")]
        if route.fallback is not None:
            refs.append((route.fallback, "fallback"))
        for index, (ref, origin) in enumerate(refs):
            target, upstream, facts = self._target(route, ref, origin)
            leg = Leg(target, facts)
            exchange.legs.append(leg)
            try:
                answer = await self._attempts(exchange, leg, upstream, stream)
            except ProviderError as error:
                leg.error_type, leg.error_message = error.kind, error.message
                if index + 1 < len(refs) and error.kind != "bad_request":
                    continue
                raise client_error(error) from None
            return leg, answer
        raise AssertionError("a route has at least one model")

    async def _attempts(
        self, exchange: Exchange, leg: Leg, upstream: Upstream, stream: bool
    ) -> Answer | Streamed:
        """Send to one model, retrying what may succeed next time, within the route's deadline."""
        route, target = exchange.route, leg.target
        policy = RetryPolicy(
            attempts=route.retries + 1,
            timeout=route.timeout,
            deadline=route.timeout * (route.retries + 1),
        )
        sent, body = upstream.request_body(exchange.request, target.model, stream)
        began, tries = time.perf_counter(), 0
        while True:
            tries += 1
            probe = await self.guards.allow(target, exchange.decisions)
            attempt: dict[str, Any] = {
                "n": len(leg.attempts) + 1,
                "purpose": "call" if leg.facts.origin == "app" else "fallback",
                "started_at": time.time(),
                "request": sent,
            }
            leg.attempts.append(attempt)
            sent_at = time.perf_counter()
            elapsed = sent_at - began
            try:
                timeout = policy.attempt_timeout(elapsed)
                if stream:
                    answer: Answer | Streamed = await upstream.open_stream(body, timeout)
                    if upstream.no_stream_options:  # sent without it: the log says so
                        sent.pop("stream_options", None)
                else:
                    answer = await upstream.post(body, timeout)
                    self._read(leg, answer, attempt)
            except ProviderError as error:
                exchange.waited += time.perf_counter() - sent_at
                elapsed = time.perf_counter() - began
                await self.guards.record(target, probe, error, policy.deadline - elapsed)
                attempt.update(
                    latency_ms=_ms(sent_at),
                    status_code=error.status_code,
                    response=error.raw,
                    error_type=error.kind,
                    error_message=error.message,
                )
                wait = policy.delay(error, tries, elapsed)
                if wait is None:
                    raise
                attempt["retry_in_s"] = round(wait, 3)
                await asyncio.sleep(wait)
                exchange.waited += wait
                continue
            exchange.waited += time.perf_counter() - sent_at
            attempt.update(latency_ms=_ms(sent_at), status_code=200)
            if stream:  # the breaker hears how it went once the stream ends
                exchange.probe = probe
            else:
                await self.guards.record(target, probe, None, 0.0)
            return answer

    @staticmethod
    def _read(leg: Leg, answer: Answer, attempt: dict[str, Any]) -> None:
        """Take usage, model and text from a whole answer; a body that is not a completion is
        a bad_response, retried like the SDK providers do."""
        raw = answer.content.decode("utf-8", "replace")
        try:
            body = from_json(answer.content)
        except ValueError:
            raise ProviderError(
                "bad_response", "the upstream body is not valid JSON", raw=raw[:2000]
            ) from None
        if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
            raise ProviderError("bad_response", "the upstream body is not a completion", raw=raw)
        leg.usage = usage_of(body) or leg.usage
        leg.served = body.get("model") if isinstance(body.get("model"), str) else None
        fingerprint = body.get("system_fingerprint")
        leg.fingerprint = fingerprint if isinstance(fingerprint, str) else None
        leg.output = text_of(body)
        attempt.update(
            response=raw if answer.wire is None else answer.wire.decode("utf-8", "replace"),
            model=leg.served,
            request_id=request_id_of(answer.headers),
            usage=leg.usage.__dict__,
        )

    def _target(
        self, route: Route, ref: ModelRef, origin: Origin
    ) -> tuple[Target, Upstream, WorkflowFacts]:
        index = (route.name, str(ref))
        found = self._targets.get(index)
        if found is None:
            provider = resolve_provider(ref.provider, self.settings.providers)
            upstream = self._upstreams.get(ref.provider)
            if upstream is None:
                kind = AnthropicUpstream if provider.kind == "anthropic" else Upstream
                upstream = self._upstreams[ref.provider] = kind(provider, self._connections)
            pricing = pricing_for(provider, str(ref), self.settings.prices)
            target = Target(route, ref.model, provider.endpoint or provider.name, pricing)
            facts = facts_for(route, provider, ref.model, pricing, origin)
            found = self._targets[index] = (target, upstream, facts)
        return found

    # -- keys and the log ------------------------------------------------------------------

    async def authenticate(self, scope: Scope) -> KeyInfo:
        token = bearer(scope)
        if not token:
            raise unauthorized(
                "no API key: send Authorization: Bearer sk-smallops-... "
                "(from smallops gateway keys create)"
            )
        known, info = self.keys.cached(token)
        if not known:
            try:
                info = await asyncio.to_thread(self.keys.lookup, token)
            except Exception as exc:  # the database is down, stalled or refusing
                known, info = self.keys.stale(token)
                if not known:
                    log.warning("smallops: gateway: keys cannot be looked up: %s", describe(exc))
                    raise GatewayError(
                        503,
                        "the gateway cannot check keys now: its database does not answer",
                        "server_error",
                        "key_store_unavailable",
                        headers={"retry-after": "2"},
                        retry=True,
                    ) from None
        if info is None:
            raise unauthorized("incorrect API key provided")
        if info.revoked:
            raise unauthorized(f"the key {info.name!r} was revoked")
        return info

    def _log(self, exchange: Exchange, ok: bool) -> None:
        """Hand the request's runs to the log writer, and settle its budget reservations."""
        legs = exchange.legs
        for index, leg in enumerate(legs):
            final = index + 1 == len(legs)
            status: RunStatus = "fallback_secondary" if not final else "auto" if ok else "failed"
            self.writer.submit(
                record(leg, status, exchange.request, exchange.key.name, exchange.decisions)
            )
        if legs:
            last = legs[-1]
            self.guards.settle(exchange.held, last.target, last.served, last.usage)
        else:
            self.guards.release(exchange.held)


def _run_headers(exchange: Exchange) -> list[tuple[bytes, bytes]]:
    headers = [(b"x-smallops-overhead-ms", exchange.overhead_ms().encode())]
    if exchange.legs:
        headers.append((b"x-smallops-run-id", exchange.legs[0].run_id.encode()))
    return headers


#: The upstream's request id, passed on to the client under its own name (Mistral's is
#: `mistral-correlation-id`); an Anthropic upstream's is already `x-request-id`.
_PASSED_ON = (b"x-request-id", b"mistral-correlation-id")


def request_id_of(headers: httpx.Headers) -> str | None:
    """The upstream's id for the request, for the run's attempt."""
    for name in _PASSED_ON:
        found = headers.get(name.decode())
        if found:
            return str(found)
    return None


def _unknown_endpoint(method: str, path: str) -> GatewayError:
    """404, saying what the gateway does serve (Anthropic's SDK lands on /v1/messages)."""
    served = "it serves POST /v1/chat/completions and GET /v1/models (OpenAI's format)"
    if path.rstrip("/").endswith("/messages"):
        why = (
            f"Anthropic's Messages API ({path}) is not supported by the gateway: {served}; "
            "a route to a Claude model is called through the OpenAI SDK, with plain chat"
        )
    else:
        why = f"no such endpoint: {method} {path}; {served}"
    return GatewayError(404, why, "invalid_request_error", "unknown_url")


def _passed_on(headers: httpx.Headers) -> list[tuple[bytes, bytes]]:
    return [(name, value) for name, value in headers.raw if name.lower() in _PASSED_ON]


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 3)
