"""Who is reviewing: password hashes, signed session cookies and CSRF tokens.

Standard library only, so `smallops review hash-password` works without the web extra.

- Passwords are stored as `scrypt$n$r$p$salt_b64$hash_b64` in smallops.toml's [reviewers]; a
  check always costs one scrypt, known name or not, so timing does not reveal who exists.
- A session is a cookie `b64(name).expiry.hmac`, signed with HMAC-SHA256 under a key from
  SMALLOPS_SECRET_KEY or a random key kept in `.smallops/secret_key` (mode 0600), so sessions
  survive a restart and no session table is needed. The signature also covers the credential
  the reviewer logged in with, so a changed password, a removed reviewer or a new review token
  ends the sessions made with the old one.
- The CSRF token is an HMAC of the session cookie: per session, nothing stored, and useless to
  a page that cannot read this site's cookie.
- Failed logins are counted per name and per client address; past the limit further tries are
  refused for a while before any password is checked, so guessing one is slow.
"""

from __future__ import annotations

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
from dataclasses import dataclass, field
from pathlib import Path

from smallops.errors import ConfigError, SmallopsError

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SESSION_COOKIE = "smallops_session"
SESSION_TTL = 12 * 3600  # seconds: a working day
TOKEN_ENV = "SMALLOPS_REVIEW_TOKEN"
SECRET_ENV = "SMALLOPS_SECRET_KEY"
REVIEWER_ENV = "SMALLOPS_REVIEWER"
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
MAX_NAME = 200  # the width of the reviewer columns
_NAME = re.compile(r"[^\x00-\x1f\x7f]+")
_dummy_hash: list[str] = []


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
    """Failed logins over a sliding window, per reviewer name and per client address.

    In memory: one `smallops serve` process holds the review desk, and a restart that forgets
    the count costs an attacker the restart. The per-name limit protects each account; the
    per-address limit slows one machine trying many names.
    """

    per_name: int = 5
    per_address: int = 20
    window: float = 900.0  # seconds
    _failures: dict[str, deque[float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, name: str | None, address: str | None, now: float | None = None) -> None:
        """Raise TooManyFailures while `name` or `address` is over its limit."""
        now = time.monotonic() if now is None else now
        wait = 0.0
        if key := _name_key(name):
            wait = self._wait(key, self.per_name, now)
        if address:
            wait = max(wait, self._wait(f"address:{address}", self.per_address, now))
        if wait > 0:
            raise TooManyFailures(wait)

    def failed(self, name: str | None, address: str | None, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            for key in (_name_key(name), f"address:{address}" if address else ""):
                if key:
                    self._failures.setdefault(key, deque()).append(now)
            if len(self._failures) > 10_000:  # forget quiet keys rather than grow without end
                quiet = now - self.window
                for key in [k for k, times in self._failures.items() if times[-1] < quiet]:
                    del self._failures[key]

    def succeeded(self, name: str | None) -> None:
        """A right password clears its name's count (not its address's)."""
        with self._lock:
            self._failures.pop(_name_key(name), None)

    def _wait(self, key: str, limit: int, now: float) -> float:
        with self._lock:
            times = self._failures.get(key)
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
    """How this server knows its reviewers: a fixed name, or passwords and a token."""

    require_login: bool
    reviewer: str = ""  # the reviewer when no login is required
    reviewers: Mapping[str, str] = field(default_factory=dict)  # name -> scrypt hash
    token: str | None = None

    @classmethod
    def for_server(
        cls,
        reviewers: Mapping[str, str],
        *,
        require_login: bool,
        reviewer: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Auth:
        """The server's auth; refuses a login nobody could pass."""
        env = os.environ if env is None else env
        token = env.get(TOKEN_ENV) or None
        if require_login and not reviewers and not token:
            raise ConfigError(
                "login is required but no reviewer can log in",
                hint="add one to smallops.toml's [reviewers] with `smallops review hash-password`,"
                f" or export {TOKEN_ENV}=<a long random string>",
            )
        name = clean_name(reviewer) or clean_name(default_reviewer(env)) or "reviewer"
        return cls(require_login, name, dict(reviewers), token)

    def login(self, name: str | None, password: str | None) -> tuple[str, str] | None:
        """(reviewer, the credential that let them in) if the password or the review token is
        right, else None."""
        name, password = clean_name(name), password or ""
        if name is None or not password:
            return None
        if self.token and hmac.compare_digest(password.encode(), self.token.encode()):
            return name, self.token
        stored = self.reviewers.get(name)
        if stored is None:
            verify_password(password, _dummy())  # the same cost as a known name
            return None
        return (name, stored) if verify_password(password, stored) else None

    def credentials(self, name: str) -> list[str]:
        """What a session of `name` may have been issued under, as things stand now."""
        if not self.require_login:
            return [""]
        held = [self.reviewers[name]] if name in self.reviewers else []
        return held + ([self.token] if self.token else [])

    def bearer(self, authorization: str, x_reviewer: str | None) -> str:
        """The reviewer of a JSON client: the review token, and its name in X-Reviewer."""
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() != "bearer" or not self.token:
            raise LoginError("this server accepts no bearer token", hint=f"set {TOKEN_ENV}")
        if not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            raise LoginError("the bearer token is wrong", hint=f"send {TOKEN_ENV}'s value")
        name = clean_name(x_reviewer)
        if name is None:
            raise LoginError(
                "a bearer request needs an X-Reviewer header", hint="send X-Reviewer: NAME"
            )
        return name


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
