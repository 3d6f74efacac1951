"""The webhook and email alert channels against real servers on 127.0.0.1.

The webhook's signature is checked by the Standard Webhooks library, as a receiver would; the
mail goes through a real SMTP server (aiosmtpd), over STARTTLS or TLS with a certificate made
for the test, with a login whose password is made at run time.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import secrets
import socket
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook as StandardWebhook
from standardwebhooks.webhooks import WebhookVerificationError

from smallops.alert_config import ChannelConfig
from smallops.alerts.channels import build_channel
from smallops.alerts.channels import email as email_channel
from smallops.alerts.model import Notification, Refused, Retry, Sent
from smallops.errors import ConfigError

from smtp_receiver import Certificate, SMTPReceiver, self_signed
from webhook_receiver import Receiver

FIRED = datetime(2026, 12, 1, 9, 30, tzinfo=timezone.utc)


def notification(event: str = "firing", **changes: Any) -> Notification:
    """An error-spike alert on email-triage; ids fresh for each call unless given."""
    alert_id = changes.pop("alert_id", f"alr_{uuid.uuid4().hex}")
    base = Notification(
        id=f"ntf_{uuid.uuid4().hex}",
        alert_id=alert_id,
        event=event,  # type: ignore[arg-type]
        rule="error_spike",
        workflow="email-triage",
        dedup_key="smallops:error_spike:email-triage",
        severity="error",
        summary="12 of 80 calls failed in the last hour (15%), over the 10% threshold",
        figures={"errors": 12, "calls": 80, "error_rate": 0.15, "window": "1h"},
        link="https://smallops.acme.example/workflows/email-triage",
        fired_at=FIRED,
        at=FIRED if event == "firing" else FIRED + timedelta(minutes=42),
    )
    return dataclasses.replace(base, **changes)


def fake_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


# --- webhook ---------------------------------------------------------------------------------


def webhook(url: str, env: dict[str, str], **options: Any) -> Any:
    return build_channel(
        ChannelConfig("hooks", "webhook", {"url": url, "secret_env": "HOOKS_SECRET", **options}),
        env,
    )


def test_webhook_body_is_signed_as_standard_webhooks_verify_it() -> None:
    secret = fake_secret()
    note = notification()
    with Receiver() as receiver:
        outcome = webhook(receiver.url, {"HOOKS_SECRET": secret}).send(note)
        resolved = webhook(receiver.url, {"HOOKS_SECRET": secret}).send(
            notification("resolved", alert_id=note.alert_id)
        )
    assert isinstance(outcome, Sent), outcome
    assert outcome.detail == "HTTP 204"
    assert isinstance(resolved, Sent), resolved
    (body, headers), (resolved_body, resolved_headers) = receiver.accepted
    assert headers["webhook-id"] == note.id
    payload = StandardWebhook(secret).verify(body, headers)
    assert payload == {
        "type": "alert.firing",
        "timestamp": "2026-12-01T09:30:00+00:00",
        "data": {
            "alert_id": note.alert_id,
            "dedup_key": "smallops:error_spike:email-triage",
            "rule": "error_spike",
            "workflow": "email-triage",
            "severity": "error",
            "summary": note.summary,
            "figures": {"errors": 12, "calls": 80, "error_rate": 0.15, "window": "1h"},
            "link": "https://smallops.acme.example/workflows/email-triage",
            "fired_at": "2026-12-01T09:30:00+00:00",
            "at": "2026-12-01T09:30:00+00:00",
            "repeat": 0,
            "escalated": False,
        },
    }
    later = StandardWebhook(secret).verify(resolved_body, resolved_headers)
    assert later["type"] == "alert.resolved"
    assert later["data"]["at"] == "2026-12-01T10:12:00+00:00"
    with pytest.raises(WebhookVerificationError):
        StandardWebhook(fake_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):  # the body is what is signed
        StandardWebhook(secret).verify(body.replace("email-triage", "other"), headers)


def test_webhook_retry_carries_the_same_webhook_id() -> None:
    secret = fake_secret()
    note = notification(repeat=2, escalated=True)
    with Receiver(failures=1) as receiver:
        channel = webhook(receiver.url, {"HOOKS_SECRET": secret})
        first = channel.send(note)
        second = channel.send(note)
    assert isinstance(first, Retry), first
    assert first.detail == "HTTP 500"
    assert isinstance(second, Sent), second
    assert receiver.ids == [note.id, note.id]
    ((body, headers),) = receiver.accepted
    data = StandardWebhook(secret).verify(body, headers)["data"]
    assert (data["repeat"], data["escalated"]) == (2, True)


class Scripted:
    """An HTTP receiver answering each POST with the next (status, headers) of its script."""

    def __init__(self, *answers: tuple[int, dict[str, str]]) -> None:
        self.answers = list(answers)
        self.bodies: list[str] = []
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                scripted.bodies.append(self.rfile.read(length).decode())
                status, headers = scripted.answers.pop(0)
                self.send_response(status)
                for name, value in {"content-length": "0", **headers}.items():
                    self.send_header(name, value)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"

    def __enter__(self) -> Scripted:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_webhook_outcomes_by_status() -> None:
    env = {"HOOKS_SECRET": fake_secret()}
    answers = [(400, {}), (429, {"Retry-After": "7"}), (503, {}), (200, {})]
    with Scripted(*answers) as receiver:
        channel = webhook(receiver.url, env)
        outcomes = [channel.send(notification()) for _ in answers]
    assert [type(o) for o in outcomes] == [Refused, Retry, Retry, Sent]
    assert outcomes[0].detail == "HTTP 400"
    assert isinstance(outcomes[1], Retry) and outcomes[1].after == 7.0
    assert len(receiver.bodies) == 4
    assert all(receiver.url not in o.detail for o in outcomes)


def test_webhook_redirect_is_refused_and_not_followed() -> None:
    env = {"HOOKS_SECRET": fake_secret()}
    with Receiver() as elsewhere, Receiver(redirect=(307, elsewhere.url)) as receiver:
        outcome = webhook(receiver.url, env).send(notification())
    assert isinstance(outcome, Refused), outcome
    assert outcome.detail.startswith("HTTP 307")
    assert elsewhere.requests == []


def test_webhook_secret_missing_or_unusable_names_the_variable() -> None:
    with pytest.raises(ConfigError) as unset:
        webhook("https://hooks.acme.example/alerts", {})
    assert "HOOKS_SECRET is not set" in str(unset.value)
    with pytest.raises(ConfigError) as default:
        build_channel(ChannelConfig("hooks", "webhook", {"url": "https://h.example/a"}), {})
    assert "SMALLOPS_ALERT_WEBHOOK_SECRET is not set" in str(default.value)
    for bad in (f"plain-{secrets.token_hex(16)}", "whsec_" + "!" * 40, "whsec_" + "QUJD"):
        with pytest.raises(ConfigError) as unusable:
            webhook("https://hooks.acme.example/alerts", {"HOOKS_SECRET": bad})
        assert "HOOKS_SECRET is not a whsec_ secret" in str(unusable.value)
        assert bad not in str(unusable.value)
    secret = fake_secret()
    channel = webhook("https://hooks.acme.example/alerts", {"HOOKS_SECRET": secret})
    assert secret not in repr(channel) and "hooks.acme.example" not in repr(channel)


def test_webhook_unpadded_secret_signs_as_receivers_decode_it() -> None:
    secret = "whsec_" + base64.b64encode(os.urandom(31)).decode().rstrip("=")
    with Receiver() as receiver:
        assert isinstance(
            webhook(receiver.url, {"HOOKS_SECRET": secret}).send(notification()), Sent
        )
    ((body, headers),) = receiver.accepted
    StandardWebhook(secret).verify(body, headers)


def test_webhook_plain_http_only_to_this_machine() -> None:
    env = {"HOOKS_SECRET": fake_secret()}
    with pytest.raises(ConfigError, match="plain http to another machine"):
        webhook("http://hooks.acme.example/alerts", env)
    webhook("http://127.0.0.1:9/alerts", env)
    webhook("http://[::1]:9/alerts", env)


# --- email -----------------------------------------------------------------------------------


def mail(port: int, env: dict[str, str] | None = None, **options: Any) -> Any:
    table = {"host": "127.0.0.1", "port": port, "security": "none"}
    table["from"] = "smallops alerts <alerts@acme.example>"
    return build_channel(ChannelConfig("ops-mail", "email", {**table, **options}), env or {})


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return self_signed(tmp_path_factory.mktemp("smtp-tls"))


@pytest.fixture
def trusting(monkeypatch: pytest.MonkeyPatch, certificate: Certificate) -> Certificate:
    """The client trusts the test certificate, and only it."""
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate.cert))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    return certificate


@pytest.fixture
def smtp() -> Iterator[SMTPReceiver]:
    with SMTPReceiver() as receiver:
        yield receiver


def test_email_thread_firing_reminder_resolved(smtp: SMTPReceiver) -> None:
    channel = mail(smtp.port, to=["ops@acme.example", "lead@acme.example"])
    firing = notification(summary="cost up 80% — 312.50 € this week")
    reminder = notification(alert_id=firing.alert_id, repeat=1)
    resolved = notification("resolved", alert_id=firing.alert_id)
    outcomes = [channel.send(n) for n in (firing, reminder, resolved)]
    assert all(isinstance(o, Sent) for o in outcomes), outcomes
    assert outcomes[0].detail.startswith(f"SMTP 250 from 127.0.0.1:{smtp.port}: 2.0.0 Ok: queued")
    first, second, third = smtp.messages
    assert first.mail_from == "alerts@acme.example"
    assert first.rcpt_tos == ("ops@acme.example", "lead@acme.example")
    root = f"<alert-{firing.alert_id}@acme.example>"
    assert first.message["Message-ID"] == root
    assert first.message["In-Reply-To"] is None and first.message["References"] is None
    subject = "[smallops] email-triage: error_spike (error)"
    assert first.message["Subject"] == subject
    assert first.message["Date"] is not None
    assert first.message["Auto-Submitted"] == "auto-generated"
    for later, note in ((second, reminder), (third, resolved)):
        assert later.message["Message-ID"] == f"<{note.id}@acme.example>"
        assert later.message["In-Reply-To"] == root
        assert later.message["References"] == root
        assert later.message["Subject"] == f"Re: {subject}"
    text = first.text
    assert first.message.get_content_charset() == "utf-8"
    assert text.startswith("FIRING: cost up 80% — 312.50 € this week\n")
    for line in ("  errors: 12", "  calls: 80", "  error_rate: 0.15", "  window: 1h"):
        assert f"\n{line}\n" in text
    assert "Fired at: 2026-12-01 09:30:00 UTC" in text
    assert "https://smallops.acme.example/workflows/email-triage" in text
    assert "reminder 1" in second.text
    closing = third.text
    assert closing.startswith("RESOLVED: ")
    assert "Resolved at: 2026-12-01 10:12:00 UTC" in closing
    assert "Fired for: 42m" in closing


def test_email_writes_to_the_owner_when_the_channel_names_nobody(smtp: SMTPReceiver) -> None:
    channel = mail(smtp.port)
    outcome = channel.send(notification(recipients=("owner@acme.example",)))
    assert isinstance(outcome, Sent), outcome
    (received,) = smtp.messages
    assert received.rcpt_tos == ("owner@acme.example",)
    assert received.message["To"] == "owner@acme.example"
    nobody = channel.send(notification())
    assert isinstance(nobody, Refused)
    assert nobody.detail.startswith("no recipients: ")
    assert "to = [" in nobody.detail
    assert len(smtp.messages) == 1


def test_email_test_event_says_it_is_a_test(smtp: SMTPReceiver) -> None:
    note = notification("test")
    assert isinstance(mail(smtp.port, to=["ops@acme.example"]).send(note), Sent)
    (received,) = smtp.messages
    assert received.message["Subject"].startswith("[smallops] test: ")
    assert received.message["In-Reply-To"] is None
    assert received.message["Message-ID"] == f"<{note.id}@acme.example>"
    text = received.text
    assert text.startswith("This is a test of the alert channel")


def test_email_starttls_trusts_the_certificate_in_ssl_cert_file(
    trusting: Certificate, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SMTPReceiver(certificate=trusting, starttls=True) as smtp:
        channel = mail(smtp.port, security="starttls", to=["ops@acme.example"])
        outcome = channel.send(notification())
        assert isinstance(outcome, Sent), outcome
        assert [m.tls for m in smtp.messages] == [True]
        monkeypatch.setenv("SSL_CERT_FILE", str(self_signed(tmp_path).cert))  # another one
        untrusted = channel.send(notification())
    assert isinstance(untrusted, Retry), untrusted
    assert "is not trusted at STARTTLS" in untrusted.detail
    assert len(smtp.messages) == 1


def test_email_starttls_refused_by_a_server_without_it(smtp: SMTPReceiver) -> None:
    outcome = mail(smtp.port, security="starttls", to=["ops@acme.example"]).send(notification())
    assert isinstance(outcome, Refused), outcome
    assert "does not support STARTTLS" in outcome.detail
    assert smtp.messages == []


def test_email_tls_from_the_first_byte(trusting: Certificate) -> None:
    with SMTPReceiver(certificate=trusting, implicit_tls=True) as smtp:
        outcome = mail(smtp.port, security="tls", to=["ops@acme.example"]).send(notification())
    assert isinstance(outcome, Sent), outcome
    assert [m.tls for m in smtp.messages] == [True]


def test_email_login_never_shows_the_password(trusting: Certificate) -> None:
    password = f"fake-{secrets.token_urlsafe(18)}"
    logins = {"username_env": "SMTP_USER", "password_env": "SMTP_PASSWORD"}
    with SMTPReceiver(certificate=trusting, starttls=True, login=("alerts", password)) as smtp:
        good = {"SMTP_USER": "alerts", "SMTP_PASSWORD": password}
        sent = mail(smtp.port, good, security="starttls", to=["ops@acme.example"], **logins)
        outcome = sent.send(notification())
        wrong = f"fake-{secrets.token_urlsafe(18)}"
        bad = {"SMTP_USER": "alerts", "SMTP_PASSWORD": wrong}
        refused = mail(smtp.port, bad, security="starttls", to=["ops@acme.example"], **logins)
        denied = refused.send(notification())
        anonymous = mail(smtp.port, security="starttls", to=["ops@acme.example"])
        unauthenticated = anonymous.send(notification())
    assert isinstance(outcome, Sent), outcome
    assert [m.login for m in smtp.messages] == ["alerts"]
    assert isinstance(denied, Refused), denied
    assert "SMTP 535" in denied.detail and "at login" in denied.detail
    assert isinstance(unauthenticated, Refused), unauthenticated  # 530: login required
    assert set(smtp.logins) == {"alerts"}  # smtplib tries each method the server offers
    for shown in (outcome.detail, denied.detail, unauthenticated.detail, repr(sent)):
        assert password not in shown and wrong not in shown


def test_email_login_variables_named_together_and_set() -> None:
    with pytest.raises(ConfigError, match="username_env and password_env together"):
        mail(25, {"SMTP_USER": "alerts"}, username_env="SMTP_USER")
    password = f"fake-{secrets.token_urlsafe(12)}"
    with pytest.raises(ConfigError) as unset:
        mail(
            25,
            {"SMTP_PASSWORD": password},
            username_env="SMTP_USER",
            password_env="SMTP_PASSWORD",
        )
    assert "SMTP_USER is not set" in str(unset.value)
    assert password not in str(unset.value)


def test_email_temporary_and_permanent_refusals(smtp: SMTPReceiver) -> None:
    channel = mail(smtp.port, to=["ops@acme.example"])
    smtp.data_replies.append("451 4.3.0 Mail server busy, try later")
    busy = channel.send(notification())
    assert isinstance(busy, Retry), busy
    assert (
        busy.detail
        == f"SMTP 451 from 127.0.0.1:{smtp.port} at send: 4.3.0 Mail server busy, try later"
    )
    smtp.data_replies.append("550 5.7.1 Message rejected as spam")
    spam = channel.send(notification())
    assert isinstance(spam, Refused), spam
    assert "SMTP 550" in spam.detail and "rejected as spam" in spam.detail
    smtp.rcpt_replies.append("550 5.1.1 No such user")
    unknown = channel.send(notification())
    assert isinstance(unknown, Refused), unknown
    assert "ops@acme.example (550 5.1.1 No such user)" in unknown.detail
    smtp.rcpt_replies.append("450 4.2.0 Greylisted, come back later")
    greylisted = channel.send(notification())
    assert isinstance(greylisted, Retry), greylisted
    assert smtp.messages == []
    assert isinstance(channel.send(notification()), Sent)
    assert len(smtp.messages) == 1


def test_email_some_recipients_refused_is_sent_and_says_who(smtp: SMTPReceiver) -> None:
    smtp.rcpt_replies.append("550 5.1.1 No such user")
    outcome = mail(smtp.port, to=["gone@acme.example", "ops@acme.example"]).send(notification())
    assert isinstance(outcome, Sent), outcome
    assert outcome.detail.endswith("refused: gone@acme.example (550 5.1.1 No such user)")
    assert [m.rcpt_tos for m in smtp.messages] == [("ops@acme.example",)]


def test_email_server_down_is_retried() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    outcome = mail(port, to=["ops@acme.example"]).send(notification())
    assert isinstance(outcome, Retry), outcome
    assert outcome.detail == f"no answer from 127.0.0.1:{port} at connect: Connection refused"


def test_email_silent_server_times_out_into_a_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(email_channel, "TIMEOUT", 0.3)
    with socket.socket() as silent:  # accepts connections (the backlog) and never greets
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        port = silent.getsockname()[1]
        outcome = mail(port, to=["ops@acme.example"]).send(notification())
    assert isinstance(outcome, Retry), outcome
    assert outcome.detail.startswith(f"no answer from 127.0.0.1:{port} at connect: ")
    assert outcome.detail.endswith("timed out")


def test_email_unencrypted_only_to_this_machine() -> None:
    with pytest.raises(ConfigError) as remote:
        mail(25, host="smtp.acme.example")
    assert 'unencrypted (security = "none") to smtp.acme.example' in str(remote.value)
    for host in ("localhost", "127.0.0.1", "::1", "[::1]"):
        assert mail(25, host=host).host in {"localhost", "127.0.0.1", "::1"}
    assert mail(25, host="smtp.acme.example", security="starttls").port == 25
    defaults = {"host": "smtp.acme.example", "from": "alerts@acme.example"}
    assert build_channel(ChannelConfig("m", "email", defaults), {}).port == 587
    tls = build_channel(ChannelConfig("m", "email", {**defaults, "security": "tls"}), {})
    assert tls.port == 465


def test_email_from_needs_an_address() -> None:
    with pytest.raises(ConfigError, match=r"from in .* has no email address"):
        mail(25, **{"from": "smallops alerts"})
