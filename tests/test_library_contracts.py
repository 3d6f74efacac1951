"""The private parts of other libraries smallops relies on: each test fails loudly, naming the
library, the day a new release moves or changes one, instead of smallops failing at a call.

- openai.lib._pydantic.to_strict_json_schema: the strict JSON schema OpenAI's structured
  outputs require, made the way the SDK itself makes it (providers/openai.py).
- anthropic.lib._parse._transform.transform_schema: the schema Anthropic's structured outputs
  accept, made the way the SDK's `messages.parse` makes it (providers/anthropic.py).
- limits' MemoryStorage.__schedule_expiry: replaced so that expiry runs lazily instead of a
  timer thread every 10 ms (resilience/ratelimit.py).
"""

from __future__ import annotations

import threading
import time

from models import Triage


def test_openai_still_makes_a_strict_schema_of_a_pydantic_model():
    from openai.lib._pydantic import to_strict_json_schema

    schema = to_strict_json_schema(Triage)
    assert schema["additionalProperties"] is False
    assert (
        set(schema["required"])
        == set(schema["properties"])
        == {
            "category",
            "urgency",
            "summary",
        }
    )


def test_anthropic_still_transforms_a_pydantic_schema_for_structured_outputs():
    from anthropic.lib._parse._transform import transform_schema

    schema = transform_schema(Triage.model_json_schema())
    assert schema["type"] == "object" and schema.get("additionalProperties") is False
    assert set(schema["properties"]) == {"category", "urgency", "summary"}
    assert schema["properties"]["category"]["enum"] == [
        "billing",
        "support",
        "sales",
        "spam",
        "other",
    ]


def test_limits_memory_storage_still_has_the_expiry_methods_we_replace():
    from limits.storage import MemoryStorage

    assert callable(getattr(MemoryStorage, "_MemoryStorage__schedule_expiry", None)), (
        "limits renamed MemoryStorage.__schedule_expiry: resilience/ratelimit.py must follow"
    )
    assert callable(getattr(MemoryStorage, "_MemoryStorage__expire_events", None)), (
        "limits renamed MemoryStorage.__expire_events: resilience/ratelimit.py must follow"
    )


def test_the_lazy_memory_storage_starts_no_timer_threads_and_still_expires():
    from limits import parse
    from limits.strategies import MovingWindowRateLimiter

    from smallops.resilience.ratelimit import _memory_storage

    storage = _memory_storage()
    limiter = MovingWindowRateLimiter(storage)
    item = parse("1000/second")
    before = threading.active_count()
    for _ in range(200):
        assert limiter.hit(item, "contract", "test")
    assert threading.active_count() <= before, "a timer thread per hit is back"
    time.sleep(1.2)
    limiter.hit(item, "contract", "test")  # runs the lazy expiry: the old window is gone
    assert limiter.get_window_stats(item, "contract", "test").remaining == 999
