"""Whether a model can drive a run, known before the run does any work.

Three questions, cheapest first: is it a Claude model at all (loop speaks Anthropic's Messages API);
has it reached its end of life (the installed anthropic SDK's deprecation table, which is what the SDK
itself warns from); and does the Anthropic API know it for this key (the Models API, one GET).
"""

from __future__ import annotations

import logging
import re
from datetime import date, datetime
from functools import cache
from typing import TYPE_CHECKING

from agentloop.errors import ModelError

if TYPE_CHECKING:
    import anthropic

log = logging.getLogger(__name__)
_warned: set[str] = set()  # a deprecated model is named once per process, not at every check

CLAUDE_PREFIX = "claude-"
_ORDINAL = re.compile(r"(\d+)(?:st|nd|rd|th)\b")


def _current() -> str:
    from agentloop.config import DEFAULT_MODEL

    return DEFAULT_MODEL


@cache
def end_of_life_dates() -> dict[str, date | None]:
    """Every model the installed SDK marks deprecated, with its end-of-life date (None if unreadable)."""
    try:  # a private module of the SDK: read defensively, a newer SDK may move it
        from anthropic._data import DEPRECATED_MODELS
    except ImportError:
        log.debug("this anthropic SDK has no deprecation table")
        return {}
    dates: dict[str, date | None] = {}
    for model, when in DEPRECATED_MODELS.items():
        try:
            dates[model] = datetime.strptime(_ORDINAL.sub(r"\1", str(when)).strip(), "%B %d, %Y").date()
        except ValueError:
            dates[model] = None
    return dates


def is_claude(model: str) -> bool:
    return model.strip().lower().startswith(CLAUDE_PREFIX)


def check_name(model: str, *, today: date | None = None) -> None:
    """Refuse a non-Claude model and one past its end of life; warn about one that is deprecated."""
    if not is_claude(model):
        raise ModelError(
            f"model {model!r} is not a Claude model; loop drives Anthropic's Messages API: use a Claude model "
            f"such as {_current()} (--model, LOOP_MODEL or agent.model in loop.yaml) or --model replay:FILE"
        )
    dates = end_of_life_dates()
    if model not in dates:
        return
    ends = dates[model]
    if ends is not None and ends <= (today or date.today()):
        raise ModelError(
            f"model {model!r} is retired (end of life {ends.isoformat()}, per the anthropic SDK's deprecation "
            f"table); use a current model such as {_current()} (--model, LOOP_MODEL or agent.model in loop.yaml)"
        )
    _warn(model, f"end of life {ends.isoformat()}" if ends else "per the anthropic SDK")


def check_available(model: str, *, client: anthropic.Anthropic | None = None) -> None:
    """Ask the Models API whether `model` exists for this key and is not retired (one GET)."""
    import anthropic  # seconds to import: only when the API is asked

    client = client if client is not None else anthropic.Anthropic(max_retries=2, timeout=30.0)
    try:
        info = client.models.retrieve(model)
    except anthropic.NotFoundError:
        raise ModelError(
            f"model {model!r} does not exist (the Anthropic Models API answered 404 not_found_error); "
            f"use a current model such as {_current()}"
        ) from None
    except anthropic.AuthenticationError:
        raise ModelError("the Anthropic API rejected the credentials (HTTP 401); check ANTHROPIC_API_KEY") from None
    except anthropic.PermissionDeniedError:
        raise ModelError(f"this Anthropic API key may not use model {model!r} (HTTP 403)") from None
    except anthropic.APIConnectionError as exc:
        raise ModelError(
            f"could not reach the Anthropic API at {client.base_url} to check model {model!r} "
            f"({type(exc).__name__}); check the network or ANTHROPIC_BASE_URL"
        ) from None
    except anthropic.APIStatusError as exc:
        raise ModelError(f"checking model {model!r} with the Anthropic Models API failed: HTTP {exc.status_code}") from None
    lifecycle = getattr(info, "lifecycle", None)
    if lifecycle == "retired":
        raise ModelError(f"model {model!r} is retired (the Anthropic Models API says so); "
                         f"use a current model such as {_current()}")
    if lifecycle == "deprecated":
        _warn(model, "per the Anthropic Models API")


def _warn(model: str, why: str) -> None:
    if model not in _warned:
        _warned.add(model)
        log.warning("model %s is deprecated (%s); move to a current model such as %s", model, why, _current())
