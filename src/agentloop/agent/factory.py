"""Build the coding agent the CLI and the edit node use, from a model name.

`model` is a Claude model id (the Anthropic API; the SDK reads ANTHROPIC_API_KEY and ANTHROPIC_BASE_URL)
or `replay:PATH` (a cassette). `record_path` writes every answer of the model to a cassette.
`preflight_model` is what a run checks before it does any work.
"""

from __future__ import annotations

import os
from pathlib import Path

from agentloop.agent.base import Coder, ModelClient
from agentloop.agent.coder import AgentCoder
from agentloop.agent.models import check_available, check_name
from agentloop.agent.replay import REPLAY_PREFIX, RecordingModel, ReplayModel, load_cassette
from agentloop.agent.transcript import Transcript
from agentloop.config import LoopConfig
from agentloop.errors import ModelError
from agentloop.redact import Redactor

_KEY_VARIABLES = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN")


def _cassette_path(model: str) -> Path | None:
    if not model.startswith(REPLAY_PREFIX):
        return None
    path = model[len(REPLAY_PREFIX):].strip()
    if not path:
        raise ModelError("--model replay: needs a cassette file, e.g. --model replay:runs/r-1/cassette.json")
    return Path(path).expanduser()


def check_model(model: str) -> None:
    """Fail fast, offline, when `model` cannot be used: a missing/invalid cassette, a model that is not
    Claude or is past its end of life, or no key for it."""
    cassette = _cassette_path(model)
    if cassette is not None:
        load_cassette(cassette)
        return
    if not model.strip():
        raise ModelError("no model given; pass --model MODEL, set agent.model in loop.yaml or LOOP_MODEL")
    check_name(model)
    if not any(os.environ.get(name) for name in _KEY_VARIABLES):
        raise ModelError(f"model {model!r} needs an Anthropic API key: set ANTHROPIC_API_KEY or use --model replay:FILE")


def preflight_model(model: str) -> None:
    """Everything `check_model` checks, then (for a Claude model) that the Anthropic API knows the model
    for this key: one Models API call, before a run makes a worktree, a branch or a comment."""
    check_model(model)
    if _cassette_path(model) is None:
        check_available(model)


def make_coder(model: str, *, config: LoopConfig, transcript_path: Path, record_path: Path | None = None,
               retry_wait: float = 1.0, use_bwrap: bool | None = None, redactor: Redactor | None = None) -> Coder:
    """The coding agent for `model`. `redactor` is the run's (default: the environment's secrets);
    `retry_wait` (first backoff step, seconds) and `use_bwrap` (None: probe) exist for tests and
    unusual hosts."""
    check_model(model)
    secrets = [os.environ[name] for name in _KEY_VARIABLES if os.environ.get(name)]
    redactor = (redactor or Redactor.from_environment()).with_values(*secrets)
    transcript = Transcript(transcript_path, redactor=redactor)
    cassette = _cassette_path(model)
    client: ModelClient
    if cassette is not None:
        client = ReplayModel(cassette)
    else:
        # the SDK takes seconds to import: only a run that talks to the API pays for it
        from agentloop.agent.anthropic_model import AnthropicModel

        client = AnthropicModel(
            model,
            retry_wait=retry_wait,
            on_retry=lambda attempt, reason, wait: transcript.write("retry", attempt=attempt, reason=reason,
                                                                    wait=wait),
        )
    if record_path is not None:
        client = RecordingModel(client, record_path)
    return AgentCoder(client, config=config, transcript=transcript, redactor=redactor, use_bwrap=use_bwrap)
