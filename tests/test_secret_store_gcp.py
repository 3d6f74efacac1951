"""The gcp-sm: store through google-cloud-secret-manager (REST) against a local Secret Manager,
signed in with Application Default Credentials from a service account key made at run time."""

from __future__ import annotations

import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from smallops.errors import MissingExtraError
from smallops.secret_refs import SecretRef
from smallops.secrets.base import SecretStoreError, store_for
from smallops.secrets.stores.gcp import GcpSecretManager, version_name

from gcp_sm_fake import GcpSmFake
from tcpproxy import TcpProxy

READER = "smallops@smallops-test.iam.gserviceaccount.com"


@pytest.fixture
def gcp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[GcpSmFake]:
    for name in ("GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CONFIG", "GOOGLE_API_USE_CLIENT_CERTIFICATE"):
        monkeypatch.delenv(name, raising=False)
    with GcpSmFake() as fake:
        account = fake.account(READER)
        key_file = account.credentials_file(tmp_path, token_uri=f"{fake.url}/token")
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
        monkeypatch.setenv("SMALLOPS_GCP_SM_ENDPOINT", fake.url)
        yield fake


def ref(text: str) -> SecretRef:
    return SecretRef.parse(text)


def fails(store: GcpSecretManager, text: str) -> SecretStoreError:
    with pytest.raises(SecretStoreError) as caught:
        store.fetch(ref(text))
    assert text in caught.value.message
    assert "\n" not in caught.value.message
    return caught.value


def test_latest_a_number_an_alias_and_the_resource_name(gcp: GcpSmFake) -> None:
    key1, key2 = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    gcp.add("acme-prod", "openai-key", key1.encode(), readers=(READER,))
    gcp.add("acme-prod", "openai-key", key2.encode(), readers=(READER,))
    gcp.aliases[("acme-prod", "openai-key", "stable")] = 1
    store = GcpSecretManager(timeout=2)

    latest = store.fetch(ref("gcp-sm:acme-prod/openai-key"))
    assert (latest.value, latest.version, latest.updated_at) == (key2, "2", None)
    assert store.fetch(ref("gcp-sm:acme-prod/openai-key#1")).value == key1
    assert store.fetch(ref("gcp-sm:acme-prod/openai-key#stable")).version == "1"
    full = store.fetch(ref("gcp-sm:projects/acme-prod/secrets/openai-key/versions/2"))
    assert full.value == key2
    assert store.fetch(ref("gcp-sm:projects/acme-prod/secrets/openai-key")).version == "2"

    assert gcp.count() == 5  # one request a fetch, and no token exchange
    assert (
        gcp.requests[0].path == "/v1/projects/acme-prod/secrets/openai-key/versions/latest:access"
    )


def test_found_by_the_scheme_lookup(gcp: GcpSmFake) -> None:
    key = secrets.token_urlsafe(32)
    gcp.add("acme-prod", "openai-key", key.encode(), readers=(READER,))
    store = store_for("gcp-sm")
    assert isinstance(store, GcpSecretManager)
    assert store.fetch(ref("gcp-sm:acme-prod/openai-key")).value == key


def test_references_that_cannot_name_a_version() -> None:
    for text in (
        "gcp-sm:acme-prod",
        "gcp-sm:acme-prod/openai-key/extra",
        "gcp-sm:projects/acme-prod/secrets/openai-key/versions/2#3",
        "gcp-sm:projects/acme-prod/openai-key",
        "gcp-sm:acme-prod/openai-key#1/2",
    ):
        with pytest.raises(SecretStoreError) as caught:
            version_name(ref(text))
        assert text in caught.value.message and caught.value.hint, text
    regional = "gcp-sm:projects/p/locations/europe-west1/secrets/s/versions/latest"
    assert version_name(ref(regional)) == regional.removeprefix("gcp-sm:")


def test_not_found_and_disabled(gcp: GcpSmFake) -> None:
    key = secrets.token_urlsafe(32)
    gcp.add("acme-prod", "openai-key", key.encode(), readers=(READER,))
    gcp.add("acme-prod", "old-key", key.encode(), readers=(READER,))
    gcp.versions[("acme-prod", "old-key")][0]["state"] = "DISABLED"
    store = GcpSecretManager(timeout=2)

    missing = fails(store, "gcp-sm:acme-prod/openai-key#7")
    assert missing.unreachable is False and "no such secret or version" in missing.message
    disabled = fails(store, "gcp-sm:acme-prod/old-key")
    assert disabled.unreachable is False and "disabled or destroyed" in disabled.message
    assert key not in missing.message + disabled.message


def test_denied_and_unknown_credentials(
    gcp: GcpSmFake, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    key = secrets.token_urlsafe(32)
    gcp.add("acme-prod", "openai-key", key.encode(), readers=("someone-else@x.iam",))

    denied = fails(GcpSecretManager(timeout=2), "gcp-sm:acme-prod/openai-key")
    assert denied.unreachable is False
    assert "access denied" in denied.message and "secretAccessor" in denied.hint
    assert gcp.count() == 1

    stranger = gcp.account("stranger@elsewhere.iam.gserviceaccount.com")
    del gcp.accounts[stranger.key_id]  # a key the store has never heard of
    other = stranger.credentials_file(tmp_path, token_uri=f"{gcp.url}/token")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(other))
    refused = fails(GcpSecretManager(timeout=2), "gcp-sm:acme-prod/openai-key")
    assert refused.unreachable is False
    assert "did not accept the credentials" in refused.message
    assert gcp.count() == 1 + 3  # google-auth signs anew and retries a 401 twice

    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    none = fails(GcpSecretManager(timeout=2), "gcp-sm:acme-prod/openai-key")
    assert "no Google credentials" in none.message and "gcloud auth" in none.hint
    assert gcp.count() == 4


def test_store_down_is_unreachable(gcp: GcpSmFake, monkeypatch: pytest.MonkeyPatch) -> None:
    gcp.add("acme-prod", "openai-key", b"k", readers=(READER,))
    proxy = TcpProxy(("127.0.0.1", gcp.port))
    monkeypatch.setenv("SMALLOPS_GCP_SM_ENDPOINT", f"http://127.0.0.1:{proxy.port}")
    store = GcpSecretManager(timeout=2)
    store.fetch(ref("gcp-sm:acme-prod/openai-key"))
    proxy.cut()
    try:
        error = fails(store, "gcp-sm:acme-prod/openai-key")
    finally:
        proxy.close()
    assert error.unreachable is True and "cannot connect" in error.message


def test_store_stalled_gives_up_within_the_timeout(
    gcp: GcpSmFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    gcp.add("acme-prod", "openai-key", b"k", readers=(READER,))
    proxy = TcpProxy(("127.0.0.1", gcp.port))
    monkeypatch.setenv("SMALLOPS_GCP_SM_ENDPOINT", f"http://127.0.0.1:{proxy.port}")
    store = GcpSecretManager(timeout=0.5)
    proxy.stall()
    started = time.monotonic()
    try:
        error = fails(store, "gcp-sm:acme-prod/openai-key")
    finally:
        proxy.close()
    assert time.monotonic() - started < 1.5
    assert error.unreachable is True and "did not answer within 0.5s" in error.message


@pytest.mark.parametrize(
    "value",
    ["ключ-🔑-" + secrets.token_urlsafe(16), "x" * 200_000, "line one\nline two\r\n"],
    ids=["unicode", "long", "newlines"],
)
def test_hostile_values_come_back_unchanged(gcp: GcpSmFake, value: str) -> None:
    gcp.add("acme-prod", "odd", value.encode(), readers=(READER,))
    assert GcpSecretManager(timeout=2).fetch(ref("gcp-sm:acme-prod/odd")).value == value


def test_bytes_that_are_not_text(gcp: GcpSmFake) -> None:
    gcp.add("acme-prod", "binary", b"\xff\xfe" + secrets.token_bytes(16), readers=(READER,))
    error = fails(GcpSecretManager(timeout=2), "gcp-sm:acme-prod/binary")
    assert "not UTF-8 text" in error.message and error.unreachable is False


def test_without_the_library_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import google.cloud

    monkeypatch.setitem(sys.modules, "google.cloud.secretmanager", None)
    monkeypatch.delattr(google.cloud, "secretmanager", raising=False)
    with pytest.raises(MissingExtraError) as caught:
        GcpSecretManager()
    assert caught.value.hint == "pip install 'smallops[gcp]'"
