"""Eval history: every eval run per workflow and prompt version, one eval run's per-field
accuracy and confusion matrices, and the cases that changed between two eval runs.

Pages read the eval log only, never the workflow's code: the enum/Literal fields come from the
output schema stored with the prompt version, and the expected values from the checks stored
with each result (eval runs recorded before those were kept show their check results, with a
note). A case whose run kept no content (`metadata`, or pruned) shows its output's labels only.
Ids and names come as the web page checked them: plain text, never a NUL.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from smallops.errors import InputError, NotFoundError
from smallops.evals.scorers import OPERATORS
from smallops.kinds import PRUNED, UNJUDGED
from smallops.labels import enum_fields
from smallops.review.triage import input_preview, truncate
from smallops.storage import eval_log

if TYPE_CHECKING:
    from smallops.storage.db import Engine

PAGE = 50  # eval runs a page of the list shows
CHART_RUNS = 30  # eval runs a workflow's pass-rate chart shows
CHART_WORKFLOWS = 4  # charts on the unfiltered list: the workflows with the most eval runs
VALUE_CHARS = 160  # characters of an output value a table cell shows
NO_OUTPUT = "(no output)"
CONTENTLESS = frozenset({"metadata", PRUNED})
VERDICTS = {  # the verdict recorded on an eval run, as a person reads it
    "pass": "pass",
    "inconclusive": "inconclusive",
    "regression": "regression",
    UNJUDGED: "no verdict (cases unanswered)",
    None: "not gated",
}
OLD_CHECKS = (
    "This eval run was recorded before expected values were kept with its results: "
    "accuracy is the share of its checks that passed, and there is no confusion matrix."
)


# The list ------------------------------------------------------------------------------------


def history(
    engine: Engine, *, workflow: str | None = None, before: str | None = None
) -> dict[str, Any]:
    """A page of eval runs, newest first (of one workflow, or all), each marked where its
    prompt version changed; the prompt versions and their pass rates; a pass-rate series per
    workflow for the chart; the link to the next, older page."""
    workflow, before = workflow or None, before or None
    cursor = None
    if before is not None:
        last = eval_log.eval_run(engine, before)
        if last is None or (workflow is not None and last["workflow"] != workflow):
            raise InputError(
                f"there is no eval run {before!r} to page from",
                hint="follow the “older” link, or start again at /evals",
            )
        cursor = (last["started_at"], last["id"])
    rows = eval_log.list_eval_runs(engine, workflow=workflow, before=cursor, limit=PAGE + 1)
    more = len(rows) > PAGE
    runs = [_listed(row) for row in rows[:PAGE]]
    _mark_versions(runs)
    workflows = eval_log.eval_workflows(engine)
    charted = [workflow] if workflow else _most_evaluated(workflows)
    return {
        "workflow": workflow,
        "workflows": workflows,
        "eval_runs": runs,
        "older": (
            _query("/evals", workflow=workflow, before=runs[-1]["id"]) if more and runs else None
        ),
        "newest": _query("/evals", workflow=workflow) if before else None,
        "versions": [_version(row) for row in eval_log.eval_versions(engine, workflow)],
        "charts": [
            _series(name, eval_log.list_eval_runs(engine, workflow=name, limit=CHART_RUNS))
            for name in charted
            if name in workflows
        ],
    }


def _listed(row: Mapping[str, Any]) -> dict[str, Any]:
    run = {k: v for k, v in row.items() if k not in ("unpriced", "calls_made", "scores")}
    run["pass_rate"] = _rate(row["passed"], row["cases"])
    run["cost"] = cost_text(row["cost_usd"], row.get("unpriced"), row.get("calls_made"))
    run["unpriced"] = row.get("unpriced")
    run["verdict_text"] = VERDICTS.get(row["verdict"], str(row["verdict"]))
    run["new_version"] = False
    run["delta"] = None
    return run


def _mark_versions(runs: list[dict[str, Any]]) -> None:
    """Mark each eval run whose prompt version differs from the workflow's eval run before it
    (on this page), with the change in pass rate since that run."""
    older: dict[str, dict[str, Any]] = {}
    for run in reversed(runs):
        before = older.get(run["workflow"])
        if before is not None:
            run["new_version"] = before["prompt_version"] != run["prompt_version"]
            if run["cases"] and before["cases"]:
                change = run["passed"] / run["cases"] - before["passed"] / before["cases"]
                run["delta"] = round(change, 4)
        older[run["workflow"]] = run


def _most_evaluated(workflows: Mapping[str, int]) -> list[str]:
    ranked = sorted(workflows, key=lambda name: (-workflows[name], name))
    return sorted(ranked[:CHART_WORKFLOWS])


def _version(row: Mapping[str, Any]) -> dict[str, Any]:
    return {**row, "best": _round(row["best"]), "worst": _round(row["worst"])}


def _series(workflow: str, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A workflow's recent pass rates, oldest first: the chart's numbers."""
    points = [
        {
            "eval_run_id": row["id"],
            "started_at": row["started_at"],
            "prompt_version": row["prompt_version"],
            "pass_rate": _rate(row["passed"], row["cases"]),
            "verdict": row["verdict"],
        }
        for row in reversed(rows)
    ]
    return {"workflow": workflow, "points": points}


def cost_text(cost: float | None, unpriced: int | None, calls_made: int | None) -> str:
    """What an eval run cost, never an unpriced call read as $0."""
    if calls_made == 0:
        return "$0 (every answer cached)"
    if cost is None:
        return "unpriced"
    text = f"${cost:.4f}"
    if unpriced:
        return f"{text} + {unpriced} unpriced call{'s' if unpriced != 1 else ''}"
    return text


# One eval run --------------------------------------------------------------------------------


def eval_run_page(engine: Engine, eval_run_id: str) -> dict[str, Any]:
    """One eval run: its summary, per-field accuracy, a confusion matrix per enum/Literal
    field, and every result with its input preview, output and failed checks."""
    run = _load(engine, eval_run_id)
    schema = run.pop("output_schema") or {}
    enums = enum_fields(schema)
    order = _field_order(schema)
    results = run.pop("results")
    contents = eval_log.run_contents(engine, [r["run_id"] for r in results if r["run_id"]])
    previous = eval_log.previous_eval_run(engine, run)
    listed = _listed({**run, **(run.pop("summary") or {})})
    accuracy, matrices, old = field_accuracy(results, enums, order)
    return {
        "eval_run": listed,
        "answers": len(results),
        "previous": previous,
        "compare_url": _query("/evals/compare", a=previous, b=run["id"]) if previous else None,
        "fields": accuracy,
        "confusion": matrices,
        "notes": [OLD_CHECKS] if old else [],
        "results": [_shown(r, contents.get(r["run_id"] or ""), enums, order) for r in results],
    }


def _load(engine: Engine, eval_run_id: str | None) -> dict[str, Any]:
    run = eval_log.eval_run_with_results(engine, eval_run_id) if eval_run_id else None
    if run is None:
        raise NotFoundError(
            f"there is no eval run {eval_run_id!r}", hint="eval history lists them at /evals"
        )
    return run


def field_accuracy(
    results: Sequence[Mapping[str, Any]], enums: Mapping[str, list[Any]], order: Sequence[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], bool]:
    """Per checked output field: of the answers (cases x repeats) with an expected value for
    it, how many output exactly that value (or, for a check such as one_of or regex, passed
    it); per enum/Literal field, expected x got counts. The third item says whether some
    results were recorded without their expected values (then their checks are counted)."""
    tallies: dict[str, dict[str, Any]] = {}
    cells: dict[str, dict[tuple[Any, Any], int]] = {}
    old = False
    for result in results:
        output = result["output"]
        for check in result["checks"] or []:
            name = check.get("field")
            if not isinstance(name, str) or name == "_valid":
                continue
            tally = tallies.setdefault(name, {"answers": 0, "matched": 0, "passed": 0, "by": set()})
            tally["answers"] += 1
            tally["passed"] += bool(check.get("passed"))
            if "expected" not in check:
                old = True
                tally["by"].add("check")
                tally["matched"] += bool(check.get("passed"))
                continue
            plain, wanted = _plain_expected(check["expected"])
            got = _got(output, name)
            if not plain:
                tally["by"].add(_operator(check["expected"]))
                tally["matched"] += bool(check.get("passed"))
                continue
            tally["by"].add("equals")
            tally["matched"] += got is not _MISSING and _same(got, wanted)
            if name in enums:
                key = (_key(wanted), NO_OUTPUT if got is _MISSING else _key(got))
                counts = cells.setdefault(name, {})
                counts[key] = counts.get(key, 0) + 1
    fields = [
        {
            "field": name,
            "answers": tally["answers"],
            "matched": tally["matched"],
            "accuracy": _rate(tally["matched"], tally["answers"]),
            "checks_passed": tally["passed"],
            "by": ", ".join(sorted(tally["by"])),
            "enum": name in enums,
        }
        for name, tally in _ordered(tallies, order)
    ]
    matrices = [_matrix(name, enums[name], counts) for name, counts in _ordered(cells, order)]
    return fields, matrices, old


_MISSING: Any = object()  # the output has no such field (or there is no output)


def _plain_expected(spec: Any) -> tuple[bool, Any]:
    """(whether the expected value is compared for equality, the value): a plain value, or
    {"exact": value}; any other check object is judged by its check."""
    if isinstance(spec, dict) and len(spec.keys() & set(OPERATORS)) == 1:
        if "exact" in spec:
            return True, spec["exact"]
        return False, None
    return True, spec


def _operator(spec: Any) -> str:
    found = sorted(spec.keys() & set(OPERATORS)) if isinstance(spec, dict) else []
    return found[0] if found else "check"


def _got(output: Any, name: str) -> Any:
    """The output's value for a field, as the checks read it (a free-text output is the value
    of every field)."""
    if isinstance(output, str):
        return output
    if isinstance(output, dict) and name in output:
        return output[name]
    return _MISSING


def _same(got: Any, wanted: Any) -> bool:
    if isinstance(got, bool) != isinstance(wanted, bool):
        return False  # JSON's true is not 1
    return bool(got == wanted)


def _key(value: Any) -> Any:
    """A value as a matrix label: scalars as they are, anything else as its JSON text."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _matrix(
    name: str, declared: list[Any], counts: Mapping[tuple[Any, Any], int]
) -> dict[str, Any]:
    """Expected x got for one enum field: rows and columns in the declared order, then any
    other value seen (an old schema's, an invalid output's), then "no output"."""
    seen_expected = [e for e, _ in counts]
    seen_got = [g for _, g in counts]
    rows = _unique([v for v in declared if v in seen_expected] + seen_expected)
    columns = _unique(declared + [g for g in seen_got if g != NO_OUTPUT])
    if NO_OUTPUT in seen_got:
        columns.append(NO_OUTPUT)
    table = []
    for expected in rows:
        line = [counts.get((expected, got), 0) for got in columns]
        correct = counts.get((expected, expected), 0)
        table.append({"expected": expected, "counts": line, "total": sum(line), "correct": correct})
    total = sum(counts.values())
    return {
        "field": name,
        "got": columns,
        "rows": table,
        "total": total,
        "correct": sum(row["correct"] for row in table),
        "peak": max(counts.values(), default=0),
    }


def _unique(values: Sequence[Any]) -> list[Any]:
    out: list[Any] = []
    for value in values:
        if not any(value == o and type(value) is type(o) for o in out):
            out.append(value)
    return out


def _ordered(items: Mapping[str, Any], order: Sequence[str]) -> list[tuple[str, Any]]:
    rank = {name: i for i, name in enumerate(order)}
    return sorted(items.items(), key=lambda item: (rank.get(item[0], len(rank)), item[0]))


def _field_order(schema: Mapping[str, Any]) -> list[str]:
    """The output's fields in their declared order: the schema's `required` list keeps it
    (Postgres's JSONB does not keep the order of `properties`)."""
    required = [name for name in schema.get("required", []) if isinstance(name, str)]
    return required + sorted(set(schema.get("properties", {})) - set(required))


def _shown(
    result: Mapping[str, Any],
    content: Mapping[str, Any] | None,
    enums: Mapping[str, list[Any]],
    order: Sequence[str],
) -> dict[str, Any]:
    """A result as a table shows it: the case, its input's preview, its output (its labels
    only when the run kept no content), its expected values and its failed checks."""
    kept = content is None or content.get("content") not in CONTENTLESS
    checks = [c for c in result["checks"] or [] if isinstance(c, dict)]
    return {
        "case_id": result["case_id"],
        "repeat": result["repeat"],
        "run_id": result["run_id"],
        "passed": bool(result["passed"]),
        "cached": bool(result["cached"]),
        "error": result["error"],
        "content": "full" if content is None else (content.get("content") or "full"),
        "input_preview": input_preview(content.get("inputs")) if content and kept else "",
        "output": _output_lines(result["output"], enums if not kept else None, order),
        "labels_only": not kept,
        "expected": [
            {"field": c.get("field"), "value": _expected_text(c["expected"]), "changed": False}
            for c in checks
            if "expected" in c
        ],
        "failed": [
            {"field": c.get("field"), "detail": truncate(str(c.get("detail", "")), 300)}
            for c in checks
            if not c.get("passed")
        ],
    }


def _output_lines(
    output: Any, labels_of: Mapping[str, list[Any]] | None, order: Sequence[str]
) -> list[dict[str, Any]]:
    """An output as field/value lines in the declared order; with `labels_of`, only those
    fields (the labels a contentless run keeps)."""
    if output is None:
        return []
    if not isinstance(output, dict):
        if labels_of is not None:
            return []
        return [{"field": "", "value": _text(output), "changed": False}]
    names = [n for n in order if n in output] + sorted(k for k in output if k not in order)
    if labels_of is not None:
        names = [n for n in names if n in labels_of]
    return [{"field": name, "value": _text(output[name]), "changed": False} for name in names]


def _expected_text(spec: Any) -> str:
    """An expected value as written, a check object as its operator and value
    ('contains "invoice"')."""
    plain, value = _plain_expected(spec)
    if plain:
        return _text(value)
    operator = _operator(spec)
    return _text(f"{operator} {json.dumps(spec[operator], ensure_ascii=False)}")


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= VALUE_CHARS else text[: VALUE_CHARS - 1] + "…"


# Two eval runs -------------------------------------------------------------------------------


def compare_page(engine: Engine, a: str | None, b: str | None) -> dict[str, Any]:
    """The cases whose result changed from eval run `a` to eval run `b` (passed → failed,
    failed → passed, or the output changed), side by side; the cases in only one of them."""
    if not a or not b:
        raise InputError(
            "name the two eval runs to compare: /evals/compare?a=<eval run id>&b=<eval run id>",
            hint="each eval run's page links to the comparison with the one before it",
        )
    first, second = _load(engine, a), _load(engine, b)
    first.update(first.pop("summary") or {})
    second.update(second.pop("summary") or {})
    schemas = [first.pop("output_schema") or {}, second.pop("output_schema") or {}]
    enums = {**enum_fields(schemas[0]), **enum_fields(schemas[1])}
    order = _unique(_field_order(schemas[1]) + _field_order(schemas[0]))
    left = {(r["case_id"], r["repeat"]): r for r in first.pop("results")}
    right = {(r["case_id"], r["repeat"]): r for r in second.pop("results")}
    changes = []
    for key in sorted(left.keys() & right.keys()):
        change = _change(left[key], right[key])
        if change is not None:
            changes.append((change, key))
    changes.sort(key=lambda item: (CHANGES.index(item[0]), item[1]))
    only_a = sorted(left.keys() - right.keys())
    only_b = sorted(right.keys() - left.keys())
    wanted = [left[k]["run_id"] for _, k in changes] + [right[k]["run_id"] for _, k in changes]
    wanted += [left[k]["run_id"] for k in only_a] + [right[k]["run_id"] for k in only_b]
    contents = eval_log.run_contents(engine, [run_id for run_id in wanted if run_id])

    def shown(result: Mapping[str, Any]) -> dict[str, Any]:
        return _shown(result, contents.get(result["run_id"] or ""), enums, order)

    rows = []
    for change, key in changes:
        a_shown, b_shown = shown(left[key]), shown(right[key])
        _mark_changed(a_shown["output"], b_shown["output"])
        rows.append(
            {
                "case_id": key[0],
                "repeat": key[1],
                "change": change,
                "input_preview": b_shown["input_preview"] or a_shown["input_preview"],
                "expected": b_shown["expected"] or a_shown["expected"],
                "a": a_shown,
                "b": b_shown,
            }
        )
    counts = {name: sum(1 for c, _ in changes if c == name) for name in CHANGES}
    notes = []
    if first["workflow"] != second["workflow"]:
        notes.append(
            f"These eval runs are of two workflows ({first['workflow']} and "
            f"{second['workflow']}): cases are matched by their ids."
        )
    return {
        "a": _listed(first),
        "b": _listed(second),
        "counts": {**counts, "unchanged": len(left.keys() & right.keys()) - len(changes)},
        "changed": rows,
        "only_a": [shown(left[k]) for k in only_a],
        "only_b": [shown(right[k]) for k in only_b],
        "notes": notes,
    }


CHANGES = ("passed → failed", "failed → passed", "output changed")


def _mark_changed(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    """Mark the output lines whose value differs between the two runs (or is in one only)."""
    values_a = {line["field"]: line["value"] for line in a}
    values_b = {line["field"]: line["value"] for line in b}
    for line in a:
        line["changed"] = values_b.get(line["field"]) != line["value"]
    for line in b:
        line["changed"] = values_a.get(line["field"]) != line["value"]


def _change(a: Mapping[str, Any], b: Mapping[str, Any]) -> str | None:
    if a["passed"] and not b["passed"]:
        return CHANGES[0]
    if b["passed"] and not a["passed"]:
        return CHANGES[1]
    if _canonical(a["output"]) != _canonical(b["output"]):
        return CHANGES[2]
    return None


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


# Shared ------------------------------------------------------------------------------------


def _rate(passed: int | None, of: int | None) -> float | None:
    return round(passed / of, 4) if passed is not None and of else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def _query(path: str, **params: str | None) -> str:
    given = {k: v for k, v in params.items() if v}
    return path + ("?" + urlencode(given) if given else "")
