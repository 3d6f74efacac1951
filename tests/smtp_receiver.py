"""A real SMTP server on 127.0.0.1 (aiosmtpd) that keeps what it receives, for the email channel.

It can offer STARTTLS, or speak TLS from the first byte, with a self-signed certificate for
127.0.0.1 made at test time (`self_signed`); require a login; and answer scripted replies
("451 ..." or "550 ...") to the next RCPT or DATA commands before it accepts again.
"""

from __future__ import annotations

import contextlib
import datetime
import email
import email.message
import email.policy
import ipaddress
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


@dataclass(frozen=True)
class Received:
    """One accepted message: the envelope, the parsed mail, and how it came."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    message: email.message.EmailMessage
    tls: bool
    login: str | None

    @property
    def text(self) -> str:
        """The plain-text body, with the line ends of the wire made "\n"."""
        part = self.message.get_body(("plain",))
        assert part is not None, "no text/plain part"
        return str(part.get_content()).replace("\r\n", "\n")


@dataclass(frozen=True)
class Certificate:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key, as PEM files."""

    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context


def self_signed(folder: Path) -> Certificate:
    """Made with the `cryptography` package when it is installed, else the openssl command."""
    cert, key = folder / "smtp-cert.pem", folder / "smtp-key.pem"
    try:
        _with_cryptography(cert, key)
    except ImportError:
        openssl = shutil.which("openssl")
        assert openssl, "a TLS test needs the cryptography package or the openssl command"
        subprocess.run(
            [
                openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
    return Certificate(cert, key)


def _with_cryptography(cert_path: Path, key_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


class _Controller(Controller):
    """Binds port 0 (a free port chosen by the system, no race) and learns which it got."""

    def _trigger_server(self) -> None:
        assert self.server is not None
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


class SMTPReceiver:
    """An SMTP server on 127.0.0.1 for a `with` block; `port` once started.

    `starttls` offers STARTTLS with the certificate (and then requires it); `implicit_tls`
    speaks TLS from the first byte instead. `login=(user, password)` requires that login
    (over TLS). Replies put in `rcpt_replies` / `data_replies` answer the next RCPT / DATA
    commands in turn; once they are used up it accepts again.
    """

    def __init__(
        self,
        *,
        certificate: Certificate | None = None,
        starttls: bool = False,
        implicit_tls: bool = False,
        login: tuple[str, str] | None = None,
    ) -> None:
        self.messages: list[Received] = []
        self.rcpt_replies: list[str] = []
        self.data_replies: list[str] = []
        self.logins: list[str] = []  # user names that tried to log in, accepted or not
        options: dict[str, Any] = {"server_hostname": "smtp.test.invalid"}
        if starttls or implicit_tls:
            assert certificate is not None, "TLS needs a certificate"
        if starttls:
            options.update(tls_context=certificate.server_context(), require_starttls=True)
        if implicit_tls:
            options["ssl_context"] = certificate.server_context()
        if login is not None:
            options.update(authenticator=self._authenticator(login), auth_required=True)
        self._controller = _Controller(_Handler(self), hostname="127.0.0.1", port=0, **options)

    @property
    def port(self) -> int:
        return int(self._controller.port)

    def __enter__(self) -> SMTPReceiver:
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(AssertionError):
            self._controller.stop()

    def _authenticator(self, login: tuple[str, str]) -> Any:
        user, password = login[0].encode(), login[1].encode()

        def check(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
            if isinstance(data, LoginPassword):
                self.logins.append(data.login.decode())
                if data.login == user and data.password == password:
                    return AuthResult(success=True, auth_data=login[0])
            return AuthResult(success=False, handled=False)

        return check


class _Handler:
    def __init__(self, receiver: SMTPReceiver) -> None:
        self.receiver = receiver

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if self.receiver.rcpt_replies:
            return self.receiver.rcpt_replies.pop(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.receiver.data_replies:
            return self.receiver.data_replies.pop(0)
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.receiver.messages.append(
            Received(
                mail_from=envelope.mail_from,
                rcpt_tos=tuple(envelope.rcpt_tos),
                message=message,  # type: ignore[arg-type]
                tls=server.transport.get_extra_info("ssl_object") is not None,
                login=session.auth_data if session.authenticated else None,
            )
        )
        return f"250 2.0.0 Ok: queued as Q{len(self.receiver.messages)}"
