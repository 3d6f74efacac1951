"""Workflow: a pinned model, a versioned prompt, a typed output, a review policy and a fallback."""

from __future__ import annotations

import asyncio
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from smallops._lifecycle import adrive, drive, lifecycle
from smallops._plan import CallPlan, build_plan
from smallops.config import Settings, evals_file, find_project_root
from smallops.content import check_mode
from smallops.errors import ConfigError, MissingFallbackError
from smallops.fallbacks import Fallback
from smallops.kinds import ORIGINS, ContentMode, Origin
from smallops.pinning import check_pinned, parse_model
from smallops.prompts import Prompt, prompt_version
from smallops.providers import Provider, resolve_provider
from smallops.providers.base import Params
from smallops.records import PromptVersion
from smallops.resilience.breaker import BreakerConfig
from smallops.resilience.budget import Budget
from smallops.resilience.ratelimit import parse_limits
from smallops.resilience.retry import RetryPolicy
from smallops.result import Result
from smallops.review.policy import ReviewPolicy, parse_policy
from smallops.review.queue import Decision, ReviewQueue
from smallops.storage.db import ensure_schema

T = TypeVar("T")
DEFAULT_BREAKER = BreakerConfig()

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,99}")


class Workflow(Generic[T]):
    """One business task done by a model, every call logged.

    Defined once in `workflows/<name>.py`; the application and the CLI import the same object.
    Everything is checked here, at definition time: a moving model alias, a missing fallback,
    an unreadable prompt or a bad parameter is a ConfigError before any call is made.
    """

    def __init__(
        self,
        name: str,
        *,
        model: str,
        prompt: str | Path,
        fallback: str | Fallback | None = None,
        output: type[T] | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        timeout: float = 30.0,
        deadline: float = 90.0,
        retries: int = 3,
        review: str | ReviewPolicy = "all",
        owner: str | None = None,
        description: str | None = None,
        allow_unpinned: bool = False,
        on_decision: Callable[[Decision], None] | None = None,
        checks: dict[str, Any] | None = None,
        rate_limit: str | list[str] | None = None,
        token_limit: str | list[str] | None = None,
        rate_wait: float = 10.0,
        breaker: BreakerConfig | None = DEFAULT_BREAKER,
        budget: Budget | None = None,
        content: str = "full",
        retention_days: int | None = None,
        evals: str | Path | None = None,
        webhook: str | None = None,
        webhook_secret_env: str = "SMALLOPS_WEBHOOK_SECRET",
        provider: Provider | None = None,
        settings: Settings | None = None,
        base_dir: str | Path | None = None,
        origin: Origin = "app",
    ) -> None:
        self._kwargs = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self.name = _check_name(name)
        self.base_dir = Path(base_dir) if base_dir else _caller_dir()
        self.settings = settings or Settings.load(find_project_root(self.base_dir))
        self.model = parse_model(model)
        self.provider = provider or resolve_provider(
            self.model.provider,
            self.settings.providers,
            self.settings.secrets,
            self.settings.root,
        )
        self.allow_unpinned = allow_unpinned
        if not allow_unpinned:
            check_pinned(self.model, self.provider.kind)
        self.prompt_path = self.base_dir / prompt
        self.prompt = Prompt.from_file(self.prompt_path)
        self.output = _check_output(name, output)
        self.params = _check_params(temperature, max_tokens)
        self.retry = _check_retry(name, retries, timeout, deadline)
        self.review = parse_policy(review, name)
        self.fallback = _check_fallback(name, fallback, self.output)
        self.owner = owner
        self.description = description
        self.on_decision = on_decision
        self.webhook = webhook
        self.webhook_secret_env = webhook_secret_env
        # "app"; "eval" for the eval runner's calls; "fallback" for the secondary model's calls
        self.origin = _check_origin(name, origin)
        self.checks = dict(checks or {})  # field -> check, for `smallops eval`
        self.rate_limit = parse_limits(rate_limit, "rate_limit", name)
        self.token_limit = parse_limits(token_limit, "token_limit", name)
        self.rate_wait = rate_wait
        self.breaker = breaker
        self.budget = budget
        self.content = _check_content(name, content, self.review, self.fallback)
        self.retention_days = _check_retention(name, retention_days)
        self.evals_path = (
            self.base_dir / evals if evals else _default_evals(self.base_dir, self.name)
        )
        self.module = sys._getframe(1).f_globals.get("__name__") if base_dir is None else None
        schema = self.output.model_json_schema() if self.output is not None else None
        params = {**asdict(self.params), "timeout": timeout, "deadline": deadline}
        self.version = PromptVersion(
            id=prompt_version(self.prompt.text, schema, str(self.model), params),
            workflow=self.name,
            template=self.prompt.text,
            output_schema=schema,
            model=str(self.model),
            params=params,
        )
        self._plan: CallPlan | None = None
        self._lock = threading.Lock()
        self.secondary: Workflow[T] | None = None  # the model to try when this one fails
        if self.fallback.kind == "secondary":
            model_id, then = self.fallback.value
            self.secondary = self.replace(
                model=model_id,
                fallback=then,
                provider=None,
                origin="fallback" if origin == "app" else origin,  # fallback traffic is no drift
            )

    def __repr__(self) -> str:
        return f"Workflow({self.name!r}, model='{self.model}', prompt_version={self.version.id!r})"

    def run(self, /, **inputs: Any) -> Result[T]:
        """Call the model with these template inputs; every outcome is recorded."""
        result: Result[T] = drive(lifecycle(self.plan(), inputs))
        return result

    async def arun(self, /, **inputs: Any) -> Result[T]:
        """`run` for asyncio code: the same lifecycle, awaiting instead of blocking."""
        result: Result[T] = await adrive(lifecycle(self.plan(), inputs))
        return result

    def decision(self, run_id: str) -> Decision | None:
        """The reviewer's decision on a run, or None while it waits for one."""
        return self._queue().decision(run_id)

    def wait(self, run_id: str, timeout: float | None = None, poll: float = 1.0) -> Decision:
        """Block until a human decides on `run_id` (TimeoutError after `timeout` seconds)."""
        queue = self._queue()
        queue.item(run_id)  # NotFoundError now, rather than waiting forever, if never queued
        deadline = None if timeout is None else time.monotonic() + timeout
        while (decision := queue.decision(run_id)) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"no decision on run {run_id} within {timeout} s")
            time.sleep(poll)
        return decision

    async def await_decision(
        self, run_id: str, timeout: float | None = None, poll: float = 1.0
    ) -> Decision:
        """`wait` for asyncio code: the lookups run in a worker thread."""
        return await asyncio.to_thread(self.wait, run_id, timeout, poll)

    def _queue(self) -> ReviewQueue:
        writer = self.plan().writer
        writer.flush()  # a run just made must be in the queue before we look for it
        ensure_schema(writer.store.engine)
        return ReviewQueue(writer.store.engine)

    def replace(self, **changes: Any) -> Workflow[T]:
        """A copy with some settings changed, e.g. `replace(model=..., provider=...)`."""
        copy = Workflow(**{**self._kwargs, "base_dir": self.base_dir, **changes})
        copy.module = self.module
        return copy

    def plan(self) -> CallPlan:
        """The workflow ready to call: provider, prepared request, guards, log writer (once)."""
        if self._plan is None:
            with self._lock:
                if self._plan is None:
                    self._plan = build_plan(self)
        return self._plan


def _default_evals(base_dir: Path, name: str) -> Path:
    """evals/<name>.jsonl beside workflows/."""
    return evals_file(base_dir.parent if base_dir.name == "workflows" else base_dir, name)


def _caller_dir() -> Path:
    """The folder of the file that defines the workflow: prompt paths are relative to it."""
    frame = sys._getframe(2)
    filename = frame.f_globals.get("__file__")
    return Path(filename).resolve().parent if filename else Path.cwd()


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(
            f"workflow name {name!r} is not valid",
            hint="use lower-case letters, digits, '-' and '_', e.g. 'email-triage'",
        )
    return name


def _check_output(name: str, output: Any) -> Any:
    if output is None or (isinstance(output, type) and issubclass(output, BaseModel)):
        return output
    raise ConfigError(
        f"workflow {name!r}: output must be a pydantic BaseModel subclass, or None for free text"
    )


def _check_params(temperature: float | None, max_tokens: int | None) -> Params:
    if temperature is not None and not 0 <= temperature <= 2:
        raise ConfigError(f"temperature {temperature} is out of range", hint="use 0 to 2")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise ConfigError(f"max_tokens {max_tokens!r} must be a positive integer")
    return Params(temperature=temperature, max_tokens=max_tokens)


def _check_retry(name: str, retries: int, timeout: float, deadline: float) -> RetryPolicy:
    try:
        return RetryPolicy(attempts=retries + 1, timeout=timeout, deadline=deadline)
    except (TypeError, ValueError):
        raise ConfigError(
            f"workflow {name!r}: retries must be >= 0 and timeout, deadline positive numbers"
        ) from None


def _check_content(
    name: str, content: str, review: ReviewPolicy, fallback: Fallback
) -> ContentMode:
    """A metadata-only workflow keeps no input or output, so nothing can be put before a human."""
    mode = check_mode(content, name)
    if mode == "metadata" and (review.kind != "none" or fallback.kind == "review"):
        raise ConfigError(
            f"workflow {name!r}: content='metadata' keeps no inputs or outputs, so a reviewer "
            "would have nothing to look at",
            hint="use content='redacted' (personal data masked), or review='none' with a "
            "fallback other than 'review'",
        )
    return mode


def _check_retention(name: str, days: int | None) -> int | None:
    if days is not None and (isinstance(days, bool) or not isinstance(days, int) or days < 1):
        raise ConfigError(
            f"workflow {name!r}: retention_days={days!r} is not a number of days",
            hint="use a whole number of days of at least 1, or None to keep content until "
            "`smallops prune --older-than` says otherwise",
        )
    return days


def _check_origin(name: str, origin: str) -> Origin:
    if origin not in ORIGINS:
        raise ConfigError(
            f"workflow {name!r}: origin={origin!r} is not one of {', '.join(ORIGINS)}",
            hint='leave it out: "app" is the application\'s own calls',
        )
    return origin


def _check_fallback(name: str, fallback: str | Fallback | None, output: Any) -> Fallback:
    if fallback is None:
        raise MissingFallbackError(
            f"workflow {name!r} declares no fallback",
            hint='say where work goes when the model fails: fallback="review" (a human), '
            'fallback="raise", or fallback=smallops.default(value)',
        )
    if isinstance(fallback, Fallback) and fallback.kind == "secondary":
        return fallback
    if isinstance(fallback, str):
        if fallback == "review":
            return Fallback("review")
        if fallback == "raise":
            return Fallback("raise")
        raise ConfigError(
            f"workflow {name!r}: unknown fallback {fallback!r}",
            hint='use "review", "raise" or smallops.default(value)',
        )
    if not isinstance(fallback, Fallback):
        raise ConfigError(f"workflow {name!r}: fallback must be a string or smallops.default(...)")
    if fallback.kind == "default" and output is not None and not isinstance(fallback.value, output):
        try:
            return Fallback("default", output.model_validate(fallback.value))
        except ValidationError as exc:
            raise ConfigError(
                f"workflow {name!r}: the default fallback does not fit {output.__name__}: "
                f"{exc.errors()[0]['msg']}"
            ) from None
    return fallback
