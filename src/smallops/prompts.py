"""Prompt templates: plain-text files split into messages by `[system]`, `[user]`, `[assistant]`.

A template is Jinja2 with StrictUndefined, so a missing variable is an error before any spend.
The marker lines keep the file diffable and readable by someone who does not write Python:

    {# a comment #}
    [system]
    You triage inbound email.
    [user]
    Subject: {{ subject }}
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import meta

from smallops.errors import InputError, TemplateError

_MARKER = re.compile(r"^\[(system|user|assistant)\][ \t]*$", re.MULTILINE)
_COMMENT = re.compile(r"\{#.*?#\}", re.DOTALL)
_ENV = jinja2.Environment(
    undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False
)


@dataclass(frozen=True)
class _Part:
    role: str
    template: jinja2.Template


class Prompt:
    """A parsed prompt file: its text, its message parts and the variables it needs."""

    def __init__(self, text: str, *, source: str = "<prompt>") -> None:
        self.text = text
        self.source = source
        self._parts = _parse(text, source)
        self.variables = _variables(text, source)

    @classmethod
    def from_file(cls, path: Path) -> Prompt:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise TemplateError(
                f"prompt file {path} does not exist",
                hint="create it, or fix the prompt= path (it is relative to the workflow file)",
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise TemplateError(f"prompt file {path} cannot be read: {exc}") from None
        return cls(text, source=str(path))

    def render(self, inputs: dict[str, Any]) -> list[dict[str, str]]:
        """Render to chat messages; a missing input is an InputError naming it."""
        missing = [name for name in self.variables if name not in inputs]
        if missing:
            raise InputError(
                f"missing input {', '.join(repr(m) for m in missing)} for prompt {self.source}",
                hint=f"the prompt uses: {', '.join(sorted(self.variables))}",
            )
        messages = []
        for part in self._parts:
            try:
                content = part.template.render(inputs)
            except jinja2.UndefinedError as exc:
                raise InputError(f"prompt {self.source}: {exc.message}") from None
            except Exception as exc:  # a filter or expression failing on these inputs
                raise InputError(f"prompt {self.source} failed to render: {exc}") from None
            messages.append({"role": part.role, "content": content})
        return messages


def _parse(text: str, source: str) -> list[_Part]:
    markers = list(_MARKER.finditer(text))
    before = _COMMENT.sub("", text[: markers[0].start()] if markers else text)
    if not markers or before.strip():
        raise TemplateError(
            f"prompt {source} must start with a [system] or [user] line",
            hint="split the prompt into parts with lines that read exactly [system] and [user]",
        )
    parts = []
    for i, marker in enumerate(markers):
        end = markers[i + 1].start() if i + 1 < len(markers) else len(text)
        raw = text[marker.end() : end].removeprefix("\n")
        body = raw.strip("\n")
        line = text.count("\n", 0, marker.start()) + 2 + (len(raw) - len(raw.lstrip("\n")))
        try:
            template = _ENV.from_string(body)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(
                f"prompt {source}, line {line + (exc.lineno or 1) - 1}: {exc.message}"
            ) from None
        parts.append(_Part(marker.group(1), template))
    if not any(part.role == "user" for part in parts):
        raise TemplateError(f"prompt {source} has no [user] part", hint="add a [user] line")
    return parts


def _variables(text: str, source: str) -> frozenset[str]:
    try:
        return frozenset(meta.find_undeclared_variables(_ENV.parse(_MARKER.sub("", text))))
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"prompt {source}, line {exc.lineno}: {exc.message}") from None


def variables_in_order(text: str) -> list[str]:
    """The variables a template reads, in the order they first appear (for display: the order
    its author gave them); none for a template that does not parse."""
    return list(_variables_in_order(text))


@functools.lru_cache(maxsize=256)
def _variables_in_order(text: str) -> tuple[str, ...]:
    """Cached: every review page shows its inputs in this order, and a project has a handful of
    templates, so each is parsed once, not once per page."""
    try:
        tree = _ENV.parse(_MARKER.sub("", text))
    except jinja2.TemplateSyntaxError:
        return ()
    needed = meta.find_undeclared_variables(tree)
    names = (node.name for node in tree.find_all(jinja2.nodes.Name) if node.name in needed)
    return tuple(dict.fromkeys(names))


def prompt_version(template: str, schema: dict[str, Any] | None, model: str, params: Any) -> str:
    """A short content hash of everything that shapes the output."""
    payload = json.dumps(
        {"template": template, "schema": schema, "model": model, "params": params},
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:12]
