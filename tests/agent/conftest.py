"""Fixtures for the agent tests: the loopback Messages-API server, a target repository, a coder."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from agent_support import API_KEY, SHOP_FILES, MakeCoder, loop_config
from fake_anthropic import FakeAnthropic, serve

from agentloop.agent.base import Coder
from agentloop.agent.factory import make_coder
from agentloop.config import DEFAULT_MODEL, LoopConfig


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAnthropic]:
    """The loopback server, with the SDK pointed at it through the real environment variables."""
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    for server in serve():
        monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        yield server


@pytest.fixture
def worktree(make_repo: Callable[..., Path]) -> Path:
    return make_repo(SHOP_FILES)


@pytest.fixture
def coder_for(tmp_path: Path) -> MakeCoder:
    """coder_for(model=DEFAULT_MODEL, config=None, record=None) with tiny retry waits."""

    def _make(model: str = DEFAULT_MODEL, config: LoopConfig | None = None,
              record: Path | None = None, use_bwrap: bool | None = None) -> Coder:
        return make_coder(model, config=config or loop_config(), transcript_path=tmp_path / "transcript.jsonl",
                          record_path=record, retry_wait=0.0, use_bwrap=use_bwrap)

    return _make
