"""Cost in USD from token counts: a price from smallops.toml, else genai-prices, else unpriced.

An unknown price is recorded as unpriced (cost NULL), never as 0, so a report can say so.
Runs in the background writer, off the request path.
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from typing import Any

from smallops.config import Price
from smallops.plan import Pricing
from smallops.providers.base import Usage

UNPRICED = (None, "unpriced")


def price_run(pricing: Pricing, model: str | None, usage: Usage) -> tuple[float | None, str]:
    """(cost in USD or None, where the price came from)."""
    if pricing.override is not None:
        return _from_override(pricing.override, usage), "override"
    if pricing.vendor is None or not model:
        return UNPRICED
    if usage.input_tokens == 0 and usage.output_tokens == 0:
        return 0.0, "genai-prices"
    return _from_genai_prices(pricing.vendor, model, usage)


def _from_override(price: Price, usage: Usage) -> float:
    cached_rate = price.cached_input if price.cached_input is not None else price.input
    uncached = usage.input_tokens - usage.cached_tokens
    total = uncached * price.input + usage.cached_tokens * cached_rate
    return (total + usage.output_tokens * price.output) / 1_000_000


def _from_genai_prices(vendor: str, model: str, usage: Usage) -> tuple[float | None, str]:
    calc = _calculator()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = calc(_genai_usage(usage), model_ref=model, provider_id=vendor)
    except LookupError:
        return UNPRICED
    return float(result.total_price), "genai-prices"


def _genai_usage(usage: Usage) -> Any:
    from genai_prices import Usage as GenaiUsage

    return GenaiUsage(
        input_tokens=usage.input_tokens,
        cache_read_tokens=usage.cached_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        output_tokens=usage.output_tokens,
    )


@lru_cache(maxsize=1)
def _calculator() -> Any:
    from genai_prices import calc_price

    return calc_price
