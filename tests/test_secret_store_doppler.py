"""The doppler: store against a local Doppler API, with service and personal tokens."""

from __future__ import annotations

import secrets
import sys
import time
from collections.abc import Iterator

import pytest

from smallops.errors import MissingExtraError
from smallops.secret_refs import SecretRef
from smallops.secrets.base import SecretStoreError, store_for
from smallops.secrets.stores.doppler import Doppler

from doppler_fake import DopplerFake
from tcpproxy import TcpProxy


@pytest.fixture
def doppler(monkeypatch: pytest.MonkeyPatch) -> Iterator[DopplerFake]:
    for name in ("DOPPLER_TOKEN", "DOPPLER_PROJECT", "DOPPLER_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    with DopplerFake() as fake:
        monkeypatch.setenv("DOPPLER_API_HOST", fake.url)
        yield fake


def ref(text: str) -> SecretRef:
    return SecretRef.parse(text)


def fails(store: Doppler, text: str) -> SecretStoreError:
    with pytest.raises(SecretStoreError) as caught:
        store.fetch(ref(text))
    assert text in caught.value.message
    assert "\n" not in caught.value.message
    return caught.value


def test_a_service_token_reads_its_own_config(
    doppler: DopplerFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = secrets.token_urlsafe(32)
    doppler.set("backend", "prd", "OPENAI_API_KEY", key)
    token = doppler.service_token("backend", "prd")
    monkeypatch.setenv("DOPPLER_TOKEN", token)

    store = store_for("doppler")
    assert isinstance(store, Doppler)
    got = store.fetch(ref("doppler:OPENAI_API_KEY"))

    assert (got.value, got.version, got.updated_at) == (key, None, None)
    (request,) = doppler.requests
    assert request.path == "/v3/configs/config/secret"
    assert request.query == {"name": ["OPENAI_API_KEY"]}
    assert request.headers["authorization"] == f"Bearer {token}"
    assert store.fetch(ref("doppler:backend/prd/OPENAI_API_KEY")).value == key


def test_the_computed_value_with_references_resolved(
    doppler: DopplerFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = secrets.token_urlsafe(32)
    doppler.set("backend", "prd", "LLM_KEY", "${OPENAI_API_KEY}", computed=key)
    monkeypatch.setenv("DOPPLER_TOKEN", doppler.service_token("backend", "prd"))
    assert Doppler(timeout=2).fetch(ref("doppler:LLM_KEY")).value == key


def test_a_personal_token_needs_a_project_and_config(
    doppler: DopplerFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = secrets.token_urlsafe(32)
    doppler.set("backend", "stg", "OPENAI_API_KEY", key)
    monkeypatch.setenv("DOPPLER_TOKEN", doppler.personal_token())

    needs = fails(Doppler(timeout=2), "doppler:OPENAI_API_KEY")
    assert needs.unreachable is False
    assert "You must specify a project" in needs.message and "PROJECT/CONFIG" in needs.hint

    assert Doppler(timeout=2).fetch(ref("doppler:backend/stg/OPENAI_API_KEY")).value == key
    monkeypatch.setenv("DOPPLER_PROJECT", "backend")
    monkeypatch.setenv("DOPPLER_CONFIG", "stg")
    assert Doppler(timeout=2).fetch(ref("doppler:OPENAI_API_KEY")).value == key
    assert doppler.requests[-1].query == {
        "project": ["backend"],
        "config": ["stg"],
        "name": ["OPENAI_API_KEY"],
    }


def test_not_found_bad_references_and_no_token(
    doppler: DopplerFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Doppler(timeout=2)
    unset = fails(store, "doppler:OPENAI_API_KEY")
    assert "DOPPLER_TOKEN is not set" in unset.message and doppler.count() == 0

    monkeypatch.setenv("DOPPLER_TOKEN", doppler.service_token("backend", "prd"))
    missing = fails(store, "doppler:NOPE")
    assert missing.unreachable is False
    assert "no such secret" in missing.message and "Could not find" in missing.message
    for text in ("doppler:a/b", "doppler:a/b/c/d", "doppler:KEY#field"):
        assert fails(store, text).unreachable is False
    assert doppler.count() == 1


def test_wrong_token_and_another_config_are_denied(
    doppler: DopplerFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    doppler.set("backend", "prd", "OPENAI_API_KEY", secrets.token_urlsafe(32))
    wrong = "dp.st." + secrets.token_urlsafe(30)
    monkeypatch.setenv("DOPPLER_TOKEN", wrong)
    refused = fails(Doppler(timeout=2), "doppler:OPENAI_API_KEY")
    assert refused.unreachable is False and "refused the token (401)" in refused.message
    assert wrong not in refused.message + refused.hint

    monkeypatch.setenv("DOPPLER_TOKEN", doppler.service_token("backend", "dev"))
    other = fails(Doppler(timeout=2), "doppler:backend/prd/OPENAI_API_KEY")
    assert other.unreachable is False and "(403)" in other.message


def test_doppler_down_is_unreachable(doppler: DopplerFake, monkeypatch: pytest.MonkeyPatch) -> None:
    doppler.set("backend", "prd", "OPENAI_API_KEY", "k")
    monkeypatch.setenv("DOPPLER_TOKEN", doppler.service_token("backend", "prd"))
    proxy = TcpProxy(("127.0.0.1", doppler.port))
    monkeypatch.setenv("DOPPLER_API_HOST", f"http://127.0.0.1:{proxy.port}")
    store = Doppler(timeout=2)
    store.fetch(ref("doppler:OPENAI_API_KEY"))
    proxy.cut()
    try:
        error = fails(store, "doppler:OPENAI_API_KEY")
    finally:
        proxy.close()
    assert error.unreachable is True and "cannot connect to Doppler" in error.message


def test_doppler_stalled_gives_up_within_the_timeout(
    doppler: DopplerFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOPPLER_TOKEN", doppler.service_token("backend", "prd"))
    proxy = TcpProxy(("127.0.0.1", doppler.port))
    monkeypatch.setenv("DOPPLER_API_HOST", f"http://127.0.0.1:{proxy.port}")
    store = Doppler(timeout=0.5)
    proxy.stall()
    started = time.monotonic()
    try:
        error = fails(store, "doppler:OPENAI_API_KEY")
    finally:
        proxy.close()
    assert time.monotonic() - started < 1.5
    assert error.unreachable is True and "did not answer within 0.5s" in error.message


@pytest.mark.parametrize(
    "value",
    ["ключ-🔑-" + secrets.token_urlsafe(16), "x" * 200_000, 'a "quoted"\nvalue\\ & ?x=1'],
    ids=["unicode", "long", "quotes"],
)
def test_hostile_values_and_names(
    doppler: DopplerFake, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    doppler.set("backend", "prd", "ODD&name=X", value)
    monkeypatch.setenv("DOPPLER_TOKEN", doppler.service_token("backend", "prd"))
    assert Doppler(timeout=2).fetch(ref("doppler:ODD&name=X")).value == value


def test_without_httpx_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "httpx", None)
    with pytest.raises(MissingExtraError) as caught:
        Doppler()
    assert caught.value.hint == "pip install 'smallops[doppler]'"
