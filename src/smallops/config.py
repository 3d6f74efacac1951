"""Settings: smallops.toml plus the environment, resolved once and passed explicitly.

    [smallops]
    database_url = "sqlite:///.smallops/smallops.db"   # SMALLOPS_DATABASE_URL wins
    redis_url = "redis://localhost:6379/0"              # optional; SMALLOPS_REDIS_URL wins
    write_timeout = 10                                  # seconds; SMALLOPS_WRITE_TIMEOUT wins

    [providers.ollama]                                  # a named OpenAI-compatible endpoint
    kind = "openai"
    base_url = "http://localhost:11434/v1"
    api_key = "env:OLLAMA_API_KEY"                      # where the key lives, never the key
                                                        # (vault:, aws-sm:, op://, command:...)
    [secrets]                                           # caching of keys from a secret store
    cache_ttl = 300                                     # seconds a fetched key is used as is
    max_stale = 3600                                    # seconds more it serves, store down

    [prices."ollama:llama3.1:8b-instruct-q4_K_M"]       # USD per million tokens
    input = 0.0
    output = 0.0

    [telemetry]                                         # OpenTelemetry export; OTEL_* win
    otlp_endpoint = "http://localhost:4318"             # headers: OTEL_EXPORTER_OTLP_HEADERS
    capture_content = false

    [reviewers]                                         # who may log in to `smallops serve`
    ann = "scrypt$..."                                  # from `smallops review hash-password`

    [alerts]                                            # see smallops/alert_config.py

    [gateway.routes."gpt-fast"]                         # see smallops/gateway_config.py
    model = "openai:gpt-4o-mini-2024-07-18"

Secrets never live in this file: a provider names where its key lives (smallops.secret_refs).
A table or key smallops does not know is refused (naming the closest known one), so that a typo
is never silently ignored.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from smallops.alert_config import AlertSettings, parse_alerts
from smallops.errors import ConfigError
from smallops.gateway_config import GatewaySettings, parse_gateway
from smallops.records import Price
from smallops.secret_refs import SecretRef

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_FILE = "smallops.toml"
STATE_DIR = ".smallops"
DEFAULT_DATABASE_URL = f"sqlite:///{STATE_DIR}/smallops.db"
PROVIDER_KINDS = ("openai", "anthropic", "fake")
#: What smallops.toml may hold: its tables, and the keys of [smallops], of each
#: [providers.NAME] and of each [prices."MODEL"] ([reviewers] maps any name to a hash).
TABLES = (
    "smallops",
    "providers",
    "prices",
    "reviewers",
    "alerts",
    "secrets",
    "telemetry",
    "gateway",
)
SMALLOPS_KEYS = ("database_url", "redis_url", "write_timeout")
PROVIDER_KEYS = ("kind", "base_url", "api_key", "api_key_env")
SECRETS_KEYS = ("cache_ttl", "max_stale", "fetch_timeout")
#: The most each [secrets] setting may be, in seconds: a year of caching, an hour's wait for a
#: fetch (beyond what a thread's wait or a timestamp can hold, a call failed with a traceback).
SECRETS_MAX = {"cache_ttl": 365 * 86400.0, "max_stale": 365 * 86400.0, "fetch_timeout": 3600.0}
TELEMETRY_KEYS = ("otlp_endpoint", "capture_content")
PRICE_KEYS = ("input", "output", "cached_input")
REDIS_SCHEMES = ("redis", "rediss")  # what both redis-py and the `limits` library accept


def own_key_variable(provider: str) -> str:
    """The variable a named OpenAI-compatible server's key is read from when smallops.toml
    names none: its own (`[providers.ollama]`: OLLAMA_API_KEY), never OPENAI_API_KEY, which
    would hand OpenAI's key to whoever runs that server."""
    return re.sub(r"[^A-Za-z0-9]", "_", provider).upper() + "_API_KEY"


@dataclass(frozen=True)
class ProviderConfig:
    """A named endpoint: its wire format, base URL and where its key lives.

    `api_key_env = "NAME"` is the older spelling of `api_key = "env:NAME"`; both end up here as
    `api_key`, which is None for the SDK's own variable (OPENAI_API_KEY, ANTHROPIC_API_KEY).
    """

    name: str
    kind: str
    base_url: str | None = None
    api_key: SecretRef | None = None

    @property
    def api_key_env(self) -> str | None:
        """The environment variable holding the key, when the key lives in one."""
        return self.api_key.path if self.api_key and self.api_key.scheme == "env" else None


@dataclass(frozen=True)
class SecretSettings:
    """How keys fetched from a secret store are cached: the [secrets] table."""

    cache_ttl: float = 300.0  # seconds a fetched key is used without asking the store again
    max_stale: float = 3600.0  # seconds past that it still serves while the store is down
    fetch_timeout: float = 5.0  # seconds one fetch may take


@dataclass(frozen=True)
class Telemetry:
    """The [telemetry] table: OpenTelemetry export when the OTEL_* variables are not set.

    The collector's headers (an API key, often) are never written here: they come from
    OTEL_EXPORTER_OTLP_HEADERS."""

    otlp_endpoint: str | None = None  # the OTLP/HTTP base URL, as OTEL_EXPORTER_OTLP_ENDPOINT
    capture_content: bool = False  # as OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT


@dataclass(frozen=True)
class LogTarget:
    """Where the log lives, as plain values: all that storage needs from the settings."""

    url: str  # as written; storage makes a relative SQLite path relative to `root`
    root: Path
    spool_dir: Path  # where records wait while the database does not answer
    write_timeout: float
    key_variables: tuple[str, ...]  # their values are redacted from everything written
    source: str = "the database URL"  # where the URL was set, for error messages
    telemetry: Telemetry = Telemetry()  # where committed runs go as spans, if anywhere


def evals_file(root: Path, workflow: str) -> Path:
    """A workflow's eval set in a project: evals/<name>.jsonl (the layout `smallops init`
    writes)."""
    return root / "evals" / f"{workflow.replace('-', '_')}.jsonl"


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
    alerts: AlertSettings = field(default_factory=AlertSettings)  # the [alerts] table
    secrets: SecretSettings = field(default_factory=SecretSettings)  # the [secrets] table
    telemetry: Telemetry = field(default_factory=Telemetry)  # the [telemetry] table
    gateway: GatewaySettings = field(default_factory=GatewaySettings)  # the [gateway] table
    # where each setting was read (an environment variable, or a key of smallops.toml), so that
    # an error names the place to fix it
    sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def key_variables(self) -> tuple[str, ...]:
        """The environment variables that hold provider keys: their values are redacted from
        everything recorded, whatever the variables are called."""
        named = (
            p.api_key_env or (own_key_variable(p.name) if p.kind == "openai" else None)
            for p in self.providers.values()
        )
        return ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", *(name for name in named if name))

    def __post_init__(self) -> None:
        if not isinstance(self.database_url, str) or not self.database_url.strip():
            raise ConfigError(
                f"{self.source('database_url')} must be a database URL string",
                hint='e.g. "sqlite:///.smallops/smallops.db" or "postgresql://user@host/dbname"',
            )
        if self.redis_url is not None:
            check_redis_url(self.redis_url, self.source("redis_url"))

    def source(self, key: str) -> str:
        """Where the setting `key` was read, for error messages."""
        return self.sources.get(key, key)

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    @property
    def spool_dir(self) -> Path:
        return self.state_dir / "spool"

    @property
    def log(self) -> LogTarget:
        """The log database and its spool, resolved from these settings."""
        return LogTarget(
            url=self.database_url,
            root=self.root,
            spool_dir=self.spool_dir,
            write_timeout=self.write_timeout,
            key_variables=self.key_variables,
            source=self.source("database_url"),
            telemetry=self.telemetry,
        )

    @classmethod
    def load(cls, root: Path | None = None, env: dict[str, str] | None = None) -> Settings:
        """Read `root/smallops.toml` (if any) and apply the environment on top."""
        env = dict(os.environ if env is None else env)
        root = (root or find_project_root() or Path.cwd()).resolve()
        data = _read_toml(root / CONFIG_FILE)
        _check_tables(data)
        section = _table(data, "smallops", CONFIG_FILE)
        _check_keys(section, SMALLOPS_KEYS, "[smallops]")
        sources: dict[str, str] = {}

        def setting(key: str, variable: str, default: str | None) -> Any:
            """The environment variable wins over the key of [smallops]; note which was used."""
            if env.get(variable):
                sources[key] = variable
                return env[variable]
            sources[key] = f"{key} in {CONFIG_FILE}"
            given = section.get(key)
            return default if given in (None, "") else given

        providers = _providers(_table(data, "providers", CONFIG_FILE))
        return cls(
            root=root,
            database_url=setting("database_url", "SMALLOPS_DATABASE_URL", DEFAULT_DATABASE_URL),
            providers=providers,
            prices=_prices(_table(data, "prices", CONFIG_FILE)),
            reviewers=_reviewers(_table(data, "reviewers", CONFIG_FILE)),
            redis_url=setting("redis_url", "SMALLOPS_REDIS_URL", None),
            write_timeout=_seconds(
                setting("write_timeout", "SMALLOPS_WRITE_TIMEOUT", None), sources, 10.0
            ),
            alerts=parse_alerts(_table(data, "alerts", CONFIG_FILE)),
            secrets=_secrets(_table(data, "secrets", CONFIG_FILE)),
            telemetry=_telemetry(_table(data, "telemetry", CONFIG_FILE)),
            gateway=parse_gateway(
                _table(data, "gateway", CONFIG_FILE), {n: p.kind for n, p in providers.items()}
            ),
            sources=sources,
        )


def _seconds(value: Any, sources: dict[str, str], default: float) -> float:
    """A positive, finite number of seconds, or the default when not given."""
    if value is None or value == "":
        return default
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = float("nan")
    if isinstance(value, bool) or not 0 < seconds < 86_400:
        raise ConfigError(
            f"{sources['write_timeout']} = {value!r} is not a number of seconds",
            hint="use a positive number, e.g. 10",
        )
    return seconds


def check_redis_url(url: Any, source: str) -> None:
    """ConfigError naming `source` unless `url` is a redis:// or rediss:// URL with a host.

    The message never repeats the URL: it may hold a password.
    """
    hint = "use redis://host:6379/0 (rediss:// for TLS)"
    if not isinstance(url, str):
        raise ConfigError(f"{source} must be a Redis URL string", hint=hint)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        raise ConfigError(f"{source} is not a valid URL", hint=hint) from None
    if parts.scheme not in REDIS_SCHEMES:
        shown = f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
        raise ConfigError(f"{source} is not a Redis URL ({shown})", hint=hint)
    if not parts.hostname:
        raise ConfigError(f"{source} names no Redis host", hint=hint)


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
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path} is not UTF-8 text (byte {exc.start})", hint="save it as UTF-8 (TOML is)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None


def _check_tables(data: dict[str, Any]) -> None:
    """ConfigError for a table (or a key outside any table) smallops.toml may not hold."""
    tables = tuple(f"[{name}]" for name in TABLES)
    for name, value in data.items():
        if name in TABLES:
            continue
        if not isinstance(value, dict):
            raise ConfigError(
                f"{CONFIG_FILE} has a key {name!r} outside any table",
                hint="put it under [smallops]"
                if name in SMALLOPS_KEYS
                else _known(f"[{name}]", tables, "tables"),
            )
        raise ConfigError(
            f"{CONFIG_FILE} has an unknown table [{name}]",
            hint=_known(f"[{name}]", tables, "tables"),
        )


def _check_keys(table: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    """ConfigError naming the first key of `table` that is not one of `known`."""
    for key in table:
        if key not in known:
            raise ConfigError(
                f"{where} in {CONFIG_FILE} has an unknown key {key!r}",
                hint=_known(key, known, "keys"),
            )


def _known(given: str, known: tuple[str, ...], what: str) -> str:
    """The hint for an unknown name: the closest known one, and all of them."""
    close = difflib.get_close_matches(given, known, n=1)
    every = f"known {what}: {', '.join(known)}"
    return f"did you mean {close[0]}? ({every})" if close else every


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
        where = f"[providers.{name}]"
        _check_keys(spec, PROVIDER_KEYS, where)
        kind = spec.get("kind", name)
        if not isinstance(kind, str) or kind not in PROVIDER_KINDS:
            raise ConfigError(
                f"{where} in {CONFIG_FILE} has kind {kind!r}",
                hint=f"kind is one of: {', '.join(PROVIDER_KINDS)}",
            )
        base_url = spec.get("base_url")
        if base_url is not None and not _is_http_url(base_url):
            raise ConfigError(
                f"{where} base_url in {CONFIG_FILE} must be an http:// or https:// URL",
                hint='e.g. base_url = "http://localhost:11434/v1"',
            )
        providers[name] = ProviderConfig(
            name=name, kind=kind, base_url=base_url, api_key=_api_key(spec, where)
        )
    return providers


def _api_key(spec: dict[str, Any], where: str) -> SecretRef | None:
    """Where a provider's key lives: `api_key` (a reference) or `api_key_env` (a variable)."""
    if "api_key" in spec and "api_key_env" in spec:
        raise ConfigError(
            f"{where} in {CONFIG_FILE} has both api_key and api_key_env",
            hint='keep one: api_key = "env:NAME" says the same as api_key_env = "NAME"',
        )
    api_key_env = spec.get("api_key_env")
    if api_key_env is not None:
        if not isinstance(api_key_env, str) or not api_key_env.strip():
            raise ConfigError(
                f"{where} api_key_env in {CONFIG_FILE} must name an environment variable",
                hint='e.g. api_key_env = "OLLAMA_API_KEY" (its name, never the key)',
            )
        return SecretRef.parse(
            f"env:{api_key_env.strip()}", f"{where} api_key_env in {CONFIG_FILE}"
        )
    reference = spec.get("api_key")
    if reference is None:
        return None
    if not isinstance(reference, str):
        raise ConfigError(
            f"{where} api_key in {CONFIG_FILE} must be a secret reference string",
            hint='e.g. api_key = "env:OPENAI_API_KEY" or "vault:secret/openai#api_key"',
        )
    return SecretRef.parse(reference, f"{where} api_key in {CONFIG_FILE}")


def _telemetry(table: dict[str, Any]) -> Telemetry:
    _check_keys(table, TELEMETRY_KEYS, "[telemetry]")
    endpoint = table.get("otlp_endpoint")
    if endpoint is not None:
        if not _is_http_url(endpoint):
            raise ConfigError(
                f"[telemetry] otlp_endpoint in {CONFIG_FILE} must be an http:// or https:// URL",
                hint='the collector\'s OTLP/HTTP address, e.g. "http://localhost:4318"',
            )
        if urlsplit(endpoint).password is not None:
            raise ConfigError(
                f"[telemetry] otlp_endpoint in {CONFIG_FILE} holds a password",
                hint="put the collector's credentials in OTEL_EXPORTER_OTLP_HEADERS instead",
            )
    content = table.get("capture_content", False)
    if not isinstance(content, bool):
        raise ConfigError(
            f"[telemetry] capture_content in {CONFIG_FILE} must be true or false",
            hint="true sends message content, never beyond each workflow's content mode",
        )
    return Telemetry(otlp_endpoint=endpoint, capture_content=content)


def _secrets(table: dict[str, Any]) -> SecretSettings:
    _check_keys(table, SECRETS_KEYS, "[secrets]")
    given = {}
    for key in SECRETS_KEYS:
        value = table.get(key)
        if value is None:
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value < 0
            or value > SECRETS_MAX[key]
            or (key == "fetch_timeout" and value == 0)
        ):
            raise ConfigError(
                f"[secrets] {key} in {CONFIG_FILE} must be a number of seconds, "
                f"at most {SECRETS_MAX[key]:,.0f}",
                hint="e.g. cache_ttl = 300, max_stale = 3600, fetch_timeout = 5",
            )
        given[key] = float(value)
    return SecretSettings(**given)


def _is_http_url(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


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
        given = spec if isinstance(spec, dict) else {}
        _check_keys(given, PRICE_KEYS, f'[prices."{model}"]')
        wanted = ("input", "output", *(("cached_input",) if "cached_input" in given else ()))
        if not all(_is_price(given.get(key)) for key in wanted):
            raise ConfigError(
                f'[prices."{model}"] in {CONFIG_FILE} needs numbers of zero or more (not NaN '
                f"or infinite) for {', '.join(wanted)}",
                hint="USD per million tokens, e.g. input = 0.15, output = 0.60",
            )
        prices[model] = Price(
            input=float(given["input"]),
            output=float(given["output"]),
            cached_input=float(given["cached_input"]) if "cached_input" in given else None,
        )
    return prices


def _is_price(value: Any) -> bool:
    """A finite number of zero or more (TOML's booleans are not numbers here)."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )
