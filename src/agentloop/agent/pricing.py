"""Dollar cost of a model call, from Anthropic's list prices (USD per million tokens).

Source: https://platform.claude.com/docs/en/about-claude/pricing and the model overview pages
(https://platform.claude.com/docs/en/models/<model>/overview), checked 2026-11-30. Cache writes (5-minute
TTL) cost 1.25x the input price for every model; cache reads cost 0.1x, except where a model's entry
says otherwise (Opus 5.5 and Sonnet 5.5 bill 0.05x since 2026-10-07, Fable and Mythos 5.1 0.025x).
Claude Haiku 5.5 bills a whole call at a higher rate when its prompt is over 100,000 tokens.

An unknown Claude model is priced at its family's rate (with a warning), an unknown non-Claude model
at the most expensive known rate, so a budget never under-counts by much.
"""

from __future__ import annotations

import logging
import re
from typing import Any, NamedTuple

from agentloop.results import Usage

logger = logging.getLogger(__name__)

_CACHE_WRITE_FACTOR = 1.25
_PER_TOKEN = 1 / 1_000_000
LONG_PROMPT_TOKENS = 100_000


class Price(NamedTuple):
    input: float  # USD per million input tokens
    output: float  # USD per million output tokens
    cache_read: float = 0.1  # a cache hit, as a multiple of the input price


# Keyed by model id without its date suffix (claude-sonnet-4-5-20250929 -> claude-sonnet-4-5).
PRICES: dict[str, Price] = {
    # current (the anthropic SDK's newest models)
    "claude-opus-5-5": Price(4.0, 20.0, 0.05),
    "claude-sonnet-5-5": Price(2.0, 10.0, 0.05),
    "claude-haiku-5-5": Price(0.10, 0.50),  # prompts up to 100k tokens; see LONG_PROMPT
    "claude-fable-5-1": Price(10.0, 50.0, 0.025),
    "claude-mythos-5-1": Price(10.0, 50.0, 0.025),
    # still served
    "claude-fable-5": Price(10.0, 50.0),
    "claude-mythos-5": Price(10.0, 50.0),
    "claude-opus-5": Price(5.0, 25.0),
    "claude-sonnet-5": Price(2.0, 10.0),
    "claude-opus-4-8": Price(5.0, 25.0),
    "claude-opus-4-7": Price(5.0, 25.0),
    "claude-opus-4-6": Price(5.0, 25.0),
    "claude-opus-4-5": Price(5.0, 25.0),
    "claude-sonnet-4-6": Price(3.0, 15.0),
    "claude-sonnet-4-5": Price(3.0, 15.0),
    "claude-haiku-4-5": Price(1.0, 5.0),
    # older generations, for records and cassettes made with them
    "claude-opus-4-1": Price(15.0, 75.0),
    "claude-opus-4-0": Price(15.0, 75.0),
    "claude-opus-4": Price(15.0, 75.0),
    "claude-sonnet-4-0": Price(3.0, 15.0),
    "claude-sonnet-4": Price(3.0, 15.0),
    "claude-3-7-sonnet": Price(3.0, 15.0),
    "claude-3-5-sonnet": Price(3.0, 15.0),
    "claude-3-5-haiku": Price(0.8, 4.0),
    "claude-3-opus": Price(15.0, 75.0),
    "claude-3-haiku": Price(0.25, 1.25),
}
# A call whose prompt (input + cache reads + cache writes) is over LONG_PROMPT_TOKENS, every token of it.
LONG_PROMPT: dict[str, Price] = {"claude-haiku-5-5": Price(0.50, 2.50)}
# An unknown model of a known family (a newer Sonnet, say): the family's rate of its recent generations.
FAMILY_PRICES: dict[str, Price] = {
    "fable": Price(10.0, 50.0),
    "mythos": Price(10.0, 50.0),
    "opus": Price(5.0, 25.0),
    "sonnet": Price(3.0, 15.0),
    "haiku": Price(1.0, 5.0),
}
MOST_EXPENSIVE = max(PRICES.values(), key=lambda p: p.output)
# A hand-written cassette ("scripted", like the demo's) is priced as the default model would be, so
# its runs show the cost the same work would have with a real model, and budgets behave the same.
SCRIPTED = "scripted"
_SUFFIX = re.compile(r"(?:-\d{8}|-latest)?(?:\[1m\])?$")


def _base_id(model: str) -> str:
    if model == SCRIPTED:
        from agentloop.config import DEFAULT_MODEL

        return DEFAULT_MODEL
    return _SUFFIX.sub("", model.strip().lower())


def price_for(model: str) -> Price | None:
    """The list price of `model` (for prompts up to LONG_PROMPT_TOKENS), or None when it is not known."""
    return PRICES.get(_base_id(model))


def family_of(model: str) -> str | None:
    """`opus`, `sonnet`, `haiku`, `fable` or `mythos` for a Claude model id naming one, else None."""
    if not model.startswith("claude-"):
        return None
    return next((word for word in model.split("-") if word in FAMILY_PRICES), None)


class Pricer:
    """Prices calls of one model; warns once (per pricer) when the model is unknown."""

    def __init__(self) -> None:
        self._warned: set[str] = set()

    def _price(self, model: str, prompt_tokens: int) -> Price:
        base = _base_id(model)
        if prompt_tokens > LONG_PROMPT_TOKENS and base in LONG_PROMPT:
            return LONG_PROMPT[base]
        price = PRICES.get(base)
        if price is not None:
            return price
        family = family_of(base)
        price = FAMILY_PRICES[family] if family else MOST_EXPENSIVE
        if model not in self._warned:
            self._warned.add(model)
            basis = f"the {family} family's rate" if family else "the most expensive known rate"
            logger.warning("no price known for model %r; counting it at %s (%s/%s USD per MTok)",
                           model, basis, price.input, price.output)
        return price

    def usage_of(self, model: str, api_usage: dict[str, Any]) -> Usage:
        """One call's Usage (calls=1) from the `usage` object of a Messages API response."""
        input_tokens = int(api_usage.get("input_tokens") or 0)
        output_tokens = int(api_usage.get("output_tokens") or 0)
        cache_read = int(api_usage.get("cache_read_input_tokens") or 0)
        cache_write = int(api_usage.get("cache_creation_input_tokens") or 0)
        price = self._price(model, input_tokens + cache_read + cache_write)
        cost = _PER_TOKEN * (
            input_tokens * price.input
            + output_tokens * price.output
            + cache_write * price.input * _CACHE_WRITE_FACTOR
            + cache_read * price.input * price.cache_read
        )
        return Usage(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_read_tokens=cache_read,
            cache_write_tokens=cache_write,
            cost_usd=round(cost, 6),
            calls=1,
        )
