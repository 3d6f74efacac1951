"""Faults found by trying the alerts as an attacker and as a tired on-call engineer would: hostile
values, services that answer badly or slowly, the database going away, the CLI as typed at 3 a.m.,
secrets a service echoes back, and several checks at once. Each test failed before its fix,
except the test_guard_ ones: what was tried and held, kept so that it keeps holding."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from smallops.alert_config import (
    MAX_CHANNEL_NAME,
    MAX_DURATION,
    AlertSettings,
    ChannelConfig,
    WorkflowAlerts,
    parse_alerts,
)
from smallops.alerts import outbox as outbox_module
from smallops.alerts.channels import _deadline, _http, build_channel
from smallops.alerts.engine import acknowledge, apply
from smallops.alerts.model import Finding, Notification, Retry, Sent
from smallops.alerts.outbox import MAX_RETRY_AFTER, Outbox
from smallops.config import Settings
from smallops.errors import ConfigError
from smallops.storage.db import ensure_schema, get_engine, normalise_url
from smallops.storage.quarantine import quarantine_folder
from smallops.storage.schema import alert_notifications, alerts
from smallops.storage.spool import spool_folder

from slack_fake import SlackFake
from webhook_receiver import Receiver

T0 = datetime(2026, 12, 2, 9, 0, tzinfo=timezone.utc)
MIN = timedelta(minutes=1)


@dataclass
class Evaluation:
    findings: list[Finding]
    checked: set[tuple[str, str]] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


def finding(workflow: str = "triage", firing: bool = True) -> Finding:
    return Finding(
        rule="error_spike",
        workflow=workflow,
        firing=firing,
        severity="error",
        summary=f"{workflow}: 40 errors in 200 calls over the last 1 h",
        figures={"calls": 200, "count": 40},
    )


def evaluation(*findings: Finding, workflows: tuple[str, ...] = ("triage",)) -> Evaluation:
    return Evaluation(list(findings), {("error_spike", name) for name in workflows})


def slack_config(*names: str, **workflows: tuple[str, ...]) -> AlertSettings:
    """Slack channels by name (each its own webhook variable), and each workflow's channels."""
    return AlertSettings(
        channels={
            name: ChannelConfig(name, "slack", {"webhook_url_env": f"HOOK_{i}"})
            for i, name in enumerate(names)
        },
        workflows={wf: WorkflowAlerts(channels=chosen) for wf, chosen in workflows.items()},
    )


@pytest.fixture
def engine(database_url: str, tmp_path: Path) -> Any:
    engine = get_engine(normalise_url(database_url, tmp_path))
    ensure_schema(engine)
    return engine


def outbox_rows(engine: Any) -> list[dict[str, Any]]:
    n = alert_notifications.c
    with engine.connect() as connection:
        query = select(alert_notifications).order_by(n.created_at, n.id)
        return [dict(row._mapping) for row in connection.execute(query)]


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


# --- a 429 storm with a Retry-After nobody can wait for -------------------------------------


@pytest.mark.parametrize(
    "retry_after", ["1e400", "99999999999999", "Fri, 31 Dec 9999 23:59:59 GMT"]
)
def test_a_huge_retry_after_neither_crashes_the_round_nor_silences_the_alert(
    engine: Any, retry_after: str
) -> None:
    """Before: the outbox turned Retry-After into a timedelta that overflowed, so the round
    died with a traceback, the other due messages were not sent, and each round did it again."""
    config = slack_config("flaky", "fine", triage=("flaky",), billing=("fine",))
    both = evaluation(finding("triage"), finding("billing"), workflows=("triage", "billing"))
    apply(engine, both, config, {}, T0)
    with SlackFake(script=[(429, "rate_limited", retry_after)]) as flaky, SlackFake() as fine:
        env = {"HOOK_0": flaky.webhook_url, "HOOK_1": fine.webhook_url}
        attempts = Outbox(engine, config, env).send_due(T0)
        assert sorted(a.outcome for a in attempts) == ["retry", "sent"]
        assert len(fine.posts) == 1
    [waiting] = [row for row in outbox_rows(engine) if row["state"] == "pending"]
    assert _utc(waiting["next_attempt_at"]) <= T0 + timedelta(seconds=MAX_RETRY_AFTER)


# --- durations too long for a calendar ------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("repeat_after", 1e300),
        ("repeat_after", "99999999999d"),
        ("min_firing", 9223372036854775807),
        ("escalate_after", "999999999999h"),
        ("hold", 1e300),
        ("interval", 1e300),
    ],
)
def test_a_duration_longer_than_a_calendar_is_a_config_error_not_a_crash_later(
    engine: Any, key: str, value: Any
) -> None:
    """Before: accepted, then every `alerts check` with an alert open died of an OverflowError
    traceback (timedelta), so no alert fired, repeated or resolved again."""
    with pytest.raises(ConfigError, match=f"{key} in \\[alerts\\]") as raised:
        parse_alerts({key: value})
    assert "at most" in str(raised.value)
    config = parse_alerts(
        {key: MAX_DURATION, "channels": {"c": {"kind": "slack"}}, "escalate_to": ["c"]}
    )
    apply(engine, evaluation(finding()), config, {}, T0)
    apply(engine, evaluation(finding()), config, {}, T0 + MIN)
    apply(engine, evaluation(), config, {}, T0 + 2 * MIN)


@pytest.mark.parametrize("rule", ["error_spike", "model_mismatch", "review_backlog"])
def test_a_rule_window_longer_than_a_calendar_is_a_config_error(rule: str) -> None:
    """Before: accepted, then the rule failed on every check with "unexpected OverflowError"
    and a logged traceback."""
    key = "sla" if rule == "review_backlog" else "window"
    with pytest.raises(ConfigError, match=f"{key} in \\[alerts.rules.{rule}\\]"):
        parse_alerts({"rules": {rule: {key: "99999999999d"}}})


# --- channel tables the database or the mail server cannot take -----------------------------


@pytest.mark.parametrize(
    "name", ["x" * (MAX_CHANNEL_NAME + 1), "pager\x00", "ops\nslack", "a\u2028b"]
)
def test_a_channel_name_the_outbox_cannot_hold_is_a_config_error(name: str) -> None:
    """Before: taken, then on Postgres every check with an alert for it died of a DataError
    (value too long for alert_notifications.channel, or a NUL): no alert fired at all."""
    with pytest.raises(ConfigError, match="channel name"):
        parse_alerts({"channels": {name: {"kind": "slack"}}})


def test_the_longest_channel_name_taken_fires_on_both_databases(engine: Any) -> None:
    name = "ops-" + "é" * (MAX_CHANNEL_NAME - 4)
    config = parse_alerts({"channels": {name: {"kind": "slack"}}, "escalate_to": [name]})
    config = AlertSettings(
        channels=config.channels, workflows={"triage": WorkflowAlerts(channels=(name,))}
    )
    assert apply(engine, evaluation(finding()), config, {}, T0).fired
    assert [row["channel"] for row in outbox_rows(engine)] == [name]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("from", "alerts@acme.example\r\nBcc: someone@elsewhere.example"),
        ("host", "smtp.acme.example\n"),
        ("from", "smallops <alerts@acme.example>\x00"),
    ],
)
def test_email_text_with_line_breaks_is_a_config_error_not_a_traceback(
    key: str, value: str
) -> None:
    """Before: taken; `alerts test` then died with a ValueError traceback (a header with a line
    break), and the outbox retried a message that could never be built for a day."""
    table = {"kind": "email", "host": "smtp.acme.example", "from": "alerts@acme.example"}
    with pytest.raises(ConfigError, match=f"{key} in \\[alerts.channels.mail\\]"):
        parse_alerts({"channels": {"mail": {**table, key: value}}})


# --- who acknowledged it: whatever a terminal, a form or PagerDuty says ---------------------


def open_alert_id(engine: Any) -> str:
    apply(engine, evaluation(finding()), slack_config("chat", triage=("chat",)), {}, T0)
    with engine.connect() as connection:
        return str(connection.execute(select(alerts.c.id)).scalar_one())


@pytest.mark.parametrize("by", ["b" * 300, "ann\x00", "jos\udce9"])
def test_any_acknowledger_name_is_stored_on_both_databases(engine: Any, by: str) -> None:
    """Before: a name over 200 characters or with a NUL broke the acknowledgement on Postgres
    (DataError), and a lone surrogate (a non-UTF-8 byte in argv or $USER) on both."""
    alert = acknowledge(engine, open_alert_id(engine), by, T0 + MIN)
    assert alert["state"] == "acknowledged"
    with engine.connect() as connection:
        stored = connection.execute(select(alerts.c.acknowledged_by)).scalar_one()
    assert stored == alert["acknowledged_by"] and 0 < len(stored) <= 200
    stored.encode("utf-8")
    assert "\x00" not in stored and stored[:3] == by[:3]


# --- the CLI as a person types it, in a project `smallops init` made ------------------------

CLI = [sys.executable, "-c", "from smallops.cli import main; main()"]


def cli(root: Path, *args: str | bytes, env: dict[str, str] | None = None) -> Any:
    """`smallops ARGS` as a subprocess in `root`, at 80 columns."""
    return subprocess.run(
        [*CLI, *args],
        cwd=root,
        env={**os.environ, "COLUMNS": "80", **(env or {})},
        capture_output=True,
        text=True,
        errors="replace",
        timeout=120,
    )


@pytest.fixture
def made(tmp_path: Path) -> Path:
    """A project as `smallops init` makes it (its log in SQLite)."""
    done = cli(tmp_path, "init", "ops")
    assert done.returncode == 0, done.stderr
    return tmp_path / "ops"


def project_engine(root: Path, url: str = "sqlite:///.smallops/smallops.db") -> Any:
    engine = get_engine(normalise_url(url, root))
    ensure_schema(engine)
    return engine


def test_ack_by_a_name_that_is_not_utf8_acknowledges_without_a_traceback(made: Path) -> None:
    """Before: `--by` with a Latin-1 byte (a lone surrogate in Python) died with a
    UnicodeEncodeError traceback from the database driver."""
    alert_id = open_alert_id(project_engine(made))
    done = cli(made, "alerts", "ack", alert_id[-12:], "--by", b"Jos\xe9")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "acknowledged" in done.stdout
    listed = cli(made, "alerts", "list", "--json")
    assert json.loads(listed.stdout.splitlines()[0])["acknowledged_by"] == "Jos\ufffd"


# --- a Slack webhook URL (a secret) in what comes back ---------------------------------------


class _Echo(BaseHTTPRequestHandler):
    """A proxy in front of the service that does not know the path: Express's 404 page."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        raw = f"<pre>Cannot POST {self.path}</pre>".encode()
        self.send_response(404)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def echo() -> Any:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def secret_path() -> str:
    return f"/services/TFAKE/BFAKE/{secrets.token_urlsafe(18)}"


def test_a_slack_webhook_path_echoed_by_a_proxy_stays_out_of_the_detail(
    engine: Any, echo: str
) -> None:
    """Before: only the whole URL was blotted out, so "Cannot POST /services/T/B/<secret>"
    was kept in alert_notifications.detail, printed and logged."""
    path = secret_path()
    config = slack_config("chat", triage=("chat",))
    apply(engine, evaluation(finding()), config, {}, T0)
    [attempt] = Outbox(engine, config, {"HOOK_0": echo + path}).send_due(T0)
    assert attempt.outcome == "failed" and "Cannot POST" in attempt.detail
    [row] = outbox_rows(engine)
    for shown in (attempt.detail, row["detail"]):
        assert path not in shown and path[-12:] not in shown, shown


@pytest.mark.parametrize("junk", [" # ops channel", "\x7f"])
def test_a_slack_webhook_url_with_a_stray_character_stays_out_of_the_detail(
    engine: Any, echo: str, junk: str
) -> None:
    """Before: http.client's "URL can't contain control characters. '/services/...'" was the
    detail: the secret path in the outbox row, `alerts list --json`, the terminal and the log.
    (A Docker env-file keeps `# ops channel` after a value.)"""
    path = secret_path()
    config = slack_config("chat", triage=("chat",))
    apply(engine, evaluation(finding()), config, {}, T0)
    [attempt] = Outbox(engine, config, {"HOOK_0": echo + path + junk}).send_due(T0)
    assert attempt.outcome == "retry"
    [row] = outbox_rows(engine)
    for shown in (attempt.detail, row["detail"]):
        assert path not in shown and path[-12:] not in shown, shown
        assert "the URL or a secret" in shown


def raw_server(answer: bytes) -> tuple[socket.socket, str]:
    """A TCP server on 127.0.0.1 that reads a request and writes `answer`, then closes."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            with connection, contextlib.suppress(OSError):
                connection.recv(65536)
                connection.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    return server, f"http://127.0.0.1:{server.getsockname()[1]}/hooks/alerts"


def test_a_garbage_status_line_is_one_line_of_detail() -> None:
    """Before: the detail was the raw line, NUL and line break included."""
    server, url = raw_server(b"\x00\xffNOT HTTP AT ALL\r\nX: y\r\n\r\n")
    with server:
        outcome = _http.post(url, b"{}", {"Content-Type": "application/json"})
    assert isinstance(outcome, Retry)
    assert "\x00" not in outcome.detail and "\n" not in outcome.detail
    assert "NOT HTTP AT ALL" in outcome.detail


# --- an SMTP server that echoes the login back ----------------------------------------------


def echoing_smtp(methods: str) -> tuple[socket.socket, int]:
    """An SMTP server offering AUTH `methods` that refuses every login with a 535 quoting the
    client's line, as some relays' diagnostics do."""
    server = socket.create_server(("127.0.0.1", 0))

    def session(connection: socket.socket) -> None:
        with connection, connection.makefile("rb") as lines:
            connection.sendall(b"220 relay.test ESMTP\r\n")
            login = 0  # lines of an AUTH LOGIN still to come: the user name, the password
            for line in lines:
                verb = line.strip().upper()
                if login == 2:
                    login = 1
                    connection.sendall(b"334 UGFzc3dvcmQ6\r\n")
                elif login == 1 or verb.startswith(b"AUTH PLAIN"):
                    login = 0
                    connection.sendall(b"535 5.7.8 rejected: " + line.strip() + b"\r\n")
                elif verb.startswith((b"EHLO", b"HELO")):
                    connection.sendall(b"250-relay.test\r\n250 AUTH " + methods.encode() + b"\r\n")
                elif verb.startswith(b"QUIT"):
                    connection.sendall(b"221 bye\r\n")
                    return
                elif verb == b"AUTH LOGIN":
                    login = 2
                    connection.sendall(b"334 VXNlcm5hbWU6\r\n")
                elif verb.startswith(b"AUTH LOGIN "):  # the user name came with it
                    login = 1
                    connection.sendall(b"334 UGFzc3dvcmQ6\r\n")
                else:
                    connection.sendall(b"250 ok\r\n")

    def serve() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=session, args=(connection,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return server, server.getsockname()[1]


@pytest.mark.parametrize("methods", ["PLAIN", "LOGIN"])
def test_a_login_an_smtp_server_echoes_in_base64_stays_out_of_the_detail(methods: str) -> None:
    """Before: only the plain password was blotted out; "535 rejected: AUTH PLAIN <base64 of
    user and password>" went whole into the outbox row, `alerts list --json` and the log."""
    password = f"fake-{secrets.token_urlsafe(18)}"
    env = {"SMTP_USER": "alerts@acme.example", "SMTP_PASSWORD": password}
    server, port = echoing_smtp(methods)
    with server:
        channel = build_channel(
            ChannelConfig(
                "mail",
                "email",
                {
                    "host": "127.0.0.1",
                    "port": port,
                    "security": "none",
                    "from": "alerts@acme.example",
                    "to": ["ops@acme.example"],
                    "username_env": "SMTP_USER",
                    "password_env": "SMTP_PASSWORD",
                },
            ),
            env,
        )
        outcome = channel.send(sample_notification())
    assert "535" in outcome.detail and "rejected" in outcome.detail, outcome
    secret_forms = [
        password,
        base64.b64encode(password.encode()).decode(),
        base64.b64encode(f"\0alerts@acme.example\0{password}".encode()).decode(),
    ]
    for form in secret_forms:
        assert form not in outcome.detail and form[:12] not in outcome.detail, outcome.detail


def sample_notification() -> Notification:
    return Notification(
        id="ntf-1",
        alert_id="alr-1",
        event="firing",
        rule="error_spike",
        workflow="triage",
        dedup_key="smallops:error_spike:triage",
        severity="error",
        summary="triage: 40 errors in 200 calls",
        figures={"calls": 200},
        link=None,
        fired_at=T0,
        at=T0,
    )


# --- services that answer with too much, or with something else's page ----------------------


def test_an_endless_answer_is_not_read_to_its_end() -> None:
    """Before: a 2xx answer was read whole, however large: a service (or something in its
    place) announcing gigabytes held the send until the socket timed out, then called a
    delivered message undelivered, and a fast one filled the memory."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 10000000000\r\n\r\n"
    held = threading.Event()
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        connection, _ = server.accept()
        with connection, contextlib.suppress(OSError):  # the client hangs up mid-answer
            connection.recv(65536)
            connection.sendall(head + b"g" * (4 << 20))
            held.wait(30)  # and the rest never comes

    threading.Thread(target=serve, daemon=True).start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}/hooks/alerts"
    started = time.monotonic()
    with server:
        outcome = _http.post(url, b"{}", {"Content-Type": "application/json"}, timeout=5)
        held.set()
    assert isinstance(outcome, Sent), outcome
    assert time.monotonic() - started < 4 and len(outcome.detail) <= _http.MAX_DETAIL + 20


PROXY_PAGE = b"<html><body>Please sign in to the proxy to continue</body></html>"


def test_a_2xx_page_that_is_not_the_service_answer_is_not_taken_for_delivery() -> None:
    """Before: a proxy's 200 sign-in page counted as sent: `alerts test` said the route worked
    and the outbox marked the alert delivered, though neither Slack nor PagerDuty saw it."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(PROXY_PAGE), PROXY_PAGE)
    server, url = raw_server(answer)
    with server:
        slack = build_channel(ChannelConfig("chat", "slack"), {"SLACK_WEBHOOK_URL": url})
        pager = build_channel(
            ChannelConfig("pager", "pagerduty", {"url": url}),
            {"PAGERDUTY_ROUTING_KEY": secrets.token_hex(16)},
        )
        for channel in (slack, pager):
            outcome = channel.send(sample_notification())
            assert isinstance(outcome, Retry), outcome
            assert "sign in to the proxy" in outcome.detail


# --- a service that trickles its answer past the outbox's lease -----------------------------


def trickling_server(seconds: float) -> tuple[socket.socket, str, list[float]]:
    """Reads each request whole (a delivery), then answers one byte every 0.2 s for `seconds`
    before finishing a 200: each read is quick, the answer slow. Returns the server, its URL,
    and the times requests reached it."""
    server = socket.create_server(("127.0.0.1", 0))
    reached: list[float] = []

    def session(connection: socket.socket) -> None:
        with connection, contextlib.suppress(OSError):
            connection.recv(65536)
            reached.append(time.monotonic())
            connection.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            for _ in range(int(seconds / 0.2)):
                time.sleep(0.2)
                connection.sendall(b"z")
            connection.sendall(b"\r\nContent-Length: 2\r\n\r\nok")

    def serve() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=session, args=(connection,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return server, f"http://127.0.0.1:{server.getsockname()[1]}/services/T/B/fake", reached


def test_an_answer_trickled_past_the_lease_is_not_sent_twice(
    engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: each read waited at most 10 s but the attempt had no end, so a service that
    trickled its answer held the send past the 60 s lease, and the next `alerts check` (or
    serve's loop) sent the same message again. Here the lease is 3 s and the deadline 1 s."""
    monkeypatch.setattr(outbox_module, "LEASE", timedelta(seconds=3))
    monkeypatch.setattr(_deadline, "DEADLINE", 1.0)
    config = slack_config("chat", triage=("chat",))
    apply(engine, evaluation(finding()), config, {}, datetime.now(timezone.utc))
    server, url, reached = trickling_server(8)
    with server:
        first = threading.Thread(target=Outbox(engine, config, {"HOOK_0": url}).send_due)
        first.start()
        time.sleep(3.5)  # the lease has run out: a second sender comes by
        later = Outbox(engine, config, {"HOOK_0": url}).send_due()
        first.join(30)
    assert later == [] and len(reached) == 1
    [row] = outbox_rows(engine)
    assert row["state"] == "pending" and "within 1 s" in row["detail"]


def test_an_smtp_server_that_trickles_its_greeting_is_cut_off_at_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before: a tarpit greeting one byte at a time held the mail for as long as it liked."""
    monkeypatch.setattr(_deadline, "DEADLINE", 1.0)
    server = socket.create_server(("127.0.0.1", 0))

    def tarpit() -> None:
        connection, _ = server.accept()
        with connection, contextlib.suppress(OSError):
            for byte in b"220 slow.test ESMTP " + b"." * 60:
                time.sleep(0.2)
                connection.sendall(bytes([byte]))

    threading.Thread(target=tarpit, daemon=True).start()
    options = {"host": "127.0.0.1", "port": server.getsockname()[1], "security": "none"}
    mail = {**options, "from": "alerts@acme.example", "to": ["ops@acme.example"]}
    started = time.monotonic()
    with server:
        outcome = build_channel(ChannelConfig("mail", "email", mail), {}).send(
            sample_notification()
        )
    assert isinstance(outcome, Retry) and "within 1 s" in outcome.detail, outcome
    assert time.monotonic() - started < 4


def test_an_attempt_ends_well_inside_the_lease() -> None:
    assert timedelta(seconds=_deadline.DEADLINE * 1.25) < outbox_module.LEASE


def spool_dir_of(root: Path, url: str = "sqlite:///.smallops/smallops.db") -> Path:
    """The folder of the project's spool (and quarantine) for the database at `url`."""
    named = project_engine(root, url).url.render_as_string(hide_password=False)
    return spool_folder(Settings.load(root).spool_dir, named)


def spool_something(root: Path, url: str = "sqlite:///.smallops/smallops.db") -> None:
    """A spool file waiting for the database: the project-wide log_backlog rule fires."""
    folder = spool_dir_of(root, url)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "0001.jsonl").write_text("waiting\n")


def test_one_broken_workflow_module_does_not_silence_every_alert(made: Path) -> None:
    """Before: `alerts check` loaded every workflow or none, so a module that fails to import
    (a half-written workflow, a missing package) stopped every rule for every workflow, and
    the outbox too, with exit 2 from cron: nobody heard about anything."""
    spool_something(made)
    (made / "workflows" / "drafting.py").write_text("import a_package_nobody_installed\n")
    done = cli(made, "alerts", "check", "--no-send", "--json")
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    changes = json.loads(done.stdout)
    assert changes["fired"] == ["smallops:log_backlog:*"]
    [problem] = changes["problems"]
    assert "drafting.py" in problem and "a_package_nobody_installed" in problem


def test_alert_routing_for_a_workflow_that_does_not_exist_is_a_warning(made: Path) -> None:
    """Before: `[alerts.workflows.email_triage]` (the module's name, not the workflow's) was
    taken without a word and applied to nothing: the escalation to PagerDuty it asked for
    never happened, and `smallops check` said nothing."""
    toml = made / "smallops.toml"
    toml.write_text(
        toml.read_text()
        + '\n[alerts.channels.pager]\nkind = "pagerduty"\n'
        + '[alerts.workflows.email_triage]\nescalate_to = ["pager"]\n'
        + '[alerts.workflows."*"]\nchannels = ["pager"]\n'
    )
    done = cli(made, "check", "--json")
    warnings = [json.loads(line) for line in done.stdout.splitlines()]
    [typo] = [w for w in warnings if w["workflow"] == "email_triage"]
    assert typo["level"] == "warning" and "names no workflow" in typo["problem"]
    assert "email-triage" in typo["fix"]
    assert not [w for w in warnings if w["workflow"] == "*"]  # the project's own alerts


def test_alerts_list_fits_80_columns_whoever_acknowledged(made: Path) -> None:
    """Before: the state column carried the acknowledger's whole name and was never cut, so a
    PagerDuty name pushed the table past 80 columns and hid the summary."""
    engine = project_engine(made)
    acknowledge(engine, open_alert_id(engine), "PagerDuty: Margaret Hamilton-Featherstonehaugh")
    done = cli(made, "alerts", "list")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, done.stdout
    assert "summary" in lines[0] and lines[1].split()[1] == "acknowledged"


@pytest.mark.parametrize("given", ["", "abc", "  0c94  "])
def test_ack_with_too_short_an_id_speaks_of_alerts(made: Path, given: str) -> None:
    """Before: "run id 'abc' is too short; ... the run id a table prints": the wrong noun, at
    the wrong table, for someone acknowledging an alert."""
    done = cli(made, "alerts", "ack", given)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "alert id" in done.stderr and "run id" not in done.stderr
    assert "smallops alerts list" in done.stderr


# --- several `alerts check` processes at once ------------------------------------------------


def test_guard_checks_in_several_processes_at_once_fire_and_resolve_once(
    made: Path, database_url: str
) -> None:
    """Three `smallops alerts check` processes started together, on SQLite and on Postgres:
    one firing message, then (the spool emptied) one resolution, each with its own id."""
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    with Receiver() as receiver:
        toml = made / "smallops.toml"
        toml.write_text(
            toml.read_text()
            + f'\n[alerts]\nmin_firing = "1s"\n[alerts.channels.hook]\nkind = "webhook"\n'
            f'url = "{receiver.url}"\nsecret_env = "HOOK_SECRET"\n'
            '[alerts.workflows."*"]\nchannels = ["hook"]\n'
        )
        env = {"HOOK_SECRET": secret, "SMALLOPS_DATABASE_URL": database_url}
        project_engine(made, database_url)
        spool_something(made, database_url)

        def together() -> None:
            processes = [
                subprocess.Popen(
                    [*CLI, "alerts", "check"],
                    cwd=made,
                    env={**os.environ, **env},
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for _ in range(3)
            ]
            for process in processes:
                _, err = process.communicate(timeout=120)
                assert process.returncode == 0 and "Traceback" not in err, err

        together()
        time.sleep(1.5)  # past min_firing
        spool = spool_dir_of(made, database_url)
        for folder in (spool, quarantine_folder(spool)):  # a replay may have set it aside
            shutil.rmtree(folder, ignore_errors=True)
        together()
    kinds = [json.loads(body)["type"] for body, _ in receiver.accepted]
    assert sorted(kinds) == ["alert.firing", "alert.resolved"]
    assert len(set(receiver.ids)) == 2


# --- PagerDuty's word, late or replayed ------------------------------------------------------


@pytest.fixture
def web(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    from starlette.testclient import TestClient

    from smallops.review.desk import ReviewDesk
    from smallops.web.alerts_page import PAGERDUTY_SECRET_ENV
    from smallops.web.app import create_app

    engine = get_engine(normalise_url(database_url, tmp_path))
    ensure_schema(engine)
    settings = Settings(root=tmp_path, database_url=database_url)
    app = create_app(
        ReviewDesk(engine, {}), settings, require_login=False, reviewer="ann", secret_key=b"k" * 32
    )
    secret = "pd-webhook-" + secrets.token_hex(10)
    monkeypatch.setenv(PAGERDUTY_SECRET_ENV, secret)
    return TestClient(app, base_url="http://127.0.0.1"), engine, secret


def pagerduty_ack(client: Any, secret: str, key: str, occurred_at: datetime) -> Any:
    body = json.dumps(
        {
            "event": {
                "event_type": "incident.acknowledged",
                "occurred_at": occurred_at.isoformat().replace("+00:00", "Z"),
                "agent": {"summary": "Bo On-Call"},
                "data": {"type": "incident", "incident_key": key, "status": "acknowledged"},
            }
        }
    ).encode()
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    headers = {"X-PagerDuty-Signature": f"v1={digest}", "Content-Type": "application/json"}
    return client.post("/alerts/pagerduty", content=body, headers=headers)


def test_a_pagerduty_acknowledgement_from_before_the_alert_fired_acknowledges_nothing(
    web: Any,
) -> None:
    """Before: an acknowledgement was matched by incident key alone, and a rule's key is the
    same for each new alert of it (the breaker of a workflow, say). A late webhook (PagerDuty
    retries for hours) or a replayed one about the last incident acknowledged the new alert,
    and nobody was escalated to."""
    client, engine, secret = web
    fired = datetime.now(timezone.utc)
    apply(engine, evaluation(finding()), slack_config("chat", triage=("chat",)), {}, fired)
    key = finding().dedup_key
    stale = pagerduty_ack(client, secret, key, fired - timedelta(hours=2))
    assert stale.status_code == 202 and stale.json()["acknowledged"] is None
    with engine.connect() as connection:
        assert connection.execute(select(alerts.c.state)).scalar_one() == "firing"
    fresh = pagerduty_ack(client, secret, key, fired + MIN)
    assert fresh.status_code == 202 and fresh.json()["acknowledged"]


# --- one service down must not hold up the others --------------------------------------------


class _Stalls(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        time.sleep(5)  # past the (shortened) deadline: no answer

    def log_message(self, *args: Any) -> None:
        pass


def test_a_channel_that_does_not_answer_is_tried_once_a_round_and_holds_up_no_page(
    engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: each of a dead channel's messages waited out its own timeout in turn, and was
    tried again in the same round once its backoff had passed: with Slack down, a round took
    minutes per message and the PagerDuty page queued behind them waited as long."""
    monkeypatch.setattr(_deadline, "DEADLINE", 0.5)
    stalled = ThreadingHTTPServer(("127.0.0.1", 0), _Stalls)
    threading.Thread(target=stalled.serve_forever, daemon=True).start()
    workflows = {f"wf{i}": ("chat",) for i in range(4)}
    config = slack_config("chat", "pager", **workflows, paged=("pager",))
    names = (*workflows, "paged")
    apply(engine, evaluation(*(finding(n) for n in names), workflows=names), config, {}, T0)
    with SlackFake() as pager:
        env = {
            "HOOK_0": f"http://127.0.0.1:{stalled.server_address[1]}/x",
            "HOOK_1": pager.webhook_url,
        }
        attempts = Outbox(engine, config, env).send_due(T0 + MIN)
    stalled.shutdown()
    stalled.server_close()
    assert [(a.channel, a.outcome) for a in attempts if a.channel == "chat"] == [("chat", "retry")]
    assert len(pager.posts) == 1
    waiting = [row for row in outbox_rows(engine) if row["channel"] == "chat"]
    assert [row["state"] for row in waiting] == ["pending"] * 4


# --- guards: what was tried and held (these passed before any change) --------------------------


def test_guard_an_smtp_server_dropping_mid_data_gets_the_same_mail_again() -> None:
    """The connection dropped in the middle of DATA: a Retry, and the next attempt sends the
    same mail (the same Message-ID), which the server then takes once."""
    server = socket.create_server(("127.0.0.1", 0))
    taken: list[bytes] = []

    def session(connection: socket.socket, drop: bool) -> None:
        with connection, connection.makefile("rb") as lines, contextlib.suppress(OSError):
            connection.sendall(b"220 relay.test ESMTP\r\n")
            for line in lines:
                verb = line.strip().upper()
                if verb.startswith(b"EHLO"):
                    connection.sendall(b"250-relay.test\r\n250 8BITMIME\r\n")
                elif verb == b"DATA":
                    connection.sendall(b"354 go on\r\n")
                    body = b"".join(iter(lines.readline, b".\r\n"))
                    if drop:
                        connection.shutdown(socket.SHUT_RDWR)
                        return
                    taken.append(body)
                    connection.sendall(b"250 2.0.0 queued\r\n")
                elif verb == b"QUIT":
                    connection.sendall(b"221 bye\r\n")
                    return
                else:
                    connection.sendall(b"250 ok\r\n")

    def serve() -> None:
        for drop in (True, False):
            connection, _ = server.accept()
            session(connection, drop)

    threading.Thread(target=serve, daemon=True).start()
    options = {"host": "127.0.0.1", "port": server.getsockname()[1], "security": "none"}
    mail = {**options, "from": "alerts@acme.example", "to": ["ops@acme.example"]}
    channel = build_channel(ChannelConfig("mail", "email", mail), {})
    with server:
        first = channel.send(sample_notification())
        second = channel.send(sample_notification())
    assert isinstance(first, Retry) and "no answer" in first.detail, first
    assert isinstance(second, Sent), second
    [body] = taken
    assert b"Message-ID: <alert-alr-1@acme.example>" in body


# --- a secret pasted where its variable's name goes ------------------------------------------


@pytest.mark.parametrize(
    ("kind", "key"),
    [("pagerduty", "routing_key_env"), ("email", "password_env"), ("slack", "token_env")],
)
def test_a_secret_pasted_as_a_variable_name_is_refused_without_repeating_it(
    kind: str, key: str
) -> None:
    """Before: routing_key_env = "<the routing key>" (a PagerDuty key is a valid variable name
    when it starts with a letter) was taken, and "needs the routing key in $<the key>, which is
    not set" went into alert_notifications.detail, the terminal and the log on every retry."""
    pasted = "e" + secrets.token_hex(16)[1:]  # the shape of a PagerDuty routing key
    table: dict[str, Any] = {"kind": kind, key: pasted}
    if kind == "email":
        table.update(host="smtp.acme.example", username_env="SMTP_USER")
        table["from"] = "alerts@acme.example"
    if kind == "slack":
        table["channel"] = "#ops"
    with pytest.raises(ConfigError) as raised:
        parse_alerts({"channels": {"x": table}})
    assert pasted not in str(raised.value) and "secret" in str(raised.value)
    parse_alerts({"channels": {"x": {**table, key: "OPS_SECRET_2"}}})  # a name is fine
