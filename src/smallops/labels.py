"""An output's labels: its top-level enum and Literal fields (say `category=spam`).

Graduation counts reviews per label, drift reports compare label distributions, and the
metadata content mode keeps the labels when it keeps nothing else; all read them from here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel


def class_fields(output: type[BaseModel] | None) -> dict[str, list[Any]]:
    """The top-level enum and Literal fields of an output model, with their values."""
    if output is None:
        return {}
    return enum_fields(output.model_json_schema())


def enum_fields(schema: dict[str, Any]) -> dict[str, list[Any]]:
    """The top-level enum fields of a JSON schema (as stored with each prompt version)."""
    defs = schema.get("$defs", {})
    fields = {}
    for name, prop in schema.get("properties", {}).items():
        for option in [prop, *prop.get("anyOf", [])]:
            if "$ref" in option:
                option = defs.get(option["$ref"].rsplit("/", 1)[-1], {})
            if "enum" in option:
                fields[name] = list(option["enum"])
                break
            if "const" in option:
                fields[name] = [option["const"]]
                break
    return fields


def classes_of(output: Any, fields: dict[str, list[Any]]) -> list[str]:
    """`field=value` for each class field of an output (a model or a dict)."""
    if output is None or not fields:
        return []
    classes = []
    for name in fields:
        value = output.get(name) if isinstance(output, dict) else getattr(output, name, None)
        if value is not None:
            classes.append(f"{name}={getattr(value, 'value', value)}")
    return classes


def labels(output: Any, fields: Iterable[str]) -> dict[str, Any] | None:
    """The output's labels (its enum and Literal fields, such as a category), without its free
    text: what drift reports need, kept by `metadata` and by `smallops prune`."""
    if output is None:
        return None
    if isinstance(output, BaseModel):
        output = output.model_dump(mode="json")
    if not isinstance(output, dict):
        return None
    kept = {name: output[name] for name in fields if name in output}
    return kept or None
