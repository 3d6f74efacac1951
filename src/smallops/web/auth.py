"""Who is reviewing: password hashes, signed session cookies and CSRF tokens.

Standard library only, so `smallops review hash-password` works without the web extra.

- Passwords are stored as `scrypt$n$r$p$salt_b64$hash_b64` in smallops.toml's [reviewers]; a
  check always costs one scrypt, known name or not, so timing does not reveal who exists. The
  checks run on a pool of their own (`PasswordChecks`), which bounds the memory they hold.
- The review token (SMALLOPS_REVIEW_TOKEN) is an identity of its own, `token` or
  `token:<SMALLOPS_REVIEW_TOKEN_NAME>`: it never acts under a password reviewer's name, so the
  audit trail and the holds mean what they say.
- A session is a cookie `b64(name).expiry.hmac`, signed with HMAC-SHA256 under a key from
  SMALLOPS_SECRET_KEY or a random key kept in `.smallops/secret_key` (mode 0600), so sessions
  survive a restart and no session table is needed. The signature also covers the credential
  the reviewer logged in with, so a changed password, a removed reviewer or a new review token
  ends the sessions made with the old one.
- The CSRF token is an HMAC of the session cookie: per session, nothing stored, and useless to
  a page that cannot read this site's cookie.
- Logins are counted per name and per client address before any password is checked, in one
  atomic step, so even a burst of simultaneous tries gets no more checks than the limit; past it
  further tries are refused for a while, so guessing one is slow. A right password takes its own
  try back.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import getpass
import hashlib
import hmac
import os
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from smallops.errors import ConfigError, SmallopsError

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SESSION_COOKIE = "smallops_session"
SESSION_TTL = 12 * 3600  # seconds: a working day
TOKEN_ENV = "SMALLOPS_REVIEW_TOKEN"
TOKEN_NAME_ENV = "SMALLOPS_REVIEW_TOKEN_NAME"
TOKEN_IDENTITY = "token"  # who the review token acts as: `token`, or `token:<name>`
PASSWORD_THREADS = 2  # threads that check passwords; each keeps scrypt's 16 MiB
SECRET_ENV = "SMALLOPS_SECRET_KEY"
REVIEWER_ENV = "SMALLOPS_REVIEWER"
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
MAX_NAME = 200  # the width of the reviewer columns
_NAME = re.compile(r"[^\x00-\x1f\x7f]+")
_dummy_hash: list[str] = []
T = TypeVar("T")


class LoginError(SmallopsError):
    """The request does not say who is reviewing, or says it wrongly."""


class TooManyFailures(LoginError):
    """Too many failed logins for a name or from an address: wait, then try again."""

    def __init__(self, retry_after: float) -> None:
        minutes = max(1, -(-int(retry_after) // 60))
        super().__init__(
            "too many failed logins for this name or from this address",
            hint=f"try again in {minutes} minute{'s' if minutes > 1 else ''}",
        )
        self.retry_after = retry_after
        self.headers = {"Retry-After": str(int(retry_after) + 1)}  # whole seconds, rounded up


@dataclass
class LoginThrottle:
    """Login tries over a sliding window, per reviewer name and per client address.

    A try is counted before its password is checked, in the same locked step that checks the
    limits, so simultaneous tries cannot all slip under them; a right password then takes its
    try back. In memory: one `smallops serve` process holds the review desk, and a restart
    that forgets the count costs an attacker the restart. The per-name limit protects each
    account; the per-address limit slows one machine trying many names.
    """

    per_name: int = 5
    per_address: int = 20
    window: float = 900.0  # seconds
    _tries: dict[str, deque[float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def attempt(self, name: str | None, address: str | None, now: float | None = None) -> float:
        """Count one try for `name` and from `address`, or raise TooManyFailures (counting
        nothing) while either is at its limit. Returns the try's time, for `succeeded`."""
        now = time.monotonic() if now is None else now
        keys = [(_name_key(name), self.per_name), (_address_key(address), self.per_address)]
        keys = [(key, limit) for key, limit in keys if key]
        with self._lock:
            wait = max((self._wait(key, limit, now) for key, limit in keys), default=0.0)
            if wait > 0:
                raise TooManyFailures(wait)
            for key, _ in keys:
                self._tries.setdefault(key, deque()).append(now)
            if len(self._tries) > 10_000:  # forget quiet keys rather than grow without end
                quiet = now - self.window
                for key in [k for k, times in self._tries.items() if times[-1] < quiet]:
                    del self._tries[key]
        return now

    def succeeded(self, name: str | None, address: str | None, at: float) -> None:
        """The try counted `at` was right: it clears its name's count, and is taken back from
        its address's (whose other tries still count)."""
        with self._lock:
            self._tries.pop(_name_key(name), None)
            times = self._tries.get(_address_key(address))
            if times is not None and at in times:
                times.remove(at)

    def _wait(self, key: str, limit: int, now: float) -> float:
        """Seconds until `key` is under its limit again (0: it is); called under the lock."""
        times = self._tries.get(key)
        if not times:
            return 0.0
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) < limit:
            return 0.0
        return times[-limit] + self.window - now


def _name_key(name: str | None) -> str:
    cleaned = clean_name(name)
    return f"name:{cleaned.casefold()}" if cleaned else ""


def _address_key(address: str | None) -> str:
    return f"address:{address}" if address else ""


class PasswordChecks:
    """Where passwords are checked: a pool of PASSWORD_THREADS threads of its own.

    scrypt takes 16 MiB, and the C allocator keeps that memory in the thread that ran it; run in
    the server's shared worker threads, every login left 16 MiB in another one. Here the memory
    the checks hold is bounded by the size of this pool, whatever the traffic.
    """

    def __init__(self, threads: int = PASSWORD_THREADS) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="smallops-password")

    async def run(self, check: Callable[[], T]) -> T:
        return await asyncio.wrap_future(self._pool.submit(check))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """A salted scrypt hash for smallops.toml: `scrypt$n$r$p$salt_b64$hash_b64`."""
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, n, r, p)
    return "$".join(["scrypt", str(n), str(r), str(p), _b64(salt), _b64(digest)])


def verify_password(password: str, stored: str) -> bool:
    """True when `password` matches the stored hash; a malformed hash never matches."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest, validate=True)
        actual = _scrypt(password, base64.b64decode(salt, validate=True), int(n), int(r), int(p))
    except (ValueError, binascii.Error, MemoryError):
        return False
    return hmac.compare_digest(actual, expected)


def is_loopback(host: str) -> bool:
    """Whether a bind address only this machine can reach (login is then optional)."""
    return host.strip("[]").lower() in LOOPBACK


def default_reviewer(env: Mapping[str, str] | None = None) -> str:
    """Who reviews when there is no login: SMALLOPS_REVIEWER, or the OS user."""
    env = os.environ if env is None else env
    return (env.get(REVIEWER_ENV) or "").strip() or getpass.getuser()


def clean_name(name: str | None) -> str | None:
    """A reviewer name fit to record (trimmed, printable, short enough), or None."""
    name = (name or "").strip()
    return name if name and len(name) <= MAX_NAME and _NAME.fullmatch(name) else None


def load_secret_key(state_dir: Path, env: Mapping[str, str] | None = None) -> bytes:
    """The session signing key: SMALLOPS_SECRET_KEY, or one made once and kept in the project."""
    env = os.environ if env is None else env
    if env.get(SECRET_ENV):
        return env[SECRET_ENV].encode()
    path = state_dir / "secret_key"
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            pass
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(48))
    return path.read_text().strip().encode()


@dataclass(frozen=True)
class Sessions:
    """Signed session cookies and the CSRF token that goes with each."""

    key: bytes
    ttl: int = SESSION_TTL

    def issue(self, reviewer: str, now: float | None = None, credential: str = "") -> str:
        """A cookie for `reviewer`, bound to the credential they logged in with (its stored
        hash, or the review token): change or remove that and the cookie stops working."""
        name = _b64(reviewer.encode(), url=True)
        expires = str(int((time.time() if now is None else now) + self.ttl))
        return f"{name}.{expires}.{self._sign('session', f'{name}.{expires}', credential)}"

    def reviewer(
        self,
        cookie: str | None,
        now: float | None = None,
        credentials: Callable[[str], Iterable[str]] = lambda _: ("",),
    ) -> str | None:
        """The reviewer a cookie was issued to, if it is genuine, unexpired, and issued under
        one of the credentials that reviewer has now."""
        try:
            name, expires, signature = (cookie or "").split(".")
            fresh = int(expires) > (time.time() if now is None else now)
            reviewer = _unb64(name).decode()
        except (ValueError, binascii.Error, UnicodeDecodeError):
            return None
        genuine = any(
            hmac.compare_digest(signature, self._sign("session", f"{name}.{expires}", credential))
            for credential in credentials(reviewer)
        )
        return reviewer if fresh and genuine else None

    def csrf_token(self, cookie: str) -> str:
        return self._sign("csrf", cookie)

    def check_csrf(self, cookie: str | None, token: str | None) -> bool:
        return bool(cookie and token) and hmac.compare_digest(
            str(token), self.csrf_token(str(cookie))
        )

    def _sign(self, purpose: str, text: str, credential: str = "") -> str:
        message = f"{purpose}:{text}\x00{credential}" if credential else f"{purpose}:{text}"
        digest = hmac.new(self.key, message.encode(), hashlib.sha256).digest()
        return _b64(digest, url=True)


@dataclass(frozen=True)
class Auth:
    """How this server knows its reviewers: a fixed name, or passwords and a token.

    The token acts as `token_name` (TOKEN_IDENTITY, or `token:<SMALLOPS_REVIEW_TOKEN_NAME>`),
    never as anyone in [reviewers]: what it decides is recorded under that name, and it cannot
    decide an item a password reviewer holds.
    """

    require_login: bool
    reviewer: str = ""  # the reviewer when no login is required
    reviewers: Mapping[str, str] = field(default_factory=dict)  # name -> scrypt hash
    token: str | None = None
    token_name: str = TOKEN_IDENTITY

    @classmethod
    def for_server(
        cls,
        reviewers: Mapping[str, str],
        *,
        require_login: bool,
        reviewer: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Auth:
        """The server's auth; refuses a login nobody could pass, and a token named like a
        reviewer."""
        env = os.environ if env is None else env
        token = env.get(TOKEN_ENV) or None
        if require_login and not reviewers and not token:
            raise ConfigError(
                "login is required but no reviewer can log in",
                hint="add one to smallops.toml's [reviewers] with `smallops review hash-password`,"
                f" or export {TOKEN_ENV}=<a long random string>",
            )
        token_name = _token_name(env.get(TOKEN_NAME_ENV))
        if token and token_name.casefold() in {name.casefold() for name in reviewers}:
            raise ConfigError(
                f"the review token acts as {token_name!r}, which is also a reviewer in [reviewers]",
                hint=f"rename that reviewer, or set {TOKEN_NAME_ENV} to another name",
            )
        name = clean_name(reviewer) or clean_name(default_reviewer(env)) or "reviewer"
        return cls(require_login, name, dict(reviewers), token, token_name)

    def login(self, name: str | None, password: str | None) -> tuple[str, str] | None:
        """(reviewer, the credential that let them in) if the password is right, else None.
        The review token logs in only under its own name."""
        name, password = clean_name(name), password or ""
        if name is None or not password:
            return None
        if self.token and name.casefold() == self.token_name.casefold():
            if hmac.compare_digest(password.encode(), self.token.encode()):
                return self.token_name, self.token
            return None
        stored = self.reviewers.get(name)
        if stored is None:
            verify_password(password, _dummy())  # the same cost as a known name
            return None
        return (name, stored) if verify_password(password, stored) else None

    def credentials(self, name: str) -> list[str]:
        """What a session of `name` may have been issued under, as things stand now."""
        if not self.require_login:
            return [""]
        if self.token and name == self.token_name:
            return [self.token]
        return [self.reviewers[name]] if name in self.reviewers else []

    def bearer(self, authorization: str, x_reviewer: str | None) -> str:
        """The reviewer of a JSON client: the review token's own name. X-Reviewer, if sent, must
        be that name: the token cannot speak for anyone else."""
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() != "bearer" or not self.token:
            raise LoginError("this server accepts no bearer token", hint=f"set {TOKEN_ENV}")
        if not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            raise LoginError("the bearer token is wrong", hint=f"send {TOKEN_ENV}'s value")
        if x_reviewer is not None and x_reviewer.strip() != self.token_name:
            raise LoginError(
                f"the review token acts as {self.token_name!r}; X-Reviewer cannot name another"
                " reviewer",
                hint=f"drop X-Reviewer, or name the token with {TOKEN_NAME_ENV} on the server",
            )
        return self.token_name


def _token_name(name: str | None) -> str:
    """`token`, or `token:<name>` for a name fit to record."""
    if not (name or "").strip():
        return TOKEN_IDENTITY
    cleaned = clean_name(f"{TOKEN_IDENTITY}:{(name or '').strip()}")
    if cleaned is None:
        raise ConfigError(
            f"{TOKEN_NAME_ENV} must be printable and at most {MAX_NAME - 6} characters",
            hint="e.g. ci-bot",
        )
    return cleaned


def _dummy() -> str:
    if not _dummy_hash:
        _dummy_hash.append(hash_password(secrets.token_urlsafe(16)))
    return _dummy_hash[0]


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    if not (2 <= n <= 2**20 and 1 <= r <= 32 and 1 <= p <= 16):
        raise ValueError("scrypt parameters out of range")
    maxmem = 128 * r * (n + p + 2) + 1024 * 1024
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=32)


def _b64(data: bytes, *, url: bool = False) -> str:
    """Base64; the URL-safe form drops its padding, since `=` is not a plain cookie character."""
    if url:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode((text + "=" * (-len(text) % 4)).encode())
