"""The op:// store: through onepasswordconnectsdk against a local Connect server, and through
an `op` CLI on PATH that counts its runs."""

from __future__ import annotations

import os
import secrets
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from smallops.errors import MissingExtraError
from smallops.secret_refs import SecretRef
from smallops.secrets.base import SecretStoreError, store_for
from smallops.secrets.stores.onepassword import OnePassword

from onepassword_fake import ConnectFake, FakeOp
from tcpproxy import TcpProxy

OP_ENV = ("OP_CONNECT_HOST", "OP_CONNECT_TOKEN", "OP_SERVICE_ACCOUNT_TOKEN", "OP_SESSION")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*OP_ENV, "OP_CONNECT_CLIENT_REQ_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def connect(monkeypatch: pytest.MonkeyPatch) -> Iterator[ConnectFake]:
    with ConnectFake() as fake:
        monkeypatch.setenv("OP_CONNECT_HOST", fake.url)
        monkeypatch.setenv("OP_CONNECT_TOKEN", fake.token)
        yield fake


def ref(text: str) -> SecretRef:
    return SecretRef.parse(text)


def fails(store: OnePassword, text: str) -> SecretStoreError:
    with pytest.raises(SecretStoreError) as caught:
        store.fetch(ref(text))
    assert text in caught.value.message
    assert "\n" not in caught.value.message
    return caught.value


# -- Connect ---------------------------------------------------------------------------------


def test_connect_field_by_label_with_version_and_time(connect: ConnectFake) -> None:
    key = secrets.token_urlsafe(32)
    prod = connect.vault("Prod")
    connect.vault("Staging")
    item = connect.item(prod, "OpenAI", [{"label": "credential", "value": key}])
    item["version"] = 4

    got = OnePassword(timeout=2).fetch(ref("op://Prod/OpenAI/credential"))

    assert (got.value, got.version) == (key, "4")
    assert got.updated_at is not None
    assert abs(datetime.now(timezone.utc) - got.updated_at) < timedelta(minutes=1)
    asked = [(r.path, r.arg("filter")) for r in connect.requests]
    assert asked == [
        ("/v1/vaults", 'name eq "Prod"'),
        (f"/v1/vaults/{prod}/items", 'title eq "OpenAI"'),
        (f"/v1/vaults/{prod}/items/{item['id']}", None),
    ]
    assert all(r.bearer == connect.token for r in connect.requests)


def test_connect_sections_ids_and_the_scheme_lookup(connect: ConnectFake) -> None:
    prod_key, stage_key = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    vault = connect.vault("Prod")
    item = connect.item(
        vault,
        "LLM keys",
        [
            {"label": "key", "value": prod_key, "section": "prod"},
            {"label": "key", "value": stage_key, "section": "staging", "id": "stagingkey"},
        ],
        sections=["prod", "staging"],
    )
    store = store_for("op")
    assert isinstance(store, OnePassword)

    assert store.fetch(ref("op://Prod/LLM keys/prod/key")).value == prod_key
    assert store.fetch(ref("op://Prod/LLM keys/staging/key")).value == stage_key
    assert store.fetch(ref("op://Prod/LLM keys/stagingkey")).value == stage_key
    assert store.fetch(ref(f"op://{vault}/{item['id']}/prod/key")).value == prod_key

    ambiguous = fails(store, "op://Prod/LLM keys/key")
    assert "2 fields of the item are called 'key'" in ambiguous.message
    assert "SECTION" in ambiguous.hint


def test_connect_not_found(connect: ConnectFake) -> None:
    key = secrets.token_urlsafe(32)
    vault = connect.vault("Prod")
    connect.item(vault, "OpenAI", [{"label": "credential", "value": key}])
    store = OnePassword(timeout=2)

    for text, words in [
        ("op://Nope/OpenAI/credential", "no such vault or item"),
        ("op://Prod/Nope/credential", "no such vault or item"),
        ("op://Prod/OpenAI/password", "no field 'password'"),
        ("op://Prod/OpenAI/nosection/credential", "in section 'nosection'"),
        ("op://Prod/OpenAI", "is not op://VAULT/ITEM"),
    ]:
        error = fails(store, text)
        assert error.unreachable is False, text
        assert words in error.message, error.message
        assert key not in error.message + error.hint


def test_connect_wrong_token_and_a_forbidden_vault(
    connect: ConnectFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    vault = connect.vault("Prod")
    connect.item(vault, "OpenAI", [{"label": "credential", "value": "k"}])
    wrong = secrets.token_urlsafe(48)
    monkeypatch.setenv("OP_CONNECT_TOKEN", wrong)

    refused = fails(OnePassword(timeout=2), "op://Prod/OpenAI/credential")
    assert refused.unreachable is False and "refused the token" in refused.message
    assert wrong not in refused.message + refused.hint

    monkeypatch.setenv("OP_CONNECT_TOKEN", connect.token)
    connect.forbidden.add(vault)
    denied = fails(OnePassword(timeout=2), f"op://{vault}/OpenAI/credential")
    assert denied.unreachable is False and "may not read this vault" in denied.message

    monkeypatch.delenv("OP_CONNECT_TOKEN")
    unset = fails(OnePassword(timeout=2), "op://Prod/OpenAI/credential")
    assert "OP_CONNECT_TOKEN is not" in unset.message


def test_connect_down_is_unreachable(connect: ConnectFake, monkeypatch: pytest.MonkeyPatch) -> None:
    vault = connect.vault("Prod")
    connect.item(vault, "OpenAI", [{"label": "credential", "value": "k"}])
    proxy = TcpProxy(("127.0.0.1", connect.port))
    monkeypatch.setenv("OP_CONNECT_HOST", f"http://127.0.0.1:{proxy.port}")
    store = OnePassword(timeout=2)
    store.fetch(ref("op://Prod/OpenAI/credential"))
    proxy.cut()
    try:
        error = fails(store, "op://Prod/OpenAI/credential")
    finally:
        proxy.close()
    assert error.unreachable is True and "cannot connect" in error.message


def test_connect_stalled_gives_up_within_the_timeout(
    connect: ConnectFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = TcpProxy(("127.0.0.1", connect.port))
    monkeypatch.setenv("OP_CONNECT_HOST", f"http://127.0.0.1:{proxy.port}")
    store = OnePassword(timeout=0.5)
    proxy.stall()
    started = time.monotonic()
    try:
        error = fails(store, "op://Prod/OpenAI/credential")
    finally:
        proxy.close()
    assert time.monotonic() - started < 1.5
    assert error.unreachable is True and "did not answer within 0.5s" in error.message


@pytest.mark.parametrize(
    "value",
    ["ключ-🔑-" + secrets.token_urlsafe(16), "x" * 200_000, 'a "quoted"\nvalue\\'],
    ids=["unicode", "long", "quotes"],
)
def test_connect_hostile_values(connect: ConnectFake, value: str) -> None:
    vault = connect.vault("Prod")
    connect.item(vault, "Odd", [{"label": "credential", "value": value}])
    assert OnePassword(timeout=2).fetch(ref("op://Prod/Odd/credential")).value == value


def test_connect_without_the_sdk_the_error_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OP_CONNECT_HOST", "http://127.0.0.1:1")
    monkeypatch.setitem(sys.modules, "onepasswordconnectsdk", None)
    with pytest.raises(MissingExtraError) as caught:
        OnePassword()
    assert caught.value.hint == "pip install 'smallops[onepassword]'"


# -- the op CLI ------------------------------------------------------------------------------


@pytest.fixture
def op(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeOp:
    folder = tmp_path / "bin"
    folder.mkdir()
    fake = FakeOp(folder)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("OP_SERVICE_ACCOUNT_TOKEN", fake.token)
    return fake


def test_cli_reads_with_the_service_account_token(op: FakeOp) -> None:
    key = secrets.token_urlsafe(32)
    op.secrets["op://Prod/OpenAI/credential"] = key
    op.save()
    store = OnePassword(timeout=5)

    got = store.fetch(ref("op://Prod/OpenAI/credential"))
    store.fetch(ref("op://Prod/OpenAI/credential"))

    assert (got.value, got.version, got.updated_at) == (key, None, None)
    assert op.calls() == [["read", "--no-newline", "op://Prod/OpenAI/credential"]] * 2


def test_cli_not_found_and_a_wrong_token(op: FakeOp, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = fails(OnePassword(timeout=5), "op://Prod/Nope/credential")
    assert missing.unreachable is False
    assert "isn't an item" in missing.message and "[ERROR]" not in missing.message

    wrong = "ops_" + secrets.token_urlsafe(40)
    monkeypatch.setenv("OP_SERVICE_ACCOUNT_TOKEN", wrong)
    op.secrets["op://Prod/OpenAI/credential"] = "k"
    op.save()
    refused = fails(OnePassword(timeout=5), "op://Prod/OpenAI/credential")
    assert refused.unreachable is False and "token is invalid" in refused.message
    assert wrong not in refused.message + refused.hint
    assert len(op.calls()) == 2


def test_cli_without_network_is_unreachable(op: FakeOp) -> None:
    op.mode = "down"
    op.save()
    error = fails(OnePassword(timeout=5), "op://Prod/OpenAI/credential")
    assert error.unreachable is True and "no such host" in error.message


def test_cli_stalled_is_stopped_at_the_timeout(op: FakeOp) -> None:
    op.mode = "stall"
    op.save()
    started = time.monotonic()
    error = fails(OnePassword(timeout=1), "op://Prod/OpenAI/credential")
    assert time.monotonic() - started < 2.5
    assert error.unreachable is True and "did not answer within 1s" in error.message
    assert len(op.calls()) == 1


@pytest.mark.parametrize(
    "value", ["ключ-🔑-" + secrets.token_urlsafe(16), "x" * 200_000, " spaced \n"]
)
def test_cli_hostile_values(op: FakeOp, value: str) -> None:
    op.secrets["op://Prod/Odd/credential"] = value
    op.save()
    assert OnePassword(timeout=5).fetch(ref("op://Prod/Odd/credential")).value == value


def test_no_cli_and_no_connect_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    error = fails(OnePassword(), "op://Prod/OpenAI/credential")
    assert "CLI (op) is not installed" in error.message
    assert "OP_CONNECT_HOST" in error.hint and error.unreachable is False
