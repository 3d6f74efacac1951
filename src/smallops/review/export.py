"""The log becomes the eval set: reviewed items appended to a workflow's eval file."""

from __future__ import annotations

import json
from pathlib import Path

from smallops.errors import InputError
from smallops.jsonl import objects
from smallops.review.queue import ReviewQueue


def export_reviewed(queue: ReviewQueue, workflow: str, path: Path) -> tuple[int, int]:
    """Append approved (expected = the output) and corrected (expected = the correction) items.

    Ids are `review-<run id>`, so a second export adds only what is new; items whose content
    was pruned have nothing to replay and are skipped. Returns (added, kept). The file is
    written whole to a temporary file and renamed: never left half-written.
    """
    existing = _ids(path)
    cases = []
    kept = 0
    for state in ("approved", "corrected"):
        for item in queue.items(workflow, state=state, limit=1_000_000):
            case_id = f"review-{item['run_id']}"
            if case_id in existing or item["final_output"] is None or not item["inputs"]:
                kept += 1
                continue
            existing.add(case_id)
            cases.append(
                {
                    "id": case_id,
                    "input": item["inputs"],
                    "expected": item["final_output"],
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
    return len(cases), kept


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
