"""Settings: smallops.toml plus the environment, refused when wrong, resolved into plain values."""

from __future__ import annotations

from pathlib import Path

import pytest

from smallops import ConfigError, Settings
from smallops.config import Price, evals_file
from smallops.storage.db import log_database


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
        ('[telemetry]\notlp_endpoint = "localhost:4318"', "must be an http"),
        ('[telemetry]\notlp_endpoint = "http://u:pw@otel:4318"', "holds a password"),
        ("[telemetry]\ncapture_content = 1", "true or false"),
        ('[telemetry]\nendpoint = "http://otel:4318"', "unknown key 'endpoint'"),
        ('[secrets]\ncache_ttl = "5m"', "number of seconds"),
        ('[providers.x]\nkind = "openai"\napi_key = "hunter2hunter2"', "not a secret reference"),
        (
            '[providers.x]\nkind = "openai"\napi_key = "env:A"\napi_key_env = "A"',
            "both api_key and api_key_env",
        ),
    ],
)
def test_bad_settings_are_config_errors(tmp_path, toml, message):
    (tmp_path / "smallops.toml").write_text(toml)
    with pytest.raises(ConfigError, match=message) as raised:
        Settings.load(tmp_path, env={})
    assert "hunter2" not in str(raised.value) and "sk-123" not in str(raised.value)


def test_every_documented_smallops_toml_is_accepted(tmp_path):
    """Unknown keys are refused, so each example a user may copy must load: the README's,
    the config module's, and the scaffold's with its commented-out tables switched on."""
    import re

    import smallops.alert_config
    import smallops.config
    import smallops.gateway_config
    from smallops.scaffold import SMALLOPS_TOML

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    examples = re.findall(r"```toml\n(.*?)```", readme, re.DOTALL)
    for module in (smallops.config, smallops.alert_config, smallops.gateway_config):
        docstring = module.__doc__ or ""
        examples.append(
            "\n".join(line[4:] for line in docstring.splitlines() if line[:4] == "    ")
        )
    examples.append(re.sub(r"(?m)^# (?=\[|\w+ = )", "", SMALLOPS_TOML))
    assert len(examples) >= 5 and sum("[providers." in example for example in examples) >= 3
    assert sum("[alerts.channels." in example for example in examples) >= 3
    for example in examples:
        (tmp_path / "smallops.toml").write_text(example)
        Settings.load(tmp_path, env={})


@pytest.mark.parametrize("url", ["sqlite:///log\x00.db", "postgresql://127.0.0.1/test\x00x"])
def test_a_database_url_with_a_nul_character_names_the_variable(tmp_path, url):
    """A NUL from the environment is a ConfigError naming it, not "embedded null byte"."""
    settings = Settings.load(tmp_path, env={"SMALLOPS_DATABASE_URL": url})
    with pytest.raises(ConfigError, match="SMALLOPS_DATABASE_URL contains a NUL character"):
        log_database(settings.log)
    assert list(tmp_path.iterdir()) == []


def test_the_log_target_carries_plain_values_and_where_the_url_was_set(tmp_path):
    """Storage takes the log target, never the whole settings; an error still names the place
    to fix, and a relative SQLite path is the project's."""
    (tmp_path / "smallops.toml").write_text(
        '[smallops]\ndatabase_url = "sqlite:///data/log.db"\nwrite_timeout = 3\n'
        '[providers.local]\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
        'api_key_env = "LOCAL_KEY"\n'
    )
    target = Settings.load(tmp_path, env={}).log
    assert target.source == "database_url in smallops.toml" and target.write_timeout == 3
    assert target.spool_dir == tmp_path / ".smallops" / "spool"
    assert "LOCAL_KEY" in target.key_variables
    url, _ = log_database(target)
    assert url == f"sqlite:///{tmp_path / 'data' / 'log.db'}"
    env = {"SMALLOPS_DATABASE_URL": "mysql://db/ops"}
    with pytest.raises(ConfigError, match="SMALLOPS_DATABASE_URL: database 'mysql'"):
        log_database(Settings.load(tmp_path, env=env).log)


def test_a_workflows_eval_set_has_one_home(tmp_path):
    assert evals_file(tmp_path, "email-triage") == tmp_path / "evals" / "email_triage.jsonl"


def test_telemetry_is_off_unless_asked_and_the_otel_variables_win(tmp_path):
    from smallops.config import Telemetry
    from smallops.storage.otel_export import export_environment

    assert Settings.load(tmp_path, env={}).telemetry == Telemetry()
    assert export_environment(Telemetry(), {}) is None
    (tmp_path / "smallops.toml").write_text(
        '[telemetry]\notlp_endpoint = "http://otel.internal:4318"\ncapture_content = true\n'
    )
    telemetry = Settings.load(tmp_path, env={}).log.telemetry
    env = export_environment(telemetry, {"OTEL_EXPORTER_OTLP_HEADERS": "x-key=1"})
    assert env is not None
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel.internal:4318"
    assert env["OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"] == "true"
    assert env["OTEL_EXPORTER_OTLP_HEADERS"] == "x-key=1"
    given = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
        "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "false",
    }
    env = export_environment(telemetry, given)
    assert env is not None and env == given
