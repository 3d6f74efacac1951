"""Model ids: `provider:model-id` parsing and the rules that tell a pinned version from an alias.

A moving alias (`gpt-4o-mini`, `claude-sonnet-4-5`, `*-latest`) can change under a workflow
without notice, so a workflow refuses it unless told `allow_unpinned=True`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from smallops.errors import ConfigError, UnpinnedModelError

_OPENAI_DATED = re.compile(r"-\d{4}-\d{2}-\d{2}\Z|-(0[1-9]|1[0-2])\d{2}\Z")
_ANTHROPIC_DATED = re.compile(r"-\d{8}\Z")
_ANTHROPIC_FAMILY = re.compile(r"claude-(?:opus|sonnet|haiku)-(\d+)(?:-(\d))?")

# Dated snapshots that aliases pointed to; used only to word the error message.
_KNOWN_SNAPSHOTS = {
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "gpt-4o": "gpt-4o-2024-11-20",
    "gpt-4.1": "gpt-4.1-2025-04-14",
    "gpt-4.1-mini": "gpt-4.1-mini-2025-04-14",
    "gpt-4.1-nano": "gpt-4.1-nano-2025-04-14",
    "gpt-5": "gpt-5-2025-08-07",
    "gpt-5-mini": "gpt-5-mini-2025-08-07",
    "gpt-5-nano": "gpt-5-nano-2025-08-07",
    "o3": "o3-2025-04-16",
    "o3-mini": "o3-mini-2025-01-31",
    "o4-mini": "o4-mini-2025-04-16",
    "claude-sonnet-4-5": "claude-sonnet-4-5-20250929",
    "claude-haiku-4-5": "claude-haiku-4-5-20251001",
    "claude-opus-4-5": "claude-opus-4-5-20251101",
    "claude-opus-4-1": "claude-opus-4-1-20250805",
    "claude-opus-4-0": "claude-opus-4-20250514",
    "claude-sonnet-4-0": "claude-sonnet-4-20250514",
    "claude-3-7-sonnet-latest": "claude-3-7-sonnet-20250219",
    "claude-3-5-sonnet-latest": "claude-3-5-sonnet-20241022",
    "claude-3-5-haiku-latest": "claude-3-5-haiku-20241022",
}


@dataclass(frozen=True)
class ModelRef:
    """A parsed `provider:model-id`."""

    provider: str
    model: str

    def __str__(self) -> str:
        return f"{self.provider}:{self.model}"


def parse_model(spec: str) -> ModelRef:
    """Split `provider:model-id`; the model id itself may contain colons (Ollama tags)."""
    provider, sep, model = spec.partition(":")
    if not sep or not provider or not model:
        raise ConfigError(
            f"model {spec!r} is not of the form provider:model-id",
            hint="write e.g. model='openai:gpt-4o-mini-2024-07-18'",
        )
    return ModelRef(provider.strip().lower(), model.strip())


def check_pinned(ref: ModelRef, kind: str) -> None:
    """Raise UnpinnedModelError when `ref` names a model that can move.

    `kind` is the wire format of the provider (openai, anthropic, fake), which decides the rules:
    a custom OpenAI-compatible endpoint only refuses `latest` tags, since its names are its own.
    """
    model = ref.model
    if kind == "fake":
        return
    if model.endswith("latest"):
        raise _unpinned(ref, "a '-latest' alias moves whenever the vendor ships")
    if kind == "openai" and ref.provider == "openai":
        if model.startswith("ft:") or _OPENAI_DATED.search(model):
            return
        raise _unpinned(ref, "OpenAI pins only dated snapshots")
    if kind == "anthropic":
        if _ANTHROPIC_DATED.search(model) or _is_pinned_dateless_claude(model):
            return
        raise _unpinned(
            ref, "Anthropic pins dated ids (and dateless ids from the 4.6 generation on)"
        )


def _is_pinned_dateless_claude(model: str) -> bool:
    """From Claude 4.6 on, Anthropic's dateless ids are themselves pinned snapshots."""
    match = _ANTHROPIC_FAMILY.fullmatch(model)
    if not match:
        return False
    major, minor = int(match.group(1)), int(match.group(2) or 0)
    return (major, minor) >= (4, 6)


def _unpinned(ref: ModelRef, why: str) -> UnpinnedModelError:
    suggestion = suggest_snapshot(ref.model)
    hint = (
        f"pin '{ref.provider}:{suggestion}' instead"
        if suggestion
        else "pin a dated snapshot from the vendor's model list"
    )
    return UnpinnedModelError(
        f"model '{ref}' is a moving alias: {why}",
        hint=f"{hint}, or pass allow_unpinned=True to accept drift",
    )


def suggest_snapshot(alias: str) -> str | None:
    """The dated snapshot an alias is known to point to, if any."""
    base = alias.removesuffix("-latest") if alias not in _KNOWN_SNAPSHOTS else alias
    return _KNOWN_SNAPSHOTS.get(alias) or _KNOWN_SNAPSHOTS.get(base)
