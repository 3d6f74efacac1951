"""Eval sets: JSONL files in the repository, one real example per line.

    {"id": "triage-001", "input": {...}, "expected": {"category": "billing"}, "tags": ["critical"]}

`expected` holds only the fields to check. A value is compared exactly unless it is a check
object: {"one_of": [...]}, {"approx": 12.5, "tolerance": 0.01}, {"regex": "..."},
{"contains": "..."}, {"check": "function_in_the_workflow_module"} or {"graded": true}.
Loading errors name the file, the line and the problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smallops.errors import InputError
from smallops.jsonl import objects

if TYPE_CHECKING:  # the workflow is handed in; this layer never imports it
    from smallops.workflow import Workflow


@dataclass(frozen=True)
class Case:
    """One eval case."""

    id: str
    input: dict[str, Any]
    expected: dict[str, Any]
    tags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def critical(self) -> bool:
        return "critical" in self.tags


def load_cases(
    path: Path, *, variables: frozenset[str] | None = None, fields: set[str] | None = None
) -> list[Case]:
    """Read an eval file, checking every line: ids unique, inputs fit the prompt's variables,
    expected fields exist in the output schema (when `fields` is given)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(
            f"eval set {path} does not exist",
            hint='write one JSON object per line: {"id", "input", "expected", "tags"}',
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read eval set {path}: {exc}") from None
    cases: list[Case] = []
    seen: dict[str, int] = {}
    for number, data in objects(text, str(path), "a JSON object with id, input and expected"):
        case = _case(data, f"{path}, line {number}", variables, fields)
        if case.id in seen:
            raise InputError(f"{path}, line {number}: id {case.id!r} repeats line {seen[case.id]}")
        seen[case.id] = number
        cases.append(case)
    if not cases:
        raise InputError(f"eval set {path} has no cases")
    return cases


def workflow_cases(workflow: Workflow[Any]) -> list[Case]:
    """The workflow's eval set, checked against its prompt's variables and output fields."""
    fields = set(workflow.output.model_fields) if workflow.output is not None else {"text"}
    return load_cases(workflow.evals_path, variables=workflow.prompt.variables, fields=fields)


def _case(
    data: dict[str, Any], where: str, variables: frozenset[str] | None, fields: set[str] | None
) -> Case:
    case_id, inputs, expected = data.get("id"), data.get("input"), data.get("expected", {})
    tags = data.get("tags", [])
    if not isinstance(case_id, str) or not case_id.strip():
        raise InputError(f"{where}: every case needs a string id")
    if not isinstance(inputs, dict):
        raise InputError(f'{where}: case {case_id!r} needs an object of inputs under "input"')
    if not isinstance(expected, dict):
        raise InputError(f'{where}: "expected" of case {case_id!r} must be an object')
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise InputError(f'{where}: "tags" of case {case_id!r} must be a list of strings')
    if variables is not None:
        missing = sorted(variables - inputs.keys())
        if missing:
            raise InputError(
                f"{where}: case {case_id!r} lacks input {', '.join(map(repr, missing))}",
                hint=f"the prompt uses: {', '.join(sorted(variables))}",
            )
    if fields is not None:
        unknown = sorted(set(expected) - fields - {"_valid"})
        if unknown:
            raise InputError(
                f"{where}: case {case_id!r} expects {', '.join(map(repr, unknown))}, "
                "which the output does not have",
                hint=f"output fields: {', '.join(sorted(fields))}",
            )
    return Case(case_id, inputs, expected, tuple(tags))
