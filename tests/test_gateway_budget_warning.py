"""A gateway key's and a route's budget crossing 80% of its cap: a `warning` guard event, as a
workflow's budget writes, once per period and process however many requests cross it."""

from __future__ import annotations

import secrets
import time

import pytest
from sqlalchemy import text

from smallops import Settings
from smallops.gateway.app import Gateway
from smallops.storage.db import ensure_schema
from test_gateway import MESSAGES, Running

from emulators import ok
from live_server import serving_app


@pytest.fixture
def gateway(tmp_path, emulator, monkeypatch):
    monkeypatch.setenv("EMU_KEY", "sk-upstream-" + secrets.token_hex(16))
    (tmp_path / "smallops.toml").write_text(
        f'[smallops]\ndatabase_url = "sqlite:///{tmp_path / "log.db"}"\n'
        f'[providers.emu]\nkind = "openai"\nbase_url = "{emulator.openai_base_url}"\n'
        'api_key_env = "EMU_KEY"\n'
        '[prices."emu:model-c"]\ninput = 100.0\noutput = 100.0\n'
        '[gateway.routes.capped]\nmodel = "emu:model-c"\ndaily_usd = 0.01\n'
    )
    settings = Settings.load(tmp_path)
    with serving_app(Gateway(settings)) as port:
        running = Running(settings, port, "")
        ensure_schema(running.engine)
        yield running
        running.engine.dispose()


def spent(gateway: Running, budget: str) -> float:
    with gateway.engine.connect() as connection:
        query = text("SELECT spent_usd FROM budget_spend WHERE workflow = :budget")
        return float(connection.execute(query, {"budget": budget}).scalar() or 0.0)


def events(gateway: Running, count: int) -> list[tuple]:
    """The budget events, once there are `count` (each is written in a thread of its own)."""
    deadline = time.monotonic() + 5
    while True:
        with gateway.engine.connect() as connection:
            rows = connection.execute(
                text(
                    'SELECT workflow, "key", "after", reason FROM guard_events '
                    "WHERE guard = 'budget' ORDER BY id"
                )
            ).all()
        if len(rows) >= count or time.monotonic() > deadline:
            return [tuple(row) for row in rows]
        time.sleep(0.02)


def test_crossing_80_percent_of_a_keys_or_routes_budget_is_reported_once(gateway, emulator):
    """Each request reserves about $0.009 of a $0.01 cap (priced at its max_tokens of 40) and
    costs $0.0002: every reservation crosses 80% of both the key's and the route's daily
    budget, yet each is reported once."""
    emulator.default = ok(input_tokens=1, output_tokens=1)
    client = gateway.client(gateway.key("team-a", daily_usd=0.01), max_retries=0)
    for n in range(1, 4):
        client.chat.completions.create(model="capped", messages=MESSAGES, max_tokens=40)
        deadline = time.monotonic() + 5  # the reservations are settled just after the answer
        for budget in ("gateway-key:team-a", "gateway:capped"):
            while spent(gateway, budget) > 0.0002 * n + 1e-9:
                assert time.monotonic() < deadline
                time.sleep(0.02)
    assert len(emulator.requests) == 3
    found = events(gateway, 2)
    time.sleep(0.2)  # no third event is on its way
    assert events(gateway, 2) == found
    assert [(w, k, a) for w, k, a, _ in found] == [
        ("gateway:capped", "gateway-key:team-a", "warning"),
        ("gateway:capped", "gateway:capped", "warning"),
    ]
    assert all(reason.startswith("daily budget 80% used: $0.00") for *_, reason in found)
    assert all(reason.endswith("of $0.01") for *_, reason in found)
