"""Cassettes and model checks: record a run against the loopback Messages-API server (fake_anthropic.py)
with the real `anthropic` client, replay it with no server and no key, and get the same worktree."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from agent_support import SHOP_FILES, MakeCoder, edit_task
from fake_anthropic import FakeAnthropic, message, text, tool_use

from agentloop.agent.factory import check_model, make_coder
from agentloop.agent.pricing import MOST_EXPENSIVE, Pricer
from agentloop.config import DEFAULT_MODEL
from agentloop.errors import ModelError

APP = "services/orders/app.py"


def _script(fake: FakeAnthropic) -> None:
    fake.add(
        message(tool_use("str_replace_based_edit_tool",
                         {"command": "str_replace", "path": APP, "old_str": " - 1", "new_str": ""})),
        message(tool_use("str_replace_based_edit_tool",
                         {"command": "create", "path": "services/orders/test_issue.py",
                          "file_text": "from app import total\n\n\ndef test_issue():\n    assert total([1]) == 1\n"})),
        message(tool_use("bash", {"command": "echo checked > services/orders/CHECKED"})),
        message(text("Fixed and tested.")),
    )


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*"))
            if p.is_file() and ".git" not in p.relative_to(root).parts}


def test_record_then_replay_gives_the_same_worktree(fake: FakeAnthropic, make_repo, coder_for: MakeCoder,
                                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recorded_repo = make_repo(SHOP_FILES, name="recorded")
    cassette = tmp_path / "cassette.json"
    _script(fake)
    recorded = coder_for(record=cassette).edit(edit_task(recorded_repo))
    assert recorded.stop_reason == "done"
    data = json.loads(cassette.read_text())
    assert data["version"] == 1 and data["model"] == DEFAULT_MODEL
    assert [r["stop_reason"] for r in data["responses"]] == ["tool_use", "tool_use", "tool_use", "end_turn"]
    assert data["responses"][0]["usage"]["input_tokens"] == 100  # responses exactly as the API sent them

    # Replay needs neither the server nor a key.
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")
    replayed_repo = make_repo(SHOP_FILES, name="replayed")
    check_model(f"replay:{cassette}")
    replayed = coder_for(model=f"replay:{cassette}").edit(edit_task(replayed_repo))
    assert replayed.stop_reason == "done" and replayed.summary == recorded.summary
    assert replayed.usage == recorded.usage
    assert _tree(replayed_repo) == _tree(recorded_repo)
    assert (replayed_repo / "services/orders/CHECKED").read_text() == "checked\n"
    assert len(fake.requests) == 4


def test_a_cassette_that_runs_out_ends_the_edit_naming_the_file(worktree: Path, coder_for: MakeCoder,
                                                                tmp_path: Path) -> None:
    cassette = tmp_path / "short.json"
    cassette.write_text(json.dumps({"version": 1, "model": "scripted", "responses": [
        message(tool_use("bash", {"command": "true"}))]}))
    result = coder_for(model=f"replay:{cassette}").edit(edit_task(worktree))
    assert result.stop_reason == "error"
    assert str(cassette) in (result.error or "") and "ran out" in (result.error or "")


@pytest.mark.parametrize("content, expected", [
    (None, "not found"),
    ("{not json", "not a JSON cassette"),
    (json.dumps({"version": 2, "responses": []}), "version"),
    (json.dumps({"version": 1, "responses": [{"type": "error"}]}), "responses[0]"),
])
def test_a_bad_cassette_is_refused_before_any_work(tmp_path: Path, content: str | None, expected: str) -> None:
    cassette = tmp_path / "c.json"
    if content is not None:
        cassette.write_text(content)
    with pytest.raises(ModelError, match=re.escape(expected)) as caught:
        check_model(f"replay:{cassette}")
    assert str(cassette) in str(caught.value)


def test_a_claude_model_without_a_key_is_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="set ANTHROPIC_API_KEY or use --model replay:FILE"):
        check_model(DEFAULT_MODEL)
    from agent_support import loop_config

    with pytest.raises(ModelError, match="ANTHROPIC_API_KEY"):
        make_coder(DEFAULT_MODEL, config=loop_config(), transcript_path=tmp_path / "t.jsonl")


def test_calls_are_priced_per_model_family(caplog: pytest.LogCaptureFixture) -> None:
    pricer = Pricer()
    million = {"input_tokens": 1_000_000, "output_tokens": 1_000_000}
    assert pricer.usage_of("claude-sonnet-4-5-20250929", million).cost_usd == pytest.approx(18.0)
    assert pricer.usage_of("claude-haiku-4-5", million).cost_usd == pytest.approx(6.0)
    cached = pricer.usage_of("claude-sonnet-4-5", {"input_tokens": 0, "output_tokens": 0,
                                                  "cache_read_input_tokens": 1_000_000,
                                                  "cache_creation_input_tokens": 1_000_000})
    assert cached.cost_usd == pytest.approx(0.3 + 3.75)
    unknown = pricer.usage_of("some-gateway-model", million)
    assert unknown.cost_usd == pytest.approx(MOST_EXPENSIVE.input + MOST_EXPENSIVE.output)
    assert "some-gateway-model" in caplog.text
