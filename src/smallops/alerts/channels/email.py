"""Alerts by email over SMTP, one thread per alert.

The first mail about an alert has the Message-ID `<alert-{alert_id}@{domain}>`; every later one
(a reminder, an escalation, the acknowledgement, the resolution) has its own id and answers that
one (In-Reply-To, References, "Re: " and the same subject), so a mail client shows an alert's
story as one conversation. The domain is the From address's.

The connection is encrypted (STARTTLS on 587 by default, or TLS from the first byte on 465) with
the certificate checked against the system's authorities (ssl.create_default_context, which
honours SSL_CERT_FILE); "none" is allowed only to a relay on this machine. The login, when the
channel names its variables, is read from the environment and never shown.

What the server answers decides the outcome: a 4xx, no answer or a dropped connection is worth
another attempt; a 5xx (a refused sender, recipient, message or login) is refused for good.
"""

from __future__ import annotations

import base64
import email.utils
import smtplib
import socket
import ssl
from collections.abc import Mapping
from datetime import datetime, timezone
from email.message import EmailMessage
from typing import Any

from smallops.alert_config import ChannelConfig
from smallops.alerts.channels._deadline import Deadline
from smallops.alerts.channels._secrets import scrubbed
from smallops.alerts.model import Figure, Notification, Outcome, Refused, Retry, Sent
from smallops.errors import ConfigError
from smallops.kinds import ChannelKind, NotifyEvent

TIMEOUT = 10.0  # seconds the server may take over any one step; the attempt: _deadline
DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
MAX_DETAIL = 300  # characters of a server's answer kept
STATES: dict[NotifyEvent, str] = {
    "firing": "FIRING",
    "acknowledged": "ACKNOWLEDGED",
    "resolved": "RESOLVED",
    "test": "TEST",
}
#: The label of a later mail's own time (the first firing mail has only "Fired at").
AT_LABELS: dict[NotifyEvent, str] = {
    "firing": "Still firing at",
    "acknowledged": "Acknowledged at",
    "resolved": "Resolved at",
    "test": "Sent at",
}


class _SMTP(smtplib.SMTP):
    """Keeps the server's answer to the message, which smtplib's sendmail drops; its socket
    is shut down at the attempt's deadline (a tarpit greeting a byte at a time, say)."""

    reply: tuple[int, bytes] = (0, b"")

    def __init__(self, *args: Any, deadline: Deadline, **kwargs: Any) -> None:
        self.deadline = deadline  # before connecting, which smtplib does at once
        super().__init__(*args, **kwargs)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        # smtplib's own hook for the socket it opens (typeshed leaves it out)
        return self.deadline.watch(super()._get_socket(host, port, timeout))  # type: ignore[misc]

    def data(self, msg: Any) -> tuple[int, bytes]:
        self.reply = super().data(msg)
        return self.reply


class _SMTPOverTLS(_SMTP, smtplib.SMTP_SSL):
    pass


class Email:
    """One SMTP server, the sender, and who to write to (else the notification's recipients)."""

    kind: ChannelKind = "email"

    def __init__(
        self,
        name: str,
        *,
        host: str,
        port: int,
        security: str,
        sender: str,
        to: tuple[str, ...] = (),
        login: tuple[str, str] | None = None,
    ) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.security = security
        self.sender = sender
        self.to = to
        self._login = login

    def __repr__(self) -> str:  # never the login
        return f"Email(name={self.name!r}, host={self.host!r}, port={self.port})"

    def send(self, notification: Notification) -> Outcome:
        recipients = self.to or notification.recipients
        if not recipients:
            return Refused(
                f"no recipients: the channel {self.name} names nobody and the workflow"
                f" {notification.workflow} has no owner with an email address; set"
                f' to = ["ops@acme.example"] in [alerts.channels.{self.name}] or make the'
                " owner an address"
            )
        message = compose(notification, self.sender, recipients)
        return self._scrub(self._deliver(message, recipients))

    def _deliver(self, message: EmailMessage, recipients: tuple[str, ...]) -> Outcome:
        with Deadline() as deadline:
            outcome = self._attempt(message, recipients, deadline)
        if deadline.over and not isinstance(outcome, Sent):  # the server answered too slowly
            return Retry(f"{self.host}:{self.port}: {deadline.detail()}")
        return outcome

    def _attempt(
        self, message: EmailMessage, recipients: tuple[str, ...], deadline: Deadline
    ) -> Outcome:
        server = f"{self.host}:{self.port}"
        smtp: _SMTP | None = None
        step = "connect"
        try:
            smtp = self._connect(deadline)
            if self.security == "starttls":
                step = "STARTTLS"
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if self._login is not None:
                step = "login"
                smtp.login(*self._login)
            step = "send"
            refused = smtp.send_message(
                message, from_addr=address_of(self.sender), to_addrs=list(recipients)
            )
            code, text = smtp.reply
            detail = f"SMTP {code} from {server}: {_text(text)}".rstrip(": ")
            if refused:
                detail += "; refused: " + _refusals(refused)
            return Sent(detail)
        except smtplib.SMTPRecipientsRefused as exc:
            detail = f"{server} refused the recipients: {_refusals(exc.recipients)}"
            temporary = any(400 <= code < 500 for code, _ in exc.recipients.values())
            return Retry(detail) if temporary else Refused(detail)
        except smtplib.SMTPNotSupportedError as exc:
            return Refused(f"{server} does not support {step}: {exc}")
        except smtplib.SMTPResponseException as exc:
            code = exc.smtp_code
            detail = f"SMTP {code} from {server} at {step}: {_text(exc.smtp_error)}"
            return Refused(detail) if 500 <= code < 600 else Retry(detail)
        except smtplib.SMTPServerDisconnected as exc:
            return Retry(f"no answer from {server} at {step}: {exc}")  # closed, or timed out
        except smtplib.SMTPException as exc:  # e.g. no AUTH method both sides know
            shown = f"{server} at {step}: {exc}"
            return Refused(shown) if step == "login" else Retry(shown)
        except ssl.SSLCertVerificationError as exc:  # worth retrying: a certificate is renewed
            why = exc.verify_message or exc.reason
            return Retry(f"the certificate of {server} is not trusted at {step}: {why}")
        except ssl.SSLError as exc:  # e.g. TLS spoken to a port that expects STARTTLS
            return Retry(f"TLS with {server} failed at {step}: {exc.reason or exc}")
        except OSError as exc:  # refused, unreachable, timed out
            reason = exc.strerror or str(exc) or type(exc).__name__
            return Retry(f"no answer from {server} at {step}: {reason}")
        finally:
            if smtp is not None:
                _close(smtp)

    def _connect(self, deadline: Deadline) -> _SMTP:
        if self.security == "tls":
            context = ssl.create_default_context()
            return _SMTPOverTLS(
                self.host, self.port, timeout=TIMEOUT, context=context, deadline=deadline
            )
        return _SMTP(self.host, self.port, timeout=TIMEOUT, deadline=deadline)

    def _scrub(self, outcome: Outcome) -> Outcome:
        """The login never appears in a detail, whatever a server echoes back: neither as
        written nor as smtplib sent it (AUTH PLAIN and LOGIN send it in base64), and not its
        head where the detail was cut short."""
        if self._login is None:
            return outcome
        user, password = self._login
        plain = _base64(f"\0{user}\0{password}")
        for form in (plain, password, _base64(password), user, _base64(user)):
            outcome = scrubbed(outcome, form, "login")
        return outcome


def build(config: ChannelConfig, env: Mapping[str, str]) -> Email:
    """The channel; ConfigError for unencrypted mail to another machine, a From without an
    address, or a login variable that is not set (named, never its value)."""
    where = f"[alerts.channels.{config.name}]"
    options = config.options
    host = options.get("host")
    sender = options.get("from")
    if not isinstance(host, str) or not host.strip():
        raise ConfigError(f"{where} needs host", hint='the SMTP server, e.g. "smtp.acme.example"')
    host = host.strip().strip("[]")
    security = str(options.get("security", "starttls"))
    if security not in DEFAULT_PORTS:
        raise ConfigError(
            f"security in {where} is {security!r}",
            hint='use "starttls" (port 587), "tls" (465), or "none" for a relay on this machine',
        )
    if security == "none" and host.lower() not in LOCAL_HOSTS:
        raise ConfigError(
            f'{where} sends mail unencrypted (security = "none") to {host}',
            hint='use "starttls" or "tls" for a server on another machine; "none" is only for'
            " a relay on this one (localhost, 127.0.0.1, ::1)",
        )
    if not isinstance(sender, str) or "@" not in address_of(sender):
        raise ConfigError(
            f"from in {where} has no email address",
            hint='e.g. "smallops <alerts@acme.example>"',
        )
    return Email(
        config.name,
        host=host,
        port=int(options.get("port") or DEFAULT_PORTS[security]),
        security=security,
        sender=sender,
        to=tuple(options.get("to") or ()),
        login=_login(options, env, where),
    )


def _login(
    options: Mapping[str, Any], env: Mapping[str, str], where: str
) -> tuple[str, str] | None:
    names = options.get("username_env"), options.get("password_env")
    if names == (None, None):
        return None
    if None in names:
        raise ConfigError(
            f"{where} needs username_env and password_env together",
            hint="name both variables to log in to the server, or neither to send without"
            " logging in",
        )
    values = []
    for name in names:
        value = env.get(str(name), "")
        if not value:
            raise ConfigError(
                f"{name} is not set: the channel logs in to its SMTP server with it",
                hint=f"set {name}, or remove username_env and password_env from {where}",
            )
        values.append(value)
    return values[0], values[1]


def compose(notification: Notification, sender: str, recipients: tuple[str, ...]) -> EmailMessage:
    """The mail: threaded under the alert's first mail unless it is that mail (or a test)."""
    n = notification
    domain = address_of(sender).rpartition("@")[2]
    first = f"<alert-{n.alert_id}@{domain}>"
    subject = f"[smallops] {n.workflow}: {n.rule} ({n.severity})"
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Date"] = email.utils.format_datetime(datetime.now(timezone.utc))
    message["Auto-Submitted"] = "auto-generated"  # no vacation replies to an alert
    if n.event == "test":
        message["Subject"] = f"[smallops] test: {n.workflow}: {n.rule} ({n.severity})"
        message["Message-ID"] = f"<{n.id}@{domain}>"
    elif n.event == "firing" and n.repeat == 0:
        message["Subject"] = subject
        message["Message-ID"] = first
    else:
        message["Subject"] = f"Re: {subject}"
        message["Message-ID"] = f"<{n.id}@{domain}>"
        message["In-Reply-To"] = first
        message["References"] = first
    message.set_content(body(n), charset="utf-8")
    return message


def body(notification: Notification) -> str:
    """Plain text: the state, the summary, each figure on its own line, the times, the link."""
    n = notification
    state = STATES[n.event]
    if n.event == "firing" and n.escalated:
        state += " (escalated: nobody acknowledged it)"
    elif n.event == "firing" and n.repeat:
        state += f" (reminder {n.repeat}: not acknowledged yet)"
    lines = []
    if n.event == "test":
        lines += [
            "This is a test of the alert channel, sent by `smallops alerts test`.",
            "Nothing is wrong: no alert is firing.",
            "",
        ]
    lines += [f"{state}: {n.summary}" if n.summary else state, ""]
    lines += [f"Workflow: {n.workflow}", f"Rule: {n.rule}", f"Severity: {n.severity}"]
    if n.figures:
        lines += ["", "Figures:"]
        lines += [f"  {name}: {_figure(value)}" for name, value in n.figures.items()]
    lines += ["", f"Fired at: {_time(n.fired_at)}"]
    if n.event != "firing" or n.repeat:
        lines.append(f"{AT_LABELS[n.event]}: {_time(n.at)}")
    if n.event == "resolved":
        lines.append(f"Fired for: {_lasted(n.fired_at, n.at)}")
    if n.link:
        lines += ["", n.link]
    lines += ["", f"Alert {n.dedup_key}"]
    return "\n".join(lines) + "\n"


def address_of(sender: str) -> str:
    """The bare address in "Name <address>" (or the text, if it is one)."""
    return email.utils.parseaddr(sender)[1]


def _figure(value: Figure) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "-" if value is None else str(value)


def _time(moment: datetime) -> str:
    return _utc(moment).strftime("%Y-%m-%d %H:%M:%S UTC")


def _utc(moment: datetime) -> datetime:
    """A naive time is taken to be UTC already."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def _lasted(start: datetime, end: datetime) -> str:
    minutes = max(0, round((_utc(end) - _utc(start)).total_seconds() / 60))
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    parts = [f"{days}d"] * bool(days) + [f"{hours}h"] * bool(hours) + [f"{minutes}m"]
    return " ".join(parts)


def _refusals(refused: Mapping[str, tuple[int, bytes]]) -> str:
    return "; ".join(f"{who} ({code} {_text(text)})" for who, (code, text) in refused.items())


def _text(raw: bytes | str) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return " ".join(text.split())[:MAX_DETAIL]


def _base64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _close(smtp: smtplib.SMTP) -> None:
    """QUIT politely; a server that is gone by then changes nothing about the outcome."""
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError):
        smtp.close()
