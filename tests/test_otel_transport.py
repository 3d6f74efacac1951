"""The export's HTTP transport (storage/otel_http.py): one kept-alive `http.client` connection
that sends what the SDK's requests transport would, against real receivers on 127.0.0.1."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path
from typing import Any

import pytest

from smallops.storage import otel_export
from smallops.testing import recorded_runs

from otlp_receiver import OtlpReceiver

pytest.importorskip("opentelemetry.sdk")

EMAIL = {"subject": "Invoice", "body": "Please pay it."}


@pytest.fixture
def runs(make_workflow, emulator, monkeypatch) -> list[dict[str, Any]]:
    """Three logged runs (the live export off), each two spans when exported."""
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    wf = make_workflow(review="none")
    for _ in range(3):
        wf.run(**EMAIL)
    return recorded_runs(wf)


def export_to(url: str, monkeypatch: pytest.MonkeyPatch, **env: str) -> otel_export.SpanExport:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return otel_export.SpanExport(timeout=2.0)


def transport_of(export: otel_export.SpanExport) -> Any:
    return export._sdk._exporter._client._transport


def send_each(export: otel_export.SpanExport, runs: list[dict[str, Any]]) -> list[int]:
    """Each run in a request of its own; the spans the collector took each time."""
    return [export.send_now([(run, None, None)]) for run in runs]


def test_spans_go_over_one_kept_alive_connection(runs, monkeypatch):
    with OtlpReceiver(keep_alive=True) as collector:
        export = export_to(collector.url, monkeypatch, OTEL_EXPORTER_OTLP_HEADERS="x-team=ops")
        assert type(transport_of(export)).__module__ == "smallops.storage.otel_http"
        assert send_each(export, runs) == [2, 2, 2]
        export.close()
    assert collector.requests == 3 and collector.connections == 1
    assert len(collector.spans) == 6 and export.dropped == 0
    assert all(h["x-team"] == "ops" for h in collector.headers)
    assert all(h["content-type"] == "application/x-protobuf" for h in collector.headers)


def test_a_connection_the_collector_closed_is_opened_again(runs, monkeypatch):
    """A collector that hangs up after each answer without saying so (an idle timeout): the
    next request finds the connection dead and goes again on a new one; nothing is lost."""
    with OtlpReceiver(keep_alive=True, hang_up=True) as collector:
        export = export_to(collector.url, monkeypatch)
        assert send_each(export, runs) == [2, 2, 2]
        export.close()
    assert len(collector.spans) == 6 and export.dropped == 0
    assert collector.connections == 3


@pytest.mark.parametrize("compression", ["gzip", "deflate"])
def test_the_sdks_compression_setting_is_obeyed(runs, monkeypatch, compression):
    with OtlpReceiver(keep_alive=True) as collector:
        export = export_to(collector.url, monkeypatch, OTEL_EXPORTER_OTLP_COMPRESSION=compression)
        assert send_each(export, runs[:1]) == [2]
        export.close()
    assert collector.headers[0]["content-encoding"] == compression
    assert len(collector.spans) == 2


def test_a_busy_collector_is_asked_again_after_its_retry_after(runs, monkeypatch):
    with OtlpReceiver(keep_alive=True, statuses=(503, 429)) as collector:
        export = export_to(collector.url, monkeypatch)
        assert send_each(export, runs[:1]) == [2]
        export.close()
    assert collector.requests == 3 and len(collector.spans) == 2 and export.dropped == 0


def test_a_refused_batch_is_dropped_and_counted(runs, monkeypatch):
    with OtlpReceiver(keep_alive=True, statuses=(400,)) as collector:
        export = export_to(collector.url, monkeypatch)
        assert send_each(export, runs[:2]) == [0, 2]  # the second goes on the same connection
        export.close()
    assert export.dropped == 2 and collector.connections == 1


def certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "smallops test collector")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "collector.pem", folder / "collector.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def test_https_is_verified_against_the_certificate_the_sdk_variable_names(
    runs, monkeypatch, tmp_path
):
    """OTEL_EXPORTER_OTLP_CERTIFICATE names the collector's certificate: spans go. Without it
    the certificate is checked against the usual authorities, fails, and they are counted."""
    pytest.importorskip("cryptography")
    cert_file, key_file = certificate(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert_file, key_file)
    with OtlpReceiver(keep_alive=True, tls=tls) as collector:
        assert collector.url.startswith("https://")
        trusted = export_to(
            collector.url, monkeypatch, OTEL_EXPORTER_OTLP_CERTIFICATE=str(cert_file)
        )
        assert send_each(trusted, runs[:2]) == [2, 2]
        trusted.close()
        monkeypatch.delenv("OTEL_EXPORTER_OTLP_CERTIFICATE")
        untrusted = otel_export.SpanExport(timeout=2.0)
        assert send_each(untrusted, runs[:1]) == [0]
        untrusted.close()
    assert len(collector.spans) == 4 and trusted.dropped == 0
    assert untrusted.dropped == 2


def test_a_proxy_for_the_collector_keeps_the_sdks_own_transport(runs, monkeypatch):
    """The lean transport knows no proxies: where one applies, requests sends (and obeys it)."""
    with OtlpReceiver(keep_alive=True) as collector:
        monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
        monkeypatch.setenv("NO_PROXY", "example.invalid")
        proxied = export_to(collector.url, monkeypatch)
        assert type(transport_of(proxied)).__module__ != "smallops.storage.otel_http"
        proxied.close()
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        direct = export_to(collector.url, monkeypatch)
        assert type(transport_of(direct)).__module__ == "smallops.storage.otel_http"
        assert send_each(direct, runs[:1]) == [2]
        direct.close()


def test_a_certificate_that_cannot_be_read_costs_counted_spans_not_the_export(
    runs, monkeypatch, tmp_path
):
    missing = tmp_path / "no-such.pem"
    export = export_to(
        "https://127.0.0.1:9", monkeypatch, OTEL_EXPORTER_OTLP_CERTIFICATE=str(missing)
    )
    assert send_each(export, runs[:1]) == [0]
    export.close()
    assert export.dropped == 2
