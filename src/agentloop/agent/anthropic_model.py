"""The model behind the coding agent: the Anthropic Messages API, with our own counted retries.

A model client turns one request (the keyword arguments of ``messages.create``) into one response,
as the plain JSON object ``/v1/messages`` returns. Keeping responses as JSON lets the recorder write
them to a cassette unchanged and the replay model hand them back exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anthropic
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from agentloop.errors import ModelError

logger = logging.getLogger(__name__)

RetryListener = Callable[[int, str, float], None]  # attempt, reason, seconds until the next try


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, anthropic.APIConnectionError):  # includes timeouts
        return True
    if isinstance(exc, anthropic.APIStatusError):
        return exc.status_code in (408, 409, 429) or exc.status_code >= 500
    return False


def _retry_after(exc: BaseException) -> float | None:
    """Seconds the server asked us to wait (`retry-after-ms` or `retry-after`), if it said."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            continue  # an HTTP date: fall back to our own backoff
    return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, anthropic.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else {}
        error = body.get("error") if isinstance(body.get("error"), dict) else {}
        kind = error.get("type", "") if error else ""
        message = error.get("message", "") if error else str(exc)
        return f"HTTP {exc.status_code} {kind}: {message}".strip()
    return f"{type(exc).__name__}: {exc}"


class AnthropicModel:
    """`messages.create` through the real SDK; retries 429/5xx/529/connection errors with tenacity.

    The SDK's own retries are off (``max_retries=0``) so that every retry is ours, logged and counted.
    `retry_wait` is the first backoff step (doubling up to `max_wait`) when the server gives no
    retry-after; a retry-after the server gives is honoured (up to `max_wait`).
    """

    def __init__(
        self,
        model: str,
        *,
        client: anthropic.Anthropic | None = None,
        max_attempts: int = 6,
        retry_wait: float = 1.0,
        max_wait: float = 60.0,
        on_retry: RetryListener | None = None,
    ) -> None:
        self.model = model
        self._client = client if client is not None else anthropic.Anthropic(max_retries=0)
        self._max_attempts = max_attempts
        self._retry_wait = retry_wait
        self._max_wait = max_wait
        self._on_retry = on_retry
        self.retries = 0

    def create(self, request: dict[str, Any]) -> dict[str, Any]:
        retrying = Retrying(
            stop=stop_after_attempt(self._max_attempts),
            wait=self._wait,
            retry=retry_if_exception(_is_transient),
            before_sleep=self._before_sleep,
            reraise=True,
        )
        try:
            message = retrying(self._client.messages.create, **{**request, "model": self.model})
        except anthropic.AuthenticationError:
            raise ModelError(
                "the Anthropic API rejected the credentials (HTTP 401); check ANTHROPIC_API_KEY"
            ) from None
        except anthropic.APIError as exc:
            tried = f" after {self._max_attempts} attempts" if _is_transient(exc) else ""
            raise ModelError(f"Anthropic API call failed{tried}: {_describe(exc)}") from None
        return dict(message.to_dict())

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        asked = _retry_after(exc) if exc is not None else None
        if asked is not None:
            return min(asked, self._max_wait)
        return float(min(self._retry_wait * 2 ** (state.attempt_number - 1), self._max_wait))

    def _before_sleep(self, state: RetryCallState) -> None:
        self.retries += 1
        exc = state.outcome.exception() if state.outcome is not None else None
        reason = _describe(exc) if exc is not None else "unknown"
        seconds = state.next_action.sleep if state.next_action is not None else 0.0
        logger.warning("model call failed (%s); retry %d in %.1fs", reason, state.attempt_number, seconds)
        if self._on_retry is not None:
            self._on_retry(state.attempt_number, reason, seconds)
