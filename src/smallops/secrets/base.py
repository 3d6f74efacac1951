"""What every secret store has in common: a fetched value, a store error, the lookup by scheme.

Stores are looked up by scheme and imported on first use, so a store's client library is an
optional extra that only its users install.
"""

from __future__ import annotations

import importlib
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from smallops.errors import ConfigError
from smallops.secret_refs import STORES, SecretRef

#: Seconds the fetch under way may take ([secrets] fetch_timeout): a store gives its client
#: library connect and read timeouts of about this much. The cache gives up waiting after it
#: whatever the store does, so this only keeps a slow store from holding a thread for long.
FETCH_TIMEOUT: ContextVar[float] = ContextVar("smallops_fetch_timeout", default=5.0)
#: The project folder of the fetch under way, where relative paths are read from: a
#: `command:` runs there (None: the current directory).
PROJECT_ROOT: ContextVar[Path | None] = ContextVar("smallops_project_root", default=None)


@dataclass(frozen=True)
class Fetched:
    """A secret's value, with what the store says of it (never shown, never stored)."""

    value: str
    version: str | None = None  # the store's version id, where it has one
    updated_at: datetime | None = None  # when the store last changed it, where it knows


class SecretStoreError(Exception):
    """A fetch failed. The message names the reference and the problem, never a value.

    `unreachable` says the store could not be asked (down, timed out): a cached value keeps
    serving then. Otherwise the store answered no (not found, denied, malformed) and a cached
    value is served only until it expires.
    """

    def __init__(self, message: str, *, unreachable: bool = False, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.unreachable = unreachable
        self.hint = hint


class Store(Protocol):
    """One secret store. `fetch` may block (a network call, a command): it runs on a refresh,
    never while a lock other callers wait on is held longer than that one fetch."""

    def fetch(self, ref: SecretRef) -> Fetched: ...


def store_for(scheme: str) -> Store:
    """The store for a scheme, its module imported now; a ConfigError naming the extra to
    install when its client library is missing."""
    module_name, _, class_name = STORES[scheme].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise  # a library the store imports at once: its own MissingExtraError is better
        raise ConfigError(
            f"this smallops has no {scheme}: store", hint="upgrade smallops"
        ) from None
    store: Store = getattr(module, class_name)()
    return store
