"""Moving model aliases are refused at definition time, with the snapshot to pin instead."""

from __future__ import annotations

import pytest

from smallops import ConfigError, UnpinnedModelError
from smallops.pinning import ModelRef, check_pinned, parse_model
from smallops.testing import recorded_runs

from emulators import ok


@pytest.mark.parametrize(
    "model",
    [
        "openai:gpt-4o-mini-2024-07-18",
        "openai:gpt-4.1-2025-04-14",
        "openai:o3-2025-04-16",
        "openai:gpt-3.5-turbo-0125",
        "openai:ft:gpt-4o-mini-2024-07-18:acme::abc123",
        "anthropic:claude-sonnet-4-5-20250929",
        "anthropic:claude-3-5-haiku-20241022",
        "anthropic:claude-sonnet-4-6",
        "anthropic:claude-opus-4-7",
        "anthropic:claude-opus-5",
        "fake:anything",
    ],
)
def test_pinned_models_are_accepted(model):
    ref = parse_model(model)
    check_pinned(ref, ref.provider)


@pytest.mark.parametrize(
    ("model", "suggestion"),
    [
        ("openai:gpt-4o-mini", "gpt-4o-mini-2024-07-18"),
        ("openai:gpt-4o", "gpt-4o-2024-11-20"),
        ("openai:chatgpt-4o-latest", None),
        ("anthropic:claude-sonnet-4-5", "claude-sonnet-4-5-20250929"),
        ("anthropic:claude-3-5-sonnet-latest", "claude-3-5-sonnet-20241022"),
        ("anthropic:claude-opus-4-1", "claude-opus-4-1-20250805"),
    ],
)
def test_moving_aliases_are_refused_naming_what_to_pin(model, suggestion):
    ref = parse_model(model)
    with pytest.raises(UnpinnedModelError) as caught:
        check_pinned(ref, ref.provider)
    text = str(caught.value)
    assert "moving alias" in text and "allow_unpinned=True" in text
    if suggestion:
        assert suggestion in text


def test_a_custom_endpoint_refuses_only_latest_tags():
    check_pinned(parse_model("ollama:llama3.1:8b-instruct-q4_K_M"), "openai")
    with pytest.raises(UnpinnedModelError):
        check_pinned(parse_model("ollama:llama3.1:latest"), "openai")


@pytest.mark.parametrize("spec", ["gpt-4o-mini", ":gpt-4o", "openai:"])
def test_a_model_without_provider_prefix_is_a_config_error(spec):
    with pytest.raises(ConfigError, match="provider:model-id"):
        parse_model(spec)


@pytest.mark.parametrize(
    ("model", "kind"),
    [
        ("gpt-4o-mini-2024-07-18\n", "openai"),
        ("claude-sonnet-4-5-20250929\n", "anthropic"),
        ("claude-sonnet-4-6\n", "anthropic"),
    ],
)
def test_a_pinned_id_with_a_trailing_newline_is_not_pinned(model, kind):
    """The rules match the whole id: a `$` would also match before a final newline."""
    with pytest.raises(UnpinnedModelError):
        check_pinned(ModelRef(kind, model), kind)


def test_model_ids_keep_their_colons():
    assert parse_model("ollama:llama3.1:8b").model == "llama3.1:8b"


def test_unpinned_needs_the_explicit_flag_and_is_recorded(make_workflow, emulator):
    with pytest.raises(UnpinnedModelError):
        make_workflow(model="openai:gpt-4o-mini")
    wf = make_workflow(model="openai:gpt-4o-mini", allow_unpinned=True)
    emulator.script(
        ok({"category": "spam", "urgency": "low", "summary": "x"}, model="gpt-4o-mini-2024-07-18")
    )
    wf.run(subject="s", body="b")
    [run] = recorded_runs(wf)
    assert run["allow_unpinned"] is True and run["model_mismatch"] is True
    assert run["model_served"] == "gpt-4o-mini-2024-07-18"
