"""The log becomes the eval set: reviewed items appended to a workflow's eval file."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smallops.errors import InputError
from smallops.jsonl import objects
from smallops.review.desk import output_problem
from smallops.review.queue import ReviewQueue

if TYPE_CHECKING:  # the workflow is handed in; this layer never imports it
    from smallops.workflow import Workflow


@dataclass
class Exported:
    """What an export did: cases added, items already there (or pruned), items left out."""

    added: int = 0
    kept: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (run id, why)


def export_reviewed(queue: ReviewQueue, workflow: Workflow[Any], path: Path) -> Exported:
    """Append approved (expected = the output) and corrected (expected = the correction) items.

    Ids are `review-<run id>`, so a second export adds only what is new; items whose content
    was pruned have nothing to replay and are kept out. An item whose output does not fit the
    workflow's schema today (or was approved from a failed call, before approving one was
    refused), or whose inputs lack a variable of its prompt, would make a case that is wrong or
    that `smallops eval` refuses: it is skipped, with the reason. A free-text output is expected as
    {"text": ...}. The file is written whole to a temporary file and renamed: never left
    half-written.
    """
    existing = _ids(path)
    result = Exported()
    cases = []
    for state in ("approved", "corrected"):
        for item in queue.items(workflow.name, state=state, limit=1_000_000):
            case_id = f"review-{item['run_id']}"
            if case_id in existing or item["final_output"] is None or not item["inputs"]:
                result.kept += 1
                continue
            problem = _problem(workflow, item)
            if problem is not None:
                result.skipped.append((item["run_id"], problem))
                continue
            existing.add(case_id)
            output = item["final_output"]
            cases.append(
                {
                    "id": case_id,
                    "input": item["inputs"],
                    "expected": output if workflow.output is not None else {"text": output},
                    "tags": ["from-review", state, *item["classes"]],
                }
            )
    if cases:
        cases.sort(key=lambda case: case["id"])
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        if text and not text.endswith("\n"):
            text += "\n"
        text += "".join(json.dumps(case, ensure_ascii=False) + "\n" for case in cases)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(path.suffix + ".tmp")
        temporary.write_text(text, encoding="utf-8")
        temporary.replace(path)
    result.added = len(cases)
    return result


def _problem(workflow: Workflow[Any], item: dict[str, Any]) -> str | None:
    """Why an item would not make a valid eval case of the workflow; None when it would."""
    if item["state"] == "approved" and item["reason"] == "fallback":
        return f"it was approved as the model's failed answer ({item['error_type']}) left it"
    missing = sorted(workflow.prompt.variables - item["inputs"].keys())
    if missing:
        return f"its inputs lack {', '.join(map(repr, missing))}, which the prompt uses"
    return output_problem(workflow, item["final_output"])


def _ids(path: Path) -> set[str]:
    """The ids already in an eval file (a line without one stops the export: nothing written)."""
    if not path.exists():
        return set()
    ids = set()
    for number, case in objects(path.read_text(encoding="utf-8"), str(path)):
        if "id" not in case:
            raise InputError(
                f"{path}, line {number}: an eval case without an id",
                hint="fix the line; nothing was exported",
            )
        ids.add(str(case["id"]))
    return ids
