"""Fields in the order people wrote them, for display.

Postgres keeps JSON as JSONB, which hands objects back with their keys sorted (shortest first),
so inputs and outputs read from the log would come out scrambled. Before anyone reads them, the
CLI and the review page put inputs back in the prompt's order (the order its variables first
appear) and outputs in the output schema's order; keys neither knows follow as stored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel

from smallops.prompts import variables_in_order


def in_order(value: Any, names: Iterable[str]) -> Any:
    """An object with the keys in `names` first, in that order; anything else as it is."""
    if not isinstance(value, dict):
        return value
    first = {name: value[name] for name in names if name in value}
    return {**first, **{key: item for key, item in value.items() if key not in first}}


def input_names(template: str | None) -> list[str]:
    """The inputs' order: the prompt template's variables as they first appear."""
    return variables_in_order(template) if template else []


def output_names(
    model: type[BaseModel] | None, schema: Mapping[str, Any] | None = None
) -> list[str]:
    """The output's order: the model's fields, else the recorded JSON schema's (its `required`
    list keeps its order in JSONB, so it leads)."""
    if model is not None:
        return list(model.model_fields)
    if not schema:
        return []
    required = [str(name) for name in schema.get("required") or []]
    return required + [name for name in schema.get("properties") or {} if name not in required]


def item_in_order(item: dict[str, Any]) -> dict[str, Any]:
    """A review item (as the desk gives it, with its `fields` and `template`) in reading order."""
    names = [field["name"] for field in item.get("fields") or []]
    return {
        **item,
        "inputs": in_order(item.get("inputs"), input_names(item.get("template"))),
        "output": in_order(item.get("output"), names),
        "final_output": in_order(item.get("final_output"), names),
    }


def record_in_order(
    record: dict[str, Any], inputs: Iterable[str], outputs: Iterable[str]
) -> dict[str, Any]:
    """A run or review item (for --json) with the inputs, output and final output it has in
    reading order: `inputs` and `outputs` are the names, as input_names and output_names give."""
    names = {"inputs": list(inputs), "output": list(outputs)}
    names["final_output"] = names["output"]
    return {
        key: in_order(value, names[key]) if key in names else value for key, value in record.items()
    }
