"""Checks per field: a case passes when every check of its expected fields passes.

A workflow may name a check per field (`Workflow(checks={"total": tolerance(0.01)})`); a case
may choose one per value (`"expected": {"summary": {"contains": "invoice"}}`); otherwise a
field is compared exactly. A check that raises is an error, and an error is a failure, except
when a grader's model gave no answer: that says nothing about the output, like any unanswered call.

    exact()               equal (1 == 1.0; text compared as is)
    one_of([...])         the value is one of these
    tolerance(abs, rel)   numbers within an absolute or relative distance
    regex(pattern)        re.search on the value as text
    contains(text)        the text appears in the value (ignore_case by default)
    schema_valid()        the output validated against the workflow's schema ("_valid": true)
    custom(function)      function(actual, expected, case) -> bool or (bool, why); by name from
                          the workflow's module in an eval file: {"check": "function_name"}
    graded_by(workflow)   a model-graded check that is itself a workflow: it gets the inputs
                          field, input, expected and actual, and answers with a boolean `passed`
"""

from __future__ import annotations

import inspect
import json
import re
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from smallops.error_types import NO_VERDICT
from smallops.errors import ConfigError, WorkflowFailed

if TYPE_CHECKING:
    from smallops.evals.dataset import Case
    from smallops.workflow import Workflow

Verdict = tuple[bool, str]
Check = Callable[[Any, Any, "Case"], "Verdict | Awaitable[Verdict]"]
OPERATORS = ("one_of", "approx", "regex", "contains", "check", "graded", "exact")


@dataclass(frozen=True)
class FieldResult:
    """The outcome of one field's check."""

    field: str
    passed: bool
    detail: str
    error: bool = False
    no_answer: str | None = None  # the error type, when a grader's model gave no answer


def exact() -> Check:
    def check(actual: Any, expected: Any, _case: Case) -> Verdict:
        return actual == expected, f"expected {expected!r}, got {actual!r}"

    return check


def one_of(values: list[Any] | None = None) -> Check:
    def check(actual: Any, expected: Any, _case: Case) -> Verdict:
        options = values if values is not None else expected
        return actual in options, f"expected one of {options!r}, got {actual!r}"

    return check


def tolerance(absolute: float = 0.0, relative: float = 0.0) -> Check:
    def check(actual: Any, expected: Any, _case: Case) -> Verdict:
        if expected is None:
            return actual is None, f"expected null, got {actual!r}"
        if not isinstance(actual, (int, float)) or isinstance(actual, bool):
            return False, f"expected a number near {expected!r}, got {actual!r}"
        allowed = max(absolute, relative * abs(expected))
        return abs(
            actual - expected
        ) <= allowed, f"expected {expected!r} ± {allowed:g}, got {actual!r}"

    return check


def regex(pattern: str | None = None) -> Check:
    def check(actual: Any, expected: Any, _case: Case) -> Verdict:
        wanted = pattern if pattern is not None else expected
        return re.search(wanted, _text(actual)) is not None, f"expected to match /{wanted}/"

    return check


def contains(text: str | None = None, *, ignore_case: bool = True) -> Check:
    def check(actual: Any, expected: Any, _case: Case) -> Verdict:
        wanted, value = str(text if text is not None else expected), _text(actual)
        if ignore_case:
            wanted, value = wanted.lower(), value.lower()
        return wanted in value, f"expected to contain {wanted!r}"

    return check


def schema_valid() -> Check:
    def check(actual: Any, expected: Any, _case: Case) -> Verdict:
        return actual is not None, "expected a valid output"

    return check


def custom(function: Callable[[Any, Any, Case], Any]) -> Check:
    def check(actual: Any, expected: Any, case: Case) -> Verdict:
        return _verdict(function(actual, expected, case), function.__name__)

    return check


def graded_by(judge: Workflow[Any]) -> Check:
    """A check answered by another workflow (a model acting as grader), logged like any call."""
    grader = judge.replace(review="none", fallback="raise", origin="eval")

    async def check(actual: Any, expected: Any, case: Case) -> Verdict:
        result = await grader.arun(
            field=case.id,
            input=json.dumps(case.input),
            expected=_text(expected),
            actual=_text(actual),
        )
        passed = getattr(result.output, "passed", None)
        if not isinstance(passed, bool):
            raise ConfigError(f"grader {judge.name} must answer with a boolean field `passed`")
        reason = getattr(result.output, "reason", "") or ""
        return passed, f"graded by {judge.name}: {reason}".strip()

    check.grader = judge.name  # type: ignore[attr-defined]  # graders need no eval set of their own
    return check


async def check_case(
    case: Case, output: Any, error: str | None, workflow: Workflow[Any]
) -> list[FieldResult]:
    """Check every expected field of a case against the output (None when the call failed)."""
    results = []
    for name, spec in case.expected.items():
        if name == "_valid":
            passed = (output is not None) == bool(spec)
            results.append(FieldResult(name, passed, error or "a valid output"))
            continue
        if output is None:
            results.append(FieldResult(name, False, f"no valid output ({error})"))
            continue
        actual = output if isinstance(output, str) else output.get(name)
        check, expected = _check_for(name, spec, workflow)
        try:
            verdict = check(actual, expected, case)
            if inspect.isawaitable(verdict):
                verdict = await verdict
            passed, detail = verdict
        except WorkflowFailed as exc:
            kind = exc.error_type if exc.error_type in NO_VERDICT else None
            results.append(FieldResult(name, False, exc.message, error=True, no_answer=kind))
            continue
        except Exception as exc:  # a scorer error is a failure, never a silent pass
            results.append(FieldResult(name, False, f"{type(exc).__name__}: {exc}", error=True))
            continue
        results.append(FieldResult(name, bool(passed), "ok" if passed else detail))
    return results


def _check_for(name: str, spec: Any, workflow: Workflow[Any]) -> tuple[Check, Any]:
    """The check for a field: the case's operator, else the workflow's, else exact."""
    if isinstance(spec, dict) and len(spec.keys() & set(OPERATORS)) == 1:
        operator = next(iter(spec.keys() & set(OPERATORS)))
        value = spec[operator]
        if operator == "approx":
            return tolerance(spec.get("tolerance", 0.0), spec.get("relative", 0.0)), value
        if operator == "check":
            return custom(_module_function(workflow, value)), spec.get("expected")
        if operator == "graded":
            configured = workflow.checks.get(name)
            if configured is None:
                raise ConfigError(
                    f"field {name!r} asks for a graded check, but workflow "
                    f"{workflow.name} names no graded_by(...) check for it"
                )
            return configured, spec.get("criteria", value)
        if operator == "contains":
            return contains(ignore_case=spec.get("ignore_case", True)), value
        makers: dict[str, Callable[[], Check]] = {
            "one_of": one_of,
            "regex": regex,
            "exact": exact,
        }
        return makers[operator](), value
    return workflow.checks.get(name) or exact(), spec


def _module_function(workflow: Workflow[Any], name: str) -> Callable[..., Any]:
    module = sys.modules.get(workflow.module or "")
    function = getattr(module, name, None) if module else None
    if not callable(function):
        raise ConfigError(f"no function {name!r} in the module of workflow {workflow.name}")
    found: Callable[..., Any] = function
    return found


def _verdict(value: Any, name: str) -> Verdict:
    if isinstance(value, tuple):
        return bool(value[0]), str(value[1]) if len(value) > 1 else name
    return bool(value), f"{name} said no"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
