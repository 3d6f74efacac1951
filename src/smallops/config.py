"""Settings: smallops.toml plus the environment, resolved once and passed explicitly.

    [smallops]
    database_url = "sqlite:///.smallops/smallops.db"   # SMALLOPS_DATABASE_URL wins
    redis_url = "redis://localhost:6379/0"              # optional; SMALLOPS_REDIS_URL wins
    write_timeout = 10                                  # seconds; SMALLOPS_WRITE_TIMEOUT wins

    [providers.ollama]                                  # a named OpenAI-compatible endpoint
    kind = "openai"
    base_url = "http://localhost:11434/v1"
    api_key_env = "OLLAMA_API_KEY"                      # the variable's name, never the key

    [prices."ollama:llama3.1:8b-instruct-q4_K_M"]       # USD per million tokens
    input = 0.0
    output = 0.0

    [reviewers]                                         # who may log in to `smallops serve`
    ann = "scrypt$..."                                  # from `smallops review hash-password`

Secrets never live in this file: a provider names the environment variable holding its key.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smallops.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_FILE = "smallops.toml"
STATE_DIR = ".smallops"
DEFAULT_DATABASE_URL = f"sqlite:///{STATE_DIR}/smallops.db"
PROVIDER_KINDS = ("openai", "anthropic", "fake")


@dataclass(frozen=True)
class ProviderConfig:
    """A named endpoint: its wire format, base URL and the variable that holds its key."""

    name: str
    kind: str
    base_url: str | None = None
    api_key_env: str | None = None


@dataclass(frozen=True)
class Price:
    """USD per million tokens, from smallops.toml."""

    input: float
    output: float
    cached_input: float | None = None


@dataclass(frozen=True)
class Settings:
    """Everything configurable, for one project."""

    root: Path
    database_url: str = DEFAULT_DATABASE_URL
    providers: dict[str, ProviderConfig] = field(default_factory=dict)
    prices: dict[str, Price] = field(default_factory=dict)
    reviewers: dict[str, str] = field(default_factory=dict)  # name -> password hash
    redis_url: str | None = None  # shared rate limits and breakers across processes
    write_timeout: float = 10.0  # seconds a log write may take before the spool takes over

    @property
    def key_variables(self) -> tuple[str, ...]:
        """The environment variables that hold provider keys: their values are redacted from
        everything recorded, whatever the variables are called."""
        named = (p.api_key_env for p in self.providers.values() if p.api_key_env)
        return ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", *named)

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    @property
    def spool_dir(self) -> Path:
        return self.state_dir / "spool"

    @classmethod
    def load(cls, root: Path | None = None, env: dict[str, str] | None = None) -> Settings:
        """Read `root/smallops.toml` (if any) and apply the environment on top."""
        env = dict(os.environ if env is None else env)
        root = (root or find_project_root() or Path.cwd()).resolve()
        data = _read_toml(root / CONFIG_FILE)
        section = _table(data, "smallops", CONFIG_FILE)
        url = (
            env.get("SMALLOPS_DATABASE_URL") or section.get("database_url") or DEFAULT_DATABASE_URL
        )
        return cls(
            root=root,
            database_url=str(url),
            providers=_providers(_table(data, "providers", CONFIG_FILE)),
            prices=_prices(_table(data, "prices", CONFIG_FILE)),
            reviewers=_reviewers(_table(data, "reviewers", CONFIG_FILE)),
            redis_url=env.get("SMALLOPS_REDIS_URL") or section.get("redis_url") or None,
            write_timeout=_seconds(
                env.get("SMALLOPS_WRITE_TIMEOUT") or section.get("write_timeout"),
                "SMALLOPS_WRITE_TIMEOUT" if env.get("SMALLOPS_WRITE_TIMEOUT") else "write_timeout",
                10.0,
            ),
        )


def _seconds(value: Any, where: str, default: float) -> float:
    """A positive, finite number of seconds, or the default when not given."""
    if value is None or value == "":
        return default
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = float("nan")
    if isinstance(value, bool) or not 0 < seconds < 86_400:
        raise ConfigError(
            f"{where} = {value!r} is not a number of seconds",
            hint="use a positive number, e.g. 10",
        )
    return seconds


def find_project_root(start: Path | None = None) -> Path | None:
    """The nearest folder at or above `start` that holds smallops.toml."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / CONFIG_FILE).is_file():
            return folder
    return None


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        with path.open("rb") as handle:
            data: dict[str, Any] = tomllib.load(handle)
            return data
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None


def _table(data: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{key}] in {where} must be a table")
    return value


def _providers(table: dict[str, Any]) -> dict[str, ProviderConfig]:
    providers = {}
    for name, spec in table.items():
        if not isinstance(spec, dict):
            raise ConfigError(f"[providers.{name}] in {CONFIG_FILE} must be a table")
        if "api_key" in spec:
            raise ConfigError(
                f"[providers.{name}] holds an api_key: keys never go in {CONFIG_FILE}",
                hint='name the environment variable instead: api_key_env = "MY_KEY"',
            )
        kind = spec.get("kind", name)
        if kind not in PROVIDER_KINDS:
            raise ConfigError(
                f"[providers.{name}] has kind {kind!r}",
                hint=f"kind is one of: {', '.join(PROVIDER_KINDS)}",
            )
        providers[name] = ProviderConfig(
            name=name, kind=kind, base_url=spec.get("base_url"), api_key_env=spec.get("api_key_env")
        )
    return providers


def _reviewers(table: dict[str, Any]) -> dict[str, str]:
    reviewers = {}
    for name, value in table.items():
        if not isinstance(value, str) or not value.startswith("scrypt$"):
            raise ConfigError(
                f"[reviewers] {name} in {CONFIG_FILE} must be a password hash",
                hint="make one with `smallops review hash-password`; never store the password",
            )
        reviewers[name] = value
    return reviewers


def _prices(table: dict[str, Any]) -> dict[str, Price]:
    prices = {}
    for model, spec in table.items():
        try:
            prices[model] = Price(
                input=float(spec["input"]),
                output=float(spec["output"]),
                cached_input=float(spec["cached_input"]) if "cached_input" in spec else None,
            )
        except (KeyError, TypeError, ValueError):
            raise ConfigError(
                f'[prices."{model}"] in {CONFIG_FILE} needs numbers for input and output',
                hint="USD per million tokens, e.g. input = 0.15, output = 0.60",
            ) from None
    return prices
