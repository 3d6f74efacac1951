"""The process-wide cache of keys fetched from secret stores.

Every provider key from a store comes through here, so that:

- a fetched key serves for `cache_ttl` seconds without asking the store again;
- a fetch is single-flight: however many callers (threads, or asyncio tasks through a worker
  thread) need a key at once, the store is asked once and they all wait for that answer;
- no caller waits longer than `fetch_timeout`: the fetch runs in a thread of its own, and a
  store that hangs is given up on (as unreachable) while that thread ends by itself;
- while the store is unreachable, the cached key keeps serving until `cache_ttl + max_stale`
  after its last good fetch, callers no longer waiting on it: the store is asked again in the
  background, every RETRY_INTERVAL seconds at most. A store that answers no (no such secret,
  access denied) ends the serving of an expired key at once;
- after a 401, `refetch` asks the store once more, however many calls saw the same key refused;
- every value is given to the redactor the moment it arrives, and how each reference fares
  (never its value) is written where `smallops status` reads it (smallops.secrets.health).
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from smallops.config import STATE_DIR, SecretSettings
from smallops.errors import SmallopsError
from smallops.redact import MIN_SECRET, Redactor, register
from smallops.secret_refs import SecretRef
from smallops.secrets.base import (
    FETCH_TIMEOUT,
    PROJECT_ROOT,
    Fetched,
    SecretStoreError,
    Store,
    store_for,
)
from smallops.secrets.health import health_folder, write_health

#: Seconds between two fetches while a store fails (at most cache_ttl): often enough to notice
#: its return soon, seldom enough that a store that hangs costs a thread now and then only.
RETRY_INTERVAL = 10.0
#: A fetch still running this long after its timeout is abandoned: the next caller starts
#: another (its thread, if it ever ends, changes nothing a newer fetch has settled).
ABANDON_AFTER = 60.0
#: Longer than any API key or token: a value this long is some other document.
MAX_LENGTH = 16_384


@dataclass
class _Flight:
    """One fetch under way, which every caller who needs the key meanwhile waits for."""

    seq: int
    started: float  # time.monotonic()
    timeout: float
    done: threading.Event = field(default_factory=threading.Event)
    fetched: Fetched | None = None
    error: SecretStoreError | None = None

    def left(self) -> float:
        return max(0.0, self.started + self.timeout - time.monotonic())


@dataclass
class _Entry:
    """What the cache knows of one reference."""

    ref: SecretRef
    root: Path | None  # the project it is fetched for: a relative command runs there
    fetched: Fetched | None = None
    fetched_at: float = 0.0  # monotonic time of the last good fetch
    ok_wall: float | None = None  # ... as epoch seconds, for status
    applied: int = 0  # the flight whose value is held: an older one never overwrites it
    fetches: int = 0  # good fetches, for status
    flight: _Flight | None = None
    error: SecretStoreError | None = None  # the last fetch's failure; None after a good one
    failed_at: float = 0.0  # monotonic
    failed_wall: float | None = None
    stale_since: float | None = None  # epoch seconds: serving the cached key, store unreachable
    confirmed: str | None = None  # a refused key that the store, asked again, still gives
    confirmed_at: float = 0.0
    policy: SecretSettings = field(default_factory=SecretSettings)

    @property
    def folder(self) -> Path | None:
        """Where `status` reads how this reference fares: the project's .smallops/secrets."""
        return health_folder(self.root / STATE_DIR) if self.root is not None else None


class SecretCache:
    """Fetched secrets by reference and project, for this process. Use the module's `cache`.

    `root`, the project folder, keeps projects apart (`command:./bin/key` is not the same
    program in two of them) and says where each reference's health is written."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._entries: dict[tuple[SecretRef, Path | None], _Entry] = {}
        self._stores: dict[str, Store] = {}
        self._seq = 0

    def peek(self, ref: SecretRef, policy: SecretSettings, root: Path | None = None) -> str | None:
        """The key if it can be used now without waiting on the store (fresh, or stale while
        the store is unreachable); None when it must be fetched first. Never blocks."""
        with self._lock:
            entry = self._entries.get((ref, root))
            if entry is None:
                return None
            fetched = self._servable(entry, policy, time.monotonic())
            return fetched.value if fetched is not None else None

    def get(self, ref: SecretRef, policy: SecretSettings, root: Path | None = None) -> Fetched:
        """The key, fetched if need be (blocking up to fetch_timeout); SecretStoreError when
        the store cannot give one and no cached key may serve."""
        store = self._store(ref.scheme)  # a missing client library: ConfigError, at once
        with self._lock:
            entry = self._entry(ref, policy, root)
            now = time.monotonic()
            fetched = self._servable(entry, policy, now)
            if fetched is not None:
                return fetched
            flight = self._flight(entry, store, policy, now)
            if flight is None:
                raise self._unavailable(entry, policy, now)
        self._wait(entry, flight)
        with self._lock:
            if flight.fetched is not None:
                return flight.fetched
            now = time.monotonic()
            fetched = self._servable(entry, policy, now)
            if fetched is not None:
                return fetched
            raise self._unavailable(entry, policy, now)

    def refetch(
        self,
        ref: SecretRef,
        rejected: str,
        policy: SecretSettings,
        root: Path | None = None,
    ) -> Fetched | None:
        """After the provider refused the key `rejected`: the key fetched again, or None when
        the store still gives the same one; SecretStoreError when it gave none (down, denied).
        One fetch serves every call that saw the same key refused; a key confirmed unchanged,
        or a store that just failed, is not asked again for RETRY_INTERVAL, so a revoked key
        does not make every call ask (or wait on) the store."""
        store = self._store(ref.scheme)
        with self._lock:
            entry = self._entry(ref, policy, root)
            now = time.monotonic()
            if entry.fetched is not None and entry.fetched.value != rejected:
                return entry.fetched  # another call already fetched the new key
            running = entry.flight is not None and not self._abandoned(entry.flight, now)
            if (
                not running
                and entry.confirmed == rejected
                and now < entry.confirmed_at + _retry(policy)
            ):
                return None
            if not running and entry.error is not None and now < entry.failed_at + _retry(policy):
                raise self._unavailable(entry, policy, now)  # asked moments ago: no call waits
            flight = self._flight(entry, store, policy, now, force=True)
            assert flight is not None
        self._wait(entry, flight)
        with self._lock:
            fetched = flight.fetched
            if fetched is None:
                error = flight.error or entry.error
                message = error.message if error else "the store did not answer"
                raise SecretStoreError(
                    _naming(ref, message), unreachable=error is None or error.unreachable
                )
            if fetched.value == rejected:
                entry.confirmed, entry.confirmed_at = rejected, time.monotonic()
                return None
            return fetched

    def forked(self) -> None:
        """In a child process just forked: fetches under way belong to threads the child does
        not have, and a lock may have been held at the fork; the cached keys stay good."""
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        for entry in self._entries.values():
            entry.flight = None

    def reset(self) -> None:
        """Forget every cached key (between tests); fetches under way end unheeded."""
        with self._lock:
            self._entries.clear()
            self._stores.clear()

    # -- inside the lock -----------------------------------------------------------------------

    def _entry(self, ref: SecretRef, policy: SecretSettings, root: Path | None) -> _Entry:
        entry = self._entries.get((ref, root))
        if entry is None:
            entry = self._entries[ref, root] = _Entry(ref, root)
        entry.policy = policy
        return entry

    def _servable(self, entry: _Entry, policy: SecretSettings, now: float) -> Fetched | None:
        """The cached key if it may serve now: fresh, or stale within max_stale while the store
        is unreachable (asking it again in the background when a retry is due)."""
        if entry.fetched is None:
            return None
        age = now - entry.fetched_at
        if age < policy.cache_ttl:
            return entry.fetched
        if entry.stale_since is None or age >= policy.cache_ttl + policy.max_stale:
            return None
        idle = entry.flight is None or self._abandoned(entry.flight, now)
        store = self._stores.get(entry.ref.scheme)
        if idle and store is not None and now >= entry.failed_at + _retry(policy):
            self._launch(entry, store, policy, now)
        return entry.fetched

    def _flight(
        self,
        entry: _Entry,
        store: Store,
        policy: SecretSettings,
        now: float,
        *,
        force: bool = False,
    ) -> _Flight | None:
        """The fetch to wait for: the one under way, else a new one; None while the last fetch
        failed less than a retry interval ago (callers then learn its failure at once)."""
        flight = entry.flight
        if flight is not None and not self._abandoned(flight, now):
            return flight
        if not force and entry.error is not None and now < entry.failed_at + _retry(policy):
            return None
        return self._launch(entry, store, policy, now)

    def _launch(self, entry: _Entry, store: Store, policy: SecretSettings, now: float) -> _Flight:
        self._seq += 1
        flight = entry.flight = _Flight(self._seq, now, policy.fetch_timeout)
        threading.Thread(
            target=self._fly,
            args=(entry, flight, store, policy),
            name="smallops-secret-fetch",
            daemon=True,
        ).start()
        return flight

    @staticmethod
    def _abandoned(flight: _Flight, now: float) -> bool:
        return now > flight.started + flight.timeout + ABANDON_AFTER

    def _failed(self, entry: _Entry, error: SecretStoreError, now: float) -> None:
        entry.error, entry.failed_at, entry.failed_wall = error, now, time.time()
        if not error.unreachable:
            entry.stale_since = None  # the store answered no: an expired key serves no more
        elif entry.fetched is not None and entry.stale_since is None:
            entry.stale_since = entry.failed_wall

    def _unavailable(self, entry: _Entry, policy: SecretSettings, now: float) -> SecretStoreError:
        """Why no key can be given, naming the reference; never a value."""
        error = entry.error or SecretStoreError(f"{entry.ref}: no key fetched yet")
        message = _naming(entry.ref, error.message)
        if error.unreachable and entry.fetched is not None and entry.stale_since is not None:
            since = datetime.fromtimestamp(entry.stale_since).strftime("%H:%M:%S")
            message = (
                f"{message} (unreachable since {since}; the cached key is older than "
                f"cache_ttl + max_stale, {policy.cache_ttl + policy.max_stale:g} s)"
            )
        return SecretStoreError(message, unreachable=error.unreachable, hint=error.hint)

    def _store(self, scheme: str) -> Store:
        with self._lock:
            store = self._stores.get(scheme)
        if store is None:
            store = store_for(scheme)  # imports its module: outside the lock
            with self._lock:
                store = self._stores.setdefault(scheme, store)
        return store

    # -- outside the lock ----------------------------------------------------------------------

    def _wait(self, entry: _Entry, flight: _Flight) -> None:
        """Wait for the fetch, up to its timeout; one that has not ended by then failed."""
        if flight.done.wait(flight.left()):
            return
        with self._lock:
            if flight.done.is_set() or entry.failed_at >= flight.started:
                return  # it ended meanwhile, or another caller already gave up on it
            seconds = f"{flight.timeout:g}"
            error = SecretStoreError(
                f"{entry.ref}: the store did not answer within {seconds} s",
                unreachable=True,
                hint="check that the store is up and reachable from here, or raise "
                "[secrets] fetch_timeout in smallops.toml",
            )
            if flight.seq > entry.applied:
                self._failed(entry, error, time.monotonic())
            reports = self._reports(entry)
        self._write(reports)

    def _fly(self, entry: _Entry, flight: _Flight, store: Store, policy: SecretSettings) -> None:
        """The fetch itself, in its own thread: its outcome is kept, then the waiters told."""
        FETCH_TIMEOUT.set(policy.fetch_timeout)
        PROJECT_ROOT.set(entry.root)
        fetched, error = None, None
        try:
            fetched = _checked(entry.ref, store.fetch(entry.ref))
        except SecretStoreError as exc:
            error = exc
        except SmallopsError as exc:  # a ConfigError: the store is configured wrong
            error = SecretStoreError(_naming(entry.ref, exc.message), hint=exc.hint or "")
        except Exception as exc:  # a store's bug, or a library's surprise: fail soft
            error = SecretStoreError(
                f"{entry.ref}: the store failed: {type(exc).__name__}", unreachable=True
            )
        error = _masked(error) if error is not None else None
        with self._lock:
            flight.fetched, flight.error = fetched, error
            if entry.flight is flight:
                entry.flight = None
            if flight.seq > entry.applied:
                if fetched is not None:
                    entry.fetched, entry.fetched_at = fetched, time.monotonic()
                    entry.ok_wall, entry.applied = time.time(), flight.seq
                    entry.error, entry.stale_since = None, None
                elif error is not None:
                    self._failed(entry, error, time.monotonic())
            if fetched is not None:
                entry.fetches += 1
            reports = self._reports(entry)
        flight.done.set()
        self._write(reports)

    def _reports(self, changed: _Entry) -> dict[Path, dict[str, dict[str, Any]]]:
        """The health of every reference of `changed`'s project, for its folder."""
        folder = changed.folder
        if folder is None:
            return {}
        health = {
            str(entry.ref): _health(entry)
            for entry in self._entries.values()
            if entry.root == changed.root
        }
        return {folder: health}

    def _write(self, reports: dict[Path, dict[str, dict[str, Any]]]) -> None:
        with self._write_lock:
            for folder, health in reports.items():
                write_health(folder, health)


def _retry(policy: SecretSettings) -> float:
    return min(RETRY_INTERVAL, policy.cache_ttl)


def _naming(ref: SecretRef, message: str) -> str:
    """A store's message, led by the reference unless it already names it."""
    return message if str(ref) in message else f"{ref}: {message}"


def _masked(error: SecretStoreError) -> SecretStoreError:
    """A store's error with the values of secret-named environment variables masked: a store
    may repeat its own credential (VAULT_TOKEN, DOPPLER_TOKEN, a helper's) in its error text."""
    redact = Redactor.from_environment()
    message, hint = redact(error.message) or "", redact(error.hint) or ""
    if (message, hint) == (error.message, error.hint):
        return error
    return SecretStoreError(message, unreachable=error.unreachable, hint=hint)


def _checked(ref: SecretRef, fetched: Any) -> Fetched:
    """The value as a provider can send it, or a SecretStoreError that never repeats it: one
    line of printable ASCII (an HTTP header carries it), surrounding whitespace removed (a
    newline saved with the key, `echo` style), neither absurdly long nor too short to be kept out
    of the log (the redactor leaves values under MIN_SECRET alone: they match ordinary text)."""
    if not isinstance(fetched, Fetched) or not isinstance(fetched.value, str):
        raise SecretStoreError(f"{ref}: the store gave no text")
    value = fetched.value.strip()
    if len(value) <= MAX_LENGTH:
        register(value)  # even one refused below is kept out of every record
    hint = "store the key alone, as one line of text"
    if not value:
        raise SecretStoreError(f"{ref}: the secret is empty", hint=hint)
    if len(value) < MIN_SECRET:
        raise SecretStoreError(
            f"{ref}: the secret is {len(value)} characters long, too short for an API key "
            "and too short to be kept out of the log",
            hint=f"store the key itself ({MIN_SECRET} characters or more), as one line of text",
        )
    if len(value) > MAX_LENGTH:
        raise SecretStoreError(
            f"{ref}: the secret is {len(value)} characters long, too long for an API key",
            hint=hint + " (or name its field: #field)",
        )
    if _json_object(value):  # a document of fields: sent whole, every field goes to the provider
        raise SecretStoreError(
            f"{ref}: the secret is a JSON object, not a key (sent whole, every field in it "
            "would go to the provider)",
            hint="store the key alone, or name the field that holds it (#field) where the store "
            "has fields",
        )
    bad = [c for c in value if not " " <= c <= "~"]
    if bad:
        what = (
            "a line break"
            if any(c in "\r\n" for c in bad)
            else "a NUL"
            if "\0" in bad
            else "a control character"
            if any(ord(c) < 128 for c in bad)
            else "non-ASCII characters"
        )
        raise SecretStoreError(
            f"{ref}: the secret holds {what}, which an HTTP header cannot carry", hint=hint
        )
    return replace(fetched, value=value) if value != fetched.value else fetched


def _json_object(value: str) -> bool:
    if not value.startswith("{"):
        return False
    try:
        return isinstance(json.loads(value), dict)
    except ValueError:
        return False


def _health(entry: _Entry) -> dict[str, Any]:
    """What status shows of a reference: times, version and problem; never the value."""
    policy, error = entry.policy, entry.error
    serving_until = None
    if entry.stale_since is not None and entry.ok_wall is not None:
        serving_until = entry.ok_wall + policy.cache_ttl + policy.max_stale
    fresh = entry.ok_wall is not None and time.time() < entry.ok_wall + policy.cache_ttl
    return {
        "reference": str(entry.ref),
        "store": entry.ref.scheme,
        "fetches": entry.fetches,
        "last_ok_at": entry.ok_wall,
        "version": entry.fetched.version if entry.fetched is not None else None,
        "stale_since": entry.stale_since,
        "serving_until": serving_until,
        "problem": Redactor()(error.message) if error is not None else None,
        "problem_at": entry.failed_wall if error is not None else None,
        # no key for calls now (status also counts a stale key past serving_until as none)
        "unavailable": error is not None and entry.stale_since is None and not fresh,
    }


#: This process's cache: every provider shares it.
cache = SecretCache()
os.register_at_fork(after_in_child=cache.forked)
