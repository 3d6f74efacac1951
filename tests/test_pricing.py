"""Prices: genai-prices for the vendors' models, smallops.toml overrides, never a made-up zero."""

from __future__ import annotations

import pytest

from smallops.config import Price
from smallops.pricing import price_run
from smallops.records import Pricing, Usage


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
