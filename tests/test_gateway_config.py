"""The [gateway] table: routes to pinned models, refused when wrong, with a hint."""

from __future__ import annotations

import pytest

from smallops import ConfigError, Settings
from smallops.errors import UnpinnedModelError

LOCAL = '[providers.local]\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'


def load(tmp_path, toml):
    (tmp_path / "smallops.toml").write_text(toml)
    return Settings.load(tmp_path, env={})


def test_a_route_maps_a_public_name_to_a_pinned_model_with_its_options(tmp_path):
    settings = load(
        tmp_path,
        LOCAL + '[gateway.routes."gpt-fast"]\nmodel = "openai:gpt-4o-mini-2024-07-18"\n'
        'fallback = "local:llama3.1:8b"\ncontent = "metadata"\nrate_limit = "600/minute"\n'
        "daily_usd = 20\ntimeout = 30\nretries = 1\n",
    )
    route = settings.gateway.routes["gpt-fast"]
    assert str(route.model) == "openai:gpt-4o-mini-2024-07-18"
    assert str(route.fallback) == "local:llama3.1:8b"
    assert (route.content, route.rate_limit, route.daily_usd) == ("metadata", ("600/minute",), 20)
    assert (route.timeout, route.retries, route.workflow) == (30.0, 1, "gateway:gpt-fast")


def test_a_route_may_go_to_an_anthropic_model_pinned_as_in_workflows(tmp_path):
    """The built-in `anthropic` or a [providers.NAME] of kind "anthropic", as model or as
    fallback; a moving Claude alias is refused as an OpenAI one is."""
    claude = '[providers.claude]\nkind = "anthropic"\nbase_url = "http://127.0.0.1:9"\n'
    settings = load(
        tmp_path,
        claude + '[gateway.routes.a]\nmodel = "anthropic:claude-haiku-4-5-20251001"\n'
        'fallback = "claude:claude-sonnet-4-6"\n'
        '[gateway.routes.b]\nmodel = "openai:gpt-4o-2024-11-20"\n'
        'fallback = "anthropic:claude-sonnet-4-6"\n',
    )
    routes = settings.gateway.routes
    assert (str(routes["a"].model), str(routes["a"].fallback)) == (
        "anthropic:claude-haiku-4-5-20251001",
        "claude:claude-sonnet-4-6",
    )
    assert str(routes["b"].fallback) == "anthropic:claude-sonnet-4-6"
    with pytest.raises(UnpinnedModelError, match="moving alias") as raised:
        load(tmp_path, claude + '[gateway.routes.a]\nmodel = "claude:claude-sonnet-4-5"\n')
    assert "claude-sonnet-4-5-20250929" in (raised.value.hint or "")


def test_no_gateway_table_means_no_routes(tmp_path):
    assert load(tmp_path, "").gateway.routes == {}


def test_a_moving_alias_is_refused_as_in_workflows_with_the_snapshot_to_pin(tmp_path):
    with pytest.raises(UnpinnedModelError, match="moving alias") as raised:
        load(tmp_path, '[gateway.routes.fast]\nmodel = "openai:gpt-4o-mini"\n')
    assert "gpt-4o-mini-2024-07-18" in (raised.value.hint or "")
    assert "allow_unpinned = true" in (raised.value.hint or "")
    with pytest.raises(UnpinnedModelError, match="fallback"):
        load(
            tmp_path,
            LOCAL + '[gateway.routes.fast]\nmodel = "local:m"\nfallback = "local:m-latest"\n',
        )
    accepted = load(
        tmp_path, '[gateway.routes.fast]\nmodel = "openai:gpt-4o-mini"\nallow_unpinned = true\n'
    )
    assert accepted.gateway.routes["fast"].allow_unpinned


@pytest.mark.parametrize(
    ("toml", "message", "hint"),
    [
        ("[gateway]\nroute = 1", "unknown key 'route'", "did you mean routes"),
        ('[gateway.routes.a]\nmodle = "openai:gpt-4o-2024-11-20"', "unknown key 'modle'", "model"),
        ("[gateway.routes.a]\ncontent = 'full'", "has no model", "model ="),
        ('[gateway.routes.a]\nmodel = "nope:m"', "unknown provider 'nope'", "providers.nope"),
        ('[gateway.routes.a]\nmodel = "gpt-4o"', "provider:model-id", "model="),
        (
            '[gateway.routes.a]\nmodel = "fake:echo"',
            "OpenAI wire format and to Anthropic's Messages API",
            'kind "openai"',
        ),
        (
            '[gateway.routes.a]\nmodel = "openai:gpt-4o-2024-11-20"\ncontent = "some"',
            "content",
            "full, redacted, metadata",
        ),
        (
            '[gateway.routes.a]\nmodel = "openai:gpt-4o-2024-11-20"\nrate_limit = "lots"',
            "not a rate",
            "600/minute",
        ),
        (
            '[gateway.routes.a]\nmodel = "openai:gpt-4o-2024-11-20"\ndaily_usd = -1',
            "above 0",
            "",
        ),
        (
            '[gateway.routes.a]\nmodel = "openai:gpt-4o-2024-11-20"\nretries = 99',
            "0 to 10",
            "",
        ),
        ('[gateway.routes."a b"]\nmodel = "openai:gpt-4o-2024-11-20"', "no spaces", "gpt-fast"),
    ],
)
def test_a_bad_route_is_one_config_error_with_a_hint(tmp_path, toml, message, hint):
    with pytest.raises(ConfigError, match=message) as raised:
        load(tmp_path, toml)
    assert hint in (raised.value.hint or "")
