"""The gateway's virtual keys: shown once, stored as a hash, listed, revoked, scoped."""

from __future__ import annotations

import json

from sqlalchemy import create_engine, text

from smallops.gateway.keys import PREFIX, KeyCache, create_key, hash_key
from smallops.storage.db import ensure_schema, normalise_url

from conftest import smallops


def write_project(folder, url):
    folder.mkdir(exist_ok=True)
    (folder / "smallops.toml").write_text(
        f'[smallops]\ndatabase_url = "{url}"\n'
        '[gateway.routes.fast]\nmodel = "openai:gpt-4o-mini-2024-07-18"\n'
        '[gateway.routes.big]\nmodel = "openai:gpt-4o-2024-11-20"\n'
    )
    return folder


def test_a_key_is_printed_once_and_only_its_hash_is_stored(tmp_path, database_url, capsys):
    folder = write_project(tmp_path / "p", database_url)
    code, out, err = smallops(
        capsys, "-p", str(folder), "gateway", "keys", "create", "billing", "--routes", "fast",
        "--rpm", "30", "--daily-usd", "2.5",
    )  # fmt: skip
    assert code == 0, err
    key = out.strip()
    assert key.startswith(PREFIX) and len(key) >= len(PREFIX) + 43
    assert "shown only this once" in err and "fast; 30/minute, $2.5/day" in err
    engine = create_engine(normalise_url(database_url, folder))
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT * FROM gateway_keys")).mappings().all()
        dumped = json.dumps([dict(r) for r in rows], default=str)
    engine.dispose()
    assert key not in dumped and hash_key(key) in dumped and key[len(PREFIX) + 6 :] not in dumped

    code, out, _ = smallops(capsys, "-p", str(folder), "gateway", "keys", "list", "--json")
    listed = json.loads(out)
    assert code == 0 and [k["name"] for k in listed] == ["billing"]
    assert listed[0]["routes"] == ["fast"] and listed[0]["rpm"] == 30
    assert "key_hash" not in listed[0] and key not in out and listed[0]["prefix"] == key[:18]


def test_a_revoked_key_is_found_as_revoked_and_its_name_can_be_reused(tmp_path, capsys):
    folder = write_project(tmp_path / "p", f"sqlite:///{tmp_path / 'log.db'}")
    base = ("-p", str(folder), "gateway", "keys")
    code, first, _ = smallops(capsys, *base, "create", "ops")
    assert code == 0
    code, _, err = smallops(capsys, *base, "create", "ops")
    assert code == 2 and "already active" in err and "keys revoke ops" in err
    code, out, _ = smallops(capsys, *base, "revoke", "ops")
    assert code == 0 and "revoked ops" in out
    code, _, err = smallops(capsys, *base, "revoke", "ops")
    assert code == 2 and "no active key named 'ops'" in err
    code, second, _ = smallops(capsys, *base, "create", "ops")
    assert code == 0 and second != first
    code, out, _ = smallops(capsys, *base, "list", "--revoked", "--json")
    assert [k["revoked_at"] is not None for k in json.loads(out)] == [True, False]

    engine = create_engine(normalise_url(f"sqlite:///{tmp_path / 'log.db'}", folder))
    cache = KeyCache(lambda: engine)
    old, new = cache.lookup(first.strip()), cache.lookup(second.strip())
    assert old is not None and old.revoked and new is not None and not new.revoked
    assert cache.lookup(PREFIX + "x" * 43) is None
    assert cache.cached(PREFIX + "x" * 43) == (True, None)  # unknown keys are cached too
    engine.dispose()


def test_a_key_for_an_unknown_route_or_with_a_bad_limit_is_refused(tmp_path, capsys):
    folder = write_project(tmp_path / "p", f"sqlite:///{tmp_path / 'log.db'}")
    base = ("-p", str(folder), "gateway", "keys", "create")
    code, _, err = smallops(capsys, *base, "ops", "--routes", "fats")
    assert code == 2 and "no route 'fats'" in err and "fast, big" in err
    code, _, err = smallops(capsys, *base, "ops", "--rpm", "0")
    assert code == 2 and "--rpm" in err
    code, _, err = smallops(capsys, *base, "ops", "--routes", " , ")
    assert code == 2 and "names no route" in err
    code, _, err = smallops(capsys, *base, "two words")
    assert code == 2 and "without spaces" in err


def test_key_scope_is_checked_per_route(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'log.db'}")
    ensure_schema(engine)
    key, _ = create_key(engine, "team", routes=["fast"])
    info = KeyCache(lambda: engine).lookup(key)
    assert info is not None and info.may_use("fast") and not info.may_use("big")
    engine.dispose()
