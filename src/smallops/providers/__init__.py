"""Providers by name: the built-in `openai`, `anthropic` and `fake`, plus named endpoints.

One instance per configuration, shared by every workflow that uses it, so connection pools are
shared too. A provider without a base_url goes where its SDK's variable (OPENAI_BASE_URL,
ANTHROPIC_BASE_URL) points, so that variable is part of its configuration.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path

from smallops.config import ProviderConfig, SecretSettings
from smallops.errors import ConfigError
from smallops.providers._sdk import BASE_URLS, resolve_base_url
from smallops.providers.base import Params, Provider, ProviderError, Reply
from smallops.providers.fake import FakeProvider, FakeReply, FakeRequest
from smallops.records import Usage

__all__ = [
    "FakeProvider",
    "FakeReply",
    "FakeRequest",
    "Params",
    "Provider",
    "ProviderError",
    "Reply",
    "Usage",
    "close_loop_clients",
    "resolve_provider",
]

_BUILTIN = {
    "openai": ProviderConfig("openai", "openai"),
    "anthropic": ProviderConfig("anthropic", "anthropic"),
    "fake": ProviderConfig("fake", "fake"),
}
_instances: dict[tuple[ProviderConfig, str | None, SecretSettings, Path | None], Provider] = {}
_lock = threading.Lock()


async def close_loop_clients(*others: Provider) -> None:
    """Close the running event loop's connections of every shared provider (and of `others`,
    providers made in code); call it at the end of a coroutine given to asyncio.run, so that no
    connection outlives its loop."""
    for provider in {*_instances.values(), *others}:
        await provider.aclose()


def resolve_provider(
    name: str,
    configured: Mapping[str, ProviderConfig],
    secrets: SecretSettings | None = None,
    root: Path | None = None,
) -> Provider:
    """The provider called `name` in `provider:model`: one of smallops.toml's [providers.NAME]
    tables (`configured`), or a built-in. `secrets` is how keys from a store are cached, and
    `root` the project folder (where `smallops status` reads how their fetches fare, and where
    a `command:` store runs)."""
    config = configured.get(name) or _BUILTIN.get(name)
    if config is None:
        known = sorted({*_BUILTIN, *configured})
        raise ConfigError(
            f"unknown provider {name!r}",
            hint=f"use one of {', '.join(known)}, or add [providers.{name}] to smallops.toml",
        )
    base_url = resolve_base_url(config.kind, config.base_url) if config.kind in BASE_URLS else None
    secrets = secrets or SecretSettings()
    key = (config, base_url, secrets, root)
    with _lock:
        if key not in _instances:
            _instances[key] = _build(config, secrets, root)
        return _instances[key]


def _build(config: ProviderConfig, secrets: SecretSettings, root: Path | None) -> Provider:
    """The provider; its key is not looked at until its first request."""
    if config.kind == "openai":
        from smallops.providers.openai import OpenAIProvider

        return OpenAIProvider(
            config.name,
            base_url=config.base_url,
            api_key=config.api_key,
            compatible=config.name != "openai",
            secrets=secrets,
            root=root,
        )
    if config.kind == "anthropic":
        from smallops.providers.anthropic import AnthropicProvider

        return AnthropicProvider(
            config.name,
            base_url=config.base_url,
            api_key=config.api_key,
            secrets=secrets,
            root=root,
        )
    return FakeProvider(name=config.name)
