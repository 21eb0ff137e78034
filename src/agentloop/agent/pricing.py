"""Dollar cost of a model call, priced per model family (list prices, USD per million tokens).

Cache writes (5-minute TTL) cost 1.25x the input price and cache reads 0.1x, as Anthropic bills them.
An unknown model is priced at the most expensive known family, so a budget never under-counts.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

from agentloop.records import Usage

logger = logging.getLogger(__name__)

_CACHE_WRITE_FACTOR = 1.25
_CACHE_READ_FACTOR = 0.1
_PER_TOKEN = 1 / 1_000_000


class Price(NamedTuple):
    input: float  # USD per million input tokens
    output: float  # USD per million output tokens


# Most specific prefix first: the first prefix that a model id starts with sets its price.
PRICES: list[tuple[str, Price]] = [
    ("claude-opus-4-5", Price(5.0, 25.0)),
    ("claude-opus-4-6", Price(5.0, 25.0)),
    ("claude-opus-4", Price(15.0, 75.0)),
    ("claude-3-opus", Price(15.0, 75.0)),
    ("claude-sonnet-4", Price(3.0, 15.0)),
    ("claude-3-7-sonnet", Price(3.0, 15.0)),
    ("claude-3-5-sonnet", Price(3.0, 15.0)),
    ("claude-haiku-4", Price(1.0, 5.0)),
    ("claude-3-5-haiku", Price(0.8, 4.0)),
    ("claude-3-haiku", Price(0.25, 1.25)),
]
MOST_EXPENSIVE = max((price for _, price in PRICES), key=lambda p: p.output)
# A hand-written cassette ("scripted", like the demo's) is priced as the default model would be, so
# its runs show the cost the same work would have with a real model, and budgets behave the same.
SCRIPTED = "scripted"


def price_for(model: str) -> Price | None:
    """The known price of `model`, or None when no family matches."""
    if model == SCRIPTED:
        from agentloop.config import DEFAULT_MODEL

        model = DEFAULT_MODEL
    for prefix, price in PRICES:
        if model.startswith(prefix):
            return price
    return None


class Pricer:
    """Prices calls of one model; warns once (per pricer) when the model is unknown."""

    def __init__(self) -> None:
        self._warned: set[str] = set()

    def usage_of(self, model: str, api_usage: dict[str, Any]) -> Usage:
        """One call's Usage (calls=1) from the `usage` object of a Messages API response."""
        price = price_for(model)
        if price is None:
            price = MOST_EXPENSIVE
            if model not in self._warned:
                self._warned.add(model)
                logger.warning("no price known for model %r; counting it at %s/%s USD per MTok", model, *price)
        input_tokens = int(api_usage.get("input_tokens") or 0)
        output_tokens = int(api_usage.get("output_tokens") or 0)
        cache_read = int(api_usage.get("cache_read_input_tokens") or 0)
        cache_write = int(api_usage.get("cache_creation_input_tokens") or 0)
        cost = _PER_TOKEN * (
            input_tokens * price.input
            + output_tokens * price.output
            + cache_write * price.input * _CACHE_WRITE_FACTOR
            + cache_read * price.input * _CACHE_READ_FACTOR
        )
        return Usage(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_read_tokens=cache_read,
            cache_write_tokens=cache_write,
            cost_usd=round(cost, 6),
            calls=1,
        )
