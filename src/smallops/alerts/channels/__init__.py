"""One module per kind of channel, each with `build(config, env)`: the Channel, its secrets read
from `env` when it is built (ConfigError naming the variable when one is not set). Its table's
keys are checked when smallops.toml is loaded (smallops.alert_config.CHANNEL_OPTIONS).

A module is imported only when a channel of its kind is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import ModuleType

from smallops.alert_config import DEFAULT_SECRET_ENV, ChannelConfig
from smallops.alerts.model import Channel
from smallops.kinds import ChannelKind
from smallops.redact import register

MODULES: dict[ChannelKind, str] = {
    "pagerduty": "smallops.alerts.channels.pagerduty",
    "slack": "smallops.alerts.channels.slack",
    "webhook": "smallops.alerts.channels.webhook",
    "email": "smallops.alerts.channels.email",
}


def module_of(kind: ChannelKind) -> ModuleType:
    return importlib.import_module(MODULES[kind])


def build_channel(config: ChannelConfig, env: Mapping[str, str]) -> Channel:
    """The channel, ready to send; ConfigError if a secret it needs is not set. Every secret it
    reads (each `*_env` option's value, a Slack webhook URL too) is registered with the
    redactor first, so no log, row or error this process writes can hold it."""
    for key, variable in {**DEFAULT_SECRET_ENV[config.kind], **config.options}.items():
        if key.endswith("_env") and isinstance(variable, str) and env.get(variable):
            register(env[variable])
    channel: Channel = module_of(config.kind).build(config, env)
    return channel
