"""One module per kind of channel, each with `OPTIONS` (the keys of its table besides `kind`),
`check(config)` (ConfigError for a table it cannot use, read when smallops.toml is loaded) and
`build(config, env)` (the Channel, its secrets read from `env` only when it is built).

A module is imported only when a channel of its kind is configured.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import ModuleType

from smallops.alerts.kinds import ChannelKind
from smallops.alerts.model import Channel
from smallops.alerts.settings import ChannelConfig, _check_keys

MODULES: dict[ChannelKind, str] = {
    "pagerduty": "smallops.alerts.channels.pagerduty",
    "slack": "smallops.alerts.channels.slack",
    "webhook": "smallops.alerts.channels.webhook",
    "email": "smallops.alerts.channels.email",
}


def module_of(kind: ChannelKind) -> ModuleType:
    return importlib.import_module(MODULES[kind])


def check_channel(config: ChannelConfig) -> None:
    """ConfigError for a channel table its kind cannot use (unknown keys included)."""
    module = module_of(config.kind)
    _check_keys(config.options, tuple(module.OPTIONS), f"[alerts.channels.{config.name}]")
    module.check(config)


def build_channel(config: ChannelConfig, env: Mapping[str, str]) -> Channel:
    """The channel, ready to send; ConfigError if a secret it needs is not set."""
    channel: Channel = module_of(config.kind).build(config, env)
    return channel
