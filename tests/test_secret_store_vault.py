"""The vault: store through hvac against a local Vault speaking the KV v2 and AppRole API."""

from __future__ import annotations

import secrets
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest

from smallops.errors import MissingExtraError
from smallops.secret_refs import SecretRef
from smallops.secrets.base import SecretStoreError, store_for
from smallops.secrets.stores.vault import VaultKV2

from tcpproxy import TcpProxy
from vault_fake import VaultFake

VAULT_ENV = ("VAULT_ADDR", "VAULT_TOKEN", "VAULT_NAMESPACE", "VAULT_ROLE_ID", "VAULT_SECRET_ID")


@pytest.fixture
def vault(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> Iterator[VaultFake]:
    for name in (*VAULT_ENV, "VAULT_APPROLE_MOUNT", "VAULT_CACERT", "VAULT_CAPATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.vault-token from the machine
    with VaultFake() as fake:
        monkeypatch.setenv("VAULT_ADDR", fake.url)
        yield fake


def ref(text: str) -> SecretRef:
    return SecretRef.parse(text)


def with_token(monkeypatch: pytest.MonkeyPatch, token: str) -> VaultKV2:
    monkeypatch.setenv("VAULT_TOKEN", token)
    return VaultKV2(timeout=2)


def test_a_field_with_its_version_and_time(
    vault: VaultFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    key1, key2 = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    vault.put("secret", "team/openai", {"api_key": key1, "org": "acme"})
    vault.put("secret", "team/openai", {"api_key": key2, "org": "acme"})
    store = with_token(monkeypatch, vault.root_token)

    got = store.fetch(ref("vault:secret/team/openai#api_key"))

    assert got.value == key2
    assert got.version == "2"
    assert got.updated_at is not None
    assert abs(datetime.now(timezone.utc) - got.updated_at) < timedelta(minutes=1)
    assert store.fetch(ref("vault:secret/team/openai#org")).value == "acme"
    (first, *_) = vault.requests
    assert first.path == "/v1/secret/data/team/openai"
    assert first.headers["x-vault-token"] == vault.root_token


def test_found_by_the_scheme_lookup_and_in_a_namespace(
    vault: VaultFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = secrets.token_urlsafe(32)
    vault.put("kv", "openai", {"api_key": key}, namespace="admin/team-a")
    monkeypatch.setenv("VAULT_TOKEN", vault.root_token)
    monkeypatch.setenv("VAULT_NAMESPACE", "admin/team-a")

    store = store_for("vault")

    assert isinstance(store, VaultKV2)
    assert store.fetch(ref("vault:kv/openai#api_key")).value == key
    assert vault.requests[-1].headers["x-vault-namespace"] == "admin/team-a"


def test_without_a_field_the_only_key_or_a_list_of_keys(
    vault: VaultFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = secrets.token_urlsafe(32)
    vault.put("secret", "single", {"token": key})
    vault.put("secret", "several", {"token": key, "other": "x"})
    store = with_token(monkeypatch, vault.root_token)

    assert store.fetch(ref("vault:secret/single")).value == key
    with pytest.raises(SecretStoreError) as several:
        store.fetch(ref("vault:secret/several"))
    assert several.value.unreachable is False
    assert "vault:secret/several" in several.value.message
    assert "other, token" in several.value.message
    assert key not in str(several.value) + several.value.hint


def test_not_found_missing_field_deleted_and_no_path(
    vault: VaultFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = secrets.token_urlsafe(32)
    vault.put("secret", "openai", {"api_key": key})
    vault.put("secret", "gone", {"api_key": key})
    vault.delete_latest("secret", "gone")
    store = with_token(monkeypatch, vault.root_token)

    for text, words in [
        ("vault:secret/nothing-here#api_key", "no such secret"),
        ("vault:secret/gone#api_key", "no such secret"),
        ("vault:secret/openai#apikey", "no field 'apikey'"),
        ("vault:secret#api_key", "names no path"),
    ]:
        with pytest.raises(SecretStoreError) as caught:
            store.fetch(ref(text))
        error = caught.value
        assert error.unreachable is False, text
        assert text in error.message and words in error.message, error.message
        assert key not in error.message + error.hint
        assert "\n" not in error.message


def test_a_wrong_token_or_policy_is_denied_not_unreachable(
    vault: VaultFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    vault.put("secret", "openai", {"api_key": secrets.token_urlsafe(32)})
    vault.put("secret", "locked", {"api_key": secrets.token_urlsafe(32)})
    vault.denied.add("secret/locked")
    wrong = "hvs." + secrets.token_urlsafe(24)

    with pytest.raises(SecretStoreError) as caught:
        with_token(monkeypatch, wrong).fetch(ref("vault:secret/openai#api_key"))
    assert caught.value.unreachable is False
    assert "denied" in caught.value.message
    assert wrong not in caught.value.message + caught.value.hint
    assert vault.count() == 1  # a plain token is not logged in again

    with pytest.raises(SecretStoreError) as policy:
        with_token(monkeypatch, vault.root_token).fetch(ref("vault:secret/locked#api_key"))
    assert "denied" in policy.value.message


def test_no_credentials_at_all(vault: VaultFake) -> None:
    with pytest.raises(SecretStoreError) as caught:
        VaultKV2().fetch(ref("vault:secret/openai#api_key"))
    assert "no Vault credentials" in caught.value.message
    assert "VAULT_TOKEN" in caught.value.hint
    assert vault.count() == 0


def approle(monkeypatch: pytest.MonkeyPatch, vault: VaultFake, secret_id: str = "") -> None:
    monkeypatch.setenv("VAULT_ROLE_ID", vault.role_id)
    monkeypatch.setenv("VAULT_SECRET_ID", secret_id or vault.secret_id)


def test_approle_logs_in_once_and_again_after_a_403(
    vault: VaultFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = secrets.token_urlsafe(32)
    vault.put("secret", "openai", {"api_key": key})
    approle(monkeypatch, vault)
    store = VaultKV2(timeout=2)

    for _ in range(5):
        assert store.fetch(ref("vault:secret/openai#api_key")).value == key
    assert vault.logins == 1
    assert vault.count("POST", "/v1/auth/approle/login") == 1

    vault.revoke_all()  # the token's TTL ran out while the process lived on
    assert store.fetch(ref("vault:secret/openai#api_key")).value == key
    assert vault.logins == 2
    reads = [r for r in vault.requests if r.method == "GET"]
    assert [r.headers["x-vault-token"] == reads[0].headers["x-vault-token"] for r in reads] == [
        True
    ] * 6 + [False]  # the refused read, then one with the new token


def test_approle_refused_by_policy_logs_in_once_more_then_says_denied(
    vault: VaultFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    vault.put("secret", "locked", {"api_key": secrets.token_urlsafe(32)})
    vault.denied.add("secret/locked")
    approle(monkeypatch, vault)

    with pytest.raises(SecretStoreError) as caught:
        VaultKV2(timeout=2).fetch(ref("vault:secret/locked#api_key"))

    assert caught.value.unreachable is False and "denied" in caught.value.message
    assert (vault.logins, vault.count("GET")) == (2, 2)


def test_approle_logs_in_again_before_its_lease_ends(
    vault: VaultFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    vault.token_ttl = 1
    vault.put("secret", "openai", {"api_key": secrets.token_urlsafe(32)})
    approle(monkeypatch, vault)
    store = VaultKV2(timeout=2)

    store.fetch(ref("vault:secret/openai#api_key"))
    time.sleep(1.0)
    store.fetch(ref("vault:secret/openai#api_key"))

    assert vault.logins == 2
    assert vault.count("GET") == 2  # no read was refused on the way


def test_approle_on_another_mount_and_a_wrong_secret_id(
    vault: VaultFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    vault.approle_mount = "ci-approle"
    vault.put("secret", "openai", {"api_key": secrets.token_urlsafe(32)})
    wrong = secrets.token_hex(16)
    approle(monkeypatch, vault, secret_id=wrong)
    monkeypatch.setenv("VAULT_APPROLE_MOUNT", "ci-approle")

    with pytest.raises(SecretStoreError) as caught:
        VaultKV2(timeout=2).fetch(ref("vault:secret/openai#api_key"))
    assert caught.value.unreachable is False
    assert "AppRole login" in caught.value.message
    assert wrong not in str(caught.value) + caught.value.hint

    monkeypatch.setenv("VAULT_SECRET_ID", vault.secret_id)
    assert VaultKV2(timeout=2).fetch(ref("vault:secret/openai#api_key")).value
    assert vault.count("POST", "/v1/auth/ci-approle/login") == 2


def test_vault_down_is_unreachable(vault: VaultFake, monkeypatch: pytest.MonkeyPatch) -> None:
    vault.put("secret", "openai", {"api_key": secrets.token_urlsafe(32)})
    proxy = TcpProxy(("127.0.0.1", vault.port))
    monkeypatch.setenv("VAULT_ADDR", f"http://127.0.0.1:{proxy.port}")
    store = with_token(monkeypatch, vault.root_token)
    store.fetch(ref("vault:secret/openai#api_key"))
    proxy.cut()
    try:
        with pytest.raises(SecretStoreError) as caught:
            store.fetch(ref("vault:secret/openai#api_key"))
    finally:
        proxy.close()
    assert caught.value.unreachable is True
    assert "cannot connect to Vault" in caught.value.message


def test_vault_stalled_gives_up_within_the_timeout(
    vault: VaultFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    vault.put("secret", "openai", {"api_key": secrets.token_urlsafe(32)})
    proxy = TcpProxy(("127.0.0.1", vault.port))
    monkeypatch.setenv("VAULT_ADDR", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.setenv("VAULT_TOKEN", vault.root_token)
    store = VaultKV2(timeout=0.5)
    proxy.stall()
    started = time.monotonic()
    try:
        with pytest.raises(SecretStoreError) as caught:
            store.fetch(ref("vault:secret/openai#api_key"))
    finally:
        proxy.close()
    assert time.monotonic() - started < 1.5
    assert caught.value.unreachable is True
    assert "did not answer within 0.5s" in caught.value.message


@pytest.mark.parametrize(
    "value",
    [
        "ключ-🔑-" + secrets.token_urlsafe(16),
        secrets.token_urlsafe(16) + ' "quoted" \\ back\tslash',
        "x" * 200_000,
    ],
    ids=["unicode", "quotes", "long"],
)
def test_hostile_values_come_back_unchanged(
    vault: VaultFake, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    vault.put("secret", "odd", {"api_key": value})
    assert with_token(monkeypatch, vault.root_token).fetch(ref("vault:secret/odd")).value == value


def test_without_hvac_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "hvac", None)
    with pytest.raises(MissingExtraError) as caught:
        VaultKV2()
    assert caught.value.hint == "pip install 'smallops[vault]'"
