"""Cost in USD from token counts: a price from smallops.toml, else genai-prices, else unpriced.

An unknown price is recorded as unpriced (cost NULL), never as 0, so a report can say so.
Runs in the background writer, off the request path.
"""

from __future__ import annotations

import warnings
from datetime import date, datetime, timezone
from decimal import Decimal
from functools import lru_cache
from typing import Any

from smallops.records import Price, Pricing, Usage

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


def vendor_of(provider_name: str, provider_kind: str) -> str | None:
    """The genai-prices vendor of a provider: genai-prices knows the vendors' own models; a
    named endpoint (Ollama, vLLM) is priced only by smallops.toml, and is otherwise unpriced."""
    return provider_kind if provider_name == provider_kind != "fake" else None


def has_price(pricing: Pricing, model: str) -> bool:
    """Whether calls to `model` (the bare id) will be priced, before any is made."""
    if pricing.override is not None:
        return True
    if pricing.vendor is None:
        return False
    return _model_price(pricing.vendor, model, datetime.now(timezone.utc).date()) is not None


def _from_override(price: Price, usage: Usage) -> float:
    cached_rate = price.cached_input if price.cached_input is not None else price.input
    uncached = usage.input_tokens - usage.cached_tokens
    total = uncached * price.input + usage.cached_tokens * cached_rate
    return (total + usage.output_tokens * price.output) / 1_000_000


def _from_genai_prices(vendor: str, model: str, usage: Usage) -> tuple[float | None, str]:
    """genai-prices' price for this call; flat per-token prices are applied directly (its full
    calculation costs ~80 microseconds a call), tiered or unusual ones go through it."""
    today = datetime.now(timezone.utc).date()
    found = _model_price(vendor, model, today)
    if found is None:
        return UNPRICED
    rates, info, provider = found
    if rates is not None:
        base, cache_read, cache_write, output = rates
        uncached = usage.input_tokens - usage.cached_tokens - usage.cache_write_tokens
        total = (
            uncached * base
            + usage.cached_tokens * cache_read
            + usage.cache_write_tokens * cache_write
            + usage.output_tokens * output
        )
        return total / 1_000_000, "genai-prices"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = info.calc_price(_genai_usage(usage), provider)
    return float(result.total_price), "genai-prices"


@lru_cache(maxsize=512)
def _model_price(vendor: str, model: str, day: date) -> tuple[Any, Any, Any] | None:
    """(flat rates or None, model info, provider) for a model on a day; None if unknown."""
    from genai_prices.data_snapshot import get_snapshot

    try:
        provider, info = get_snapshot().find_provider_model(model, None, vendor, None)
    except LookupError:
        return None
    price = info.get_prices(datetime.combine(day, datetime.min.time(), timezone.utc))
    values: list[float | None] = []
    for value in (
        price.input_mtok,
        price.cache_read_mtok,
        price.cache_write_mtok,
        price.output_mtok,
    ):
        if value is not None and not isinstance(value, Decimal):
            return None, info, provider  # tiered: genai-prices' own calculation
        values.append(None if value is None else float(value))
    base, read, write, output = values
    if base is None or output is None:
        return None, info, provider
    rates = (base, base if read is None else read, base if write is None else write, output)
    return rates, info, provider


def _genai_usage(usage: Usage) -> Any:
    from genai_prices import Usage as GenaiUsage

    return GenaiUsage(
        input_tokens=usage.input_tokens,
        cache_read_tokens=usage.cached_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        output_tokens=usage.output_tokens,
    )
