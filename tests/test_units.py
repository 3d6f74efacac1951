"""Small parts: ids, redaction, prices, settings, git commits, Retry-After."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import pytest

from smallops import ConfigError, Settings
from smallops.config import Price
from smallops.gitinfo import git_commit
from smallops.ids import uuid7, uuid7_time
from smallops.pricing import price_run
from smallops.providers.base import Usage, parse_retry_after
from smallops.records import Pricing
from smallops.redact import REDACTED, Redactor
from smallops.storage.db import log_database


def test_uuid7_ids_are_version_7_unique_and_time_ordered():
    ids = [uuid7() for _ in range(5000)]
    assert ids == sorted(ids) and len(set(ids)) == 5000
    parsed = uuid.UUID(ids[0])
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert abs(uuid7_time(ids[-1]) - time.time()) < 2


def test_redactor_removes_env_secrets_and_key_shaped_strings():
    redact = Redactor.from_environment({"MY_SERVICE_TOKEN": "tok-12345678-abcd", "HOME": "/root"})
    text = (
        "token tok-12345678-abcd, key sk-proj-abcdefghijklmnop, "
        "masked sk-abc*****************wxyz, Authorization: Bearer eyJhbGciOiJIUzI1NiJ9"
    )
    cleaned = redact(text)
    assert "tok-12345678" not in cleaned and "sk-proj" not in cleaned
    assert "sk-abc" not in cleaned and "eyJhbG" not in cleaned
    assert cleaned.count(REDACTED) == 4
    assert redact("the desk-top and risk-free plans") == "the desk-top and risk-free plans"


def test_genai_prices_price_a_known_model():
    cost, source = price_run(
        Pricing("openai", None),
        "gpt-4o-mini-2024-07-18",
        Usage(input_tokens=1_000_000, output_tokens=1_000_000),
    )
    assert source == "genai-prices" and cost == pytest.approx(0.15 + 0.60)


def test_an_unknown_model_is_unpriced_never_zero():
    assert price_run(
        Pricing("openai", None), "gpt-unknown-2030-01-01", Usage(input_tokens=10, output_tokens=10)
    ) == (None, "unpriced")
    assert price_run(Pricing(None, None), "llama3", Usage(1, 1)) == (None, "unpriced")


def test_a_price_override_wins_and_charges_cached_input_at_its_rate():
    usage = Usage(input_tokens=1_000_000, cached_tokens=500_000, output_tokens=1_000_000)
    cost, source = price_run(Pricing("openai", Price(2.0, 8.0, cached_input=0.5)), "m", usage)
    assert source == "override" and cost == pytest.approx(0.5 * 2 + 0.5 * 0.5 + 8.0)


def test_settings_read_smallops_toml_and_the_environment_wins(tmp_path):
    (tmp_path / "smallops.toml").write_text(
        '[smallops]\ndatabase_url = "sqlite:///x.db"\n'
        '[providers.ollama]\nkind = "openai"\nbase_url = "http://localhost:11434/v1"\n'
        '[prices."ollama:llama3"]\ninput = 0\noutput = 0\n'
    )
    settings = Settings.load(tmp_path, env={})
    assert settings.database_url == "sqlite:///x.db"
    assert settings.providers["ollama"].base_url == "http://localhost:11434/v1"
    assert settings.prices["ollama:llama3"] == Price(0.0, 0.0)
    env = {"SMALLOPS_DATABASE_URL": "postgresql://db/ops"}
    assert Settings.load(tmp_path, env=env).database_url == "postgresql://db/ops"


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[providers.x]\nkind = "openai"\napi_key = "sk-123"', "keys never go in"),
        ('[providers.x]\nkind = "grpc"', "kind"),
        ('[prices."a:b"]\ninput = "cheap"', "needs numbers"),
        ("[smallops\n", "not valid TOML"),
    ],
)
def test_bad_settings_are_config_errors(tmp_path, toml, message):
    (tmp_path / "smallops.toml").write_text(toml)
    with pytest.raises(ConfigError, match=message):
        Settings.load(tmp_path, env={})


def test_every_documented_smallops_toml_is_accepted(tmp_path):
    """Unknown keys are refused, so each example a user may copy must load: the README's,
    the config module's, and the scaffold's with its commented-out tables switched on."""
    import re

    import smallops.config
    from smallops.scaffold import SMALLOPS_TOML

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    examples = re.findall(r"```toml\n(.*?)```", readme, re.DOTALL)
    docstring = smallops.config.__doc__ or ""
    examples.append("\n".join(line[4:] for line in docstring.splitlines() if line[:4] == "    "))
    examples.append(re.sub(r"(?m)^# (?=\[|\w+ = )", "", SMALLOPS_TOML))
    assert len(examples) >= 3 and all("[providers." in example for example in examples)
    for example in examples:
        (tmp_path / "smallops.toml").write_text(example)
        Settings.load(tmp_path, env={})


@pytest.mark.parametrize("url", ["sqlite:///log\x00.db", "postgresql://127.0.0.1/test\x00x"])
def test_a_database_url_with_a_nul_character_names_the_variable(tmp_path, url):
    """A NUL from the environment is a ConfigError naming it, not "embedded null byte"."""
    settings = Settings.load(tmp_path, env={"SMALLOPS_DATABASE_URL": url})
    with pytest.raises(ConfigError, match="SMALLOPS_DATABASE_URL contains a NUL character"):
        log_database(settings)
    assert list(tmp_path.iterdir()) == []


def test_git_commit_is_read_from_the_repository(tmp_path):
    assert git_commit(tmp_path) is None or len(git_commit(tmp_path) or "") == 40
    repo = tmp_path / "repo"
    repo.mkdir()
    run = lambda *a: subprocess.run(["git", *a], cwd=repo, check=True, capture_output=True)  # noqa: E731
    run("init", "-q")
    assert git_commit(repo) is None  # no commit yet
    (repo / "f").write_text("x")
    run("add", "f")
    run("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "x")
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True
    ).stdout.strip()
    assert git_commit(repo) == head
    run("pack-refs", "--all")
    assert git_commit(repo) == head


def test_retry_after_accepts_seconds_milliseconds_and_dates():
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 < (parse_retry_after({"retry-after": future}) or 0) <= 31
    assert parse_retry_after({"retry-after": "soon"}) is None


def test_retries_wait_what_the_server_asks_else_back_off_and_never_pass_the_deadline():
    from smallops.providers.base import ProviderError
    from smallops.resilience.retry import RetryPolicy

    policy = RetryPolicy(attempts=5, deadline=10)
    told = ProviderError("rate_limited", "slow down", status_code=429, retry_after=0.2)
    for attempt in range(1, 5):  # the server's wait, not a growing backoff on top of it
        assert 0.2 <= (policy.delay(told, attempt, elapsed=1.0) or 0) <= 0.22
    assert policy.delay(told, 5, elapsed=1.0) is None  # the last attempt
    assert policy.delay(told, 1, elapsed=9.9) is None  # would pass the deadline
    silent = ProviderError("server_error", "oops", status_code=500)
    waits = [policy.delay(silent, 4, elapsed=0.0) for _ in range(200)]
    assert all(w is not None and 0 <= w <= 4.0 for w in waits)
    assert max(w or 0 for w in waits) > 1.0  # backoff grows with the attempt number
    assert policy.delay(ProviderError("refused", "no"), 1, elapsed=0.0) is None


@pytest.mark.parametrize(
    ("vendor", "model"),
    [
        ("openai", "gpt-4o-mini-2024-07-18"),  # flat prices
        ("anthropic", "claude-sonnet-4-6"),  # flat, with cache writes
        ("anthropic", "claude-sonnet-4-5-20250929"),  # tiered above 200k tokens
    ],
)
@pytest.mark.parametrize(
    "usage",
    [
        Usage(input_tokens=1200, output_tokens=300),
        Usage(input_tokens=5000, cached_tokens=3000, cache_write_tokens=1000, output_tokens=50),
        Usage(input_tokens=250_000, cached_tokens=10_000, output_tokens=4000),
    ],
)
def test_prices_agree_with_genai_prices_own_calculation(vendor, model, usage):
    from genai_prices import Usage as GenaiUsage
    from genai_prices import calc_price

    expected = calc_price(
        GenaiUsage(
            input_tokens=usage.input_tokens,
            cache_read_tokens=usage.cached_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            output_tokens=usage.output_tokens,
        ),
        model_ref=model,
        provider_id=vendor,
    ).total_price
    cost, source = price_run(Pricing(vendor, None), model, usage)
    assert source == "genai-prices" and cost == pytest.approx(float(expected), rel=1e-9)
