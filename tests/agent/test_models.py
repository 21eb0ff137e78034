"""Models: a current default (per the installed anthropic SDK), list prices for the current models, and
the preflight `loop fix` runs before any work — a missing key, a retired, unknown or non-Claude model is
exit 2 with one line, and leaves no worktree, branch, baseline, run record or comment behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import typing
from datetime import date
from pathlib import Path

import anthropic.types
import pytest
from agent_support import API_KEY
from anthropic._data import DEPRECATED_MODELS
from fake_anthropic import FakeAnthropic
from looptest import MakeRepo, git

from agentloop.agent.models import end_of_life_dates
from agentloop.agent.pricing import SCRIPTED, Pricer, price_for
from agentloop.config import DEFAULT_MODEL
from agentloop.paths import state_dir

ROOT = Path(__file__).resolve().parents[2]
MILLION = {"input_tokens": 1_000_000, "output_tokens": 1_000_000}
CONFIG = {"services": {"web": {"path": "web", "run": "python3 -m http.server {port}"}},
          "validate": [{"suite": "unit", "run": "python3 -m pytest -q"}]}


def _sdk_models() -> list[str]:
    """The model ids the installed SDK names (its `Model` type), newest first."""
    literal = typing.get_args(anthropic.types.Model)[0]
    return [str(model) for model in typing.get_args(literal)]


def _retired() -> str:
    """A model of the SDK's deprecation table whose end of life has passed."""
    past = [model for model, ends in end_of_life_dates().items() if ends is not None and ends <= date.today()]
    assert past, "the SDK's deprecation table has no model past its end of life to test with"
    return past[0]


def test_the_default_model_is_one_the_sdk_lists_and_does_not_deprecate() -> None:
    assert DEFAULT_MODEL in _sdk_models()
    assert DEFAULT_MODEL not in DEPRECATED_MODELS
    # every model the README and the examples name as the one to use
    named: dict[str, str] = {}
    for path in [ROOT / "README.md", *sorted((ROOT / "examples").rglob("*.yaml")), *sorted((ROOT / "examples").rglob("*.md"))]:
        for match in re.finditer(r"(?:\bmodel:\s*|--model[ =])(claude-[a-z0-9-]+)", path.read_text(encoding="utf-8")):
            named[match.group(1)] = str(path.relative_to(ROOT))
    assert DEFAULT_MODEL in named, "the README names the default model"
    assert {model: where for model, where in named.items() if model in DEPRECATED_MODELS} == {}
    # a scripted cassette is priced as the default model, which has a list price of its own
    assert price_for(SCRIPTED) == price_for(DEFAULT_MODEL) is not None


def test_the_current_models_are_priced_at_their_list_rates(caplog: pytest.LogCaptureFixture) -> None:
    pricer = Pricer()
    current = [m for m in _sdk_models() if m not in DEPRECATED_MODELS and re.search(r"opus|sonnet|haiku", m)]
    assert {"claude-opus-5-5", "claude-sonnet-5-5", "claude-haiku-5-5"} <= set(current)
    assert [m for m in current if price_for(m) is None] == []
    assert pricer.usage_of("claude-opus-5-5", MILLION).cost_usd == pytest.approx(4.0 + 20.0)
    assert pricer.usage_of("claude-sonnet-5-5", MILLION).cost_usd == pytest.approx(2.0 + 10.0)
    # cache hits on Sonnet 5.5 bill 0.05x the input price, cache writes 1.25x
    cached = pricer.usage_of("claude-sonnet-5-5", {"cache_read_input_tokens": 1_000_000,
                                                  "cache_creation_input_tokens": 1_000_000})
    assert cached.cost_usd == pytest.approx(0.10 + 2.50)
    # Haiku 5.5 bills the whole call at the higher rate once the prompt is over 100k tokens
    short = pricer.usage_of("claude-haiku-5-5", {"input_tokens": 100_000, "output_tokens": 10_000})
    long = pricer.usage_of("claude-haiku-5-5", {"input_tokens": 50_000, "cache_read_input_tokens": 60_000,
                                               "output_tokens": 10_000})
    assert short.cost_usd == pytest.approx(0.1 * 0.10 + 0.01 * 0.50)
    assert long.cost_usd == pytest.approx(0.05 * 0.50 + 0.06 * 0.50 * 0.1 + 0.01 * 2.50)
    assert pricer.usage_of("claude-sonnet-5-5-20261001", MILLION).cost_usd == pytest.approx(12.0)  # dated id
    assert "no price known" not in caplog.text


def test_an_unknown_claude_model_is_priced_at_its_family_rate_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    pricer = Pricer()
    assert pricer.usage_of("claude-sonnet-9", MILLION).cost_usd == pytest.approx(3.0 + 15.0)
    assert pricer.usage_of("claude-opus-7-1", MILLION).cost_usd == pytest.approx(5.0 + 25.0)
    assert "claude-sonnet-9" in caplog.text and "sonnet family" in caplog.text


def _loop(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agentloop.cli.main", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False, env={**os.environ, "COLUMNS": "200", **(env or {})})


def _refused_before_any_work(result: subprocess.CompletedProcess[str], repo: Path, *needles: str) -> None:
    assert result.returncode == 2, result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    state = state_dir(repo)
    assert not (state / "worktrees").exists() or not any((state / "worktrees").iterdir()), "a worktree was made"
    assert git(repo, "branch", "--list", "loop/*").strip() == "", "a loop/* branch was made"
    assert not (state / "local").exists(), "the baseline was started"
    assert not (state / "comments" / "1.md").exists(), "a comment was posted on the issue"
    runs = repo / ".loop" / "runs"
    assert not runs.exists() or not any(runs.iterdir()), "a run record was made"


@pytest.fixture
def repo(make_repo: MakeRepo) -> Path:
    return make_repo({"web/index.html": "hi\n", ".loop/issues/1.md": "# The page says hi\n\nIt should say hello.\n"},
                     CONFIG)


def test_a_non_claude_model_is_named_as_such(repo: Path) -> None:
    result = _loop("fix", "1", "--model", "gpt-4o", cwd=repo, env={"ANTHROPIC_API_KEY": API_KEY})
    _refused_before_any_work(result, repo, "'gpt-4o'", "not a Claude model", DEFAULT_MODEL)


def test_a_claude_model_without_a_key(repo: Path) -> None:
    _refused_before_any_work(_loop("fix", "1", cwd=repo), repo, DEFAULT_MODEL, "ANTHROPIC_API_KEY")


def test_a_model_past_its_end_of_life_in_the_sdk_is_retired(repo: Path) -> None:
    retired = _retired()
    result = _loop("fix", "1", "--model", retired, cwd=repo, env={"ANTHROPIC_API_KEY": API_KEY})
    _refused_before_any_work(result, repo, repr(retired), "retired", DEFAULT_MODEL)


def test_loop_yaml_naming_a_retired_model_is_refused_too(make_repo: MakeRepo) -> None:
    retired = _retired()
    repo = make_repo({"web/index.html": "hi\n", ".loop/issues/1.md": "# t\n"}, {**CONFIG, "agent": {"model": retired}})
    _refused_before_any_work(_loop("fix", "1", cwd=repo, env={"ANTHROPIC_API_KEY": API_KEY}), repo, "retired")


def test_a_model_the_models_api_does_not_know_is_exit_2_naming_it(repo: Path, fake: FakeAnthropic) -> None:
    env = {"ANTHROPIC_API_KEY": API_KEY, "ANTHROPIC_BASE_URL": fake.url}
    result = _loop("fix", "1", "--model", "claude-sonnet-5-55", cwd=repo, env=env)
    _refused_before_any_work(result, repo, "'claude-sonnet-5-55'", "does not exist", "404")
    assert fake.model_lookups == ["claude-sonnet-5-55"] and fake.requests == []


def test_a_model_the_models_api_calls_retired_is_refused(repo: Path, fake: FakeAnthropic) -> None:
    fake.models["claude-opus-5-5"] = "retired"
    env = {"ANTHROPIC_API_KEY": API_KEY, "ANTHROPIC_BASE_URL": fake.url}
    result = _loop("fix", "1", "--model", "claude-opus-5-5", cwd=repo, env=env)
    _refused_before_any_work(result, repo, "'claude-opus-5-5'", "retired")


def test_a_rejected_key_is_found_before_any_work(repo: Path, fake: FakeAnthropic) -> None:
    fake.reject_key = True
    env = {"ANTHROPIC_API_KEY": API_KEY, "ANTHROPIC_BASE_URL": fake.url}
    _refused_before_any_work(_loop("fix", "1", cwd=repo, env=env), repo, "401", "ANTHROPIC_API_KEY")


def test_an_unreachable_api_is_found_before_any_work(repo: Path) -> None:
    env = {"ANTHROPIC_API_KEY": API_KEY, "ANTHROPIC_BASE_URL": "http://127.0.0.1:9"}  # discard: nothing listens
    _refused_before_any_work(_loop("fix", "1", cwd=repo, env=env), repo, "could not reach", DEFAULT_MODEL)


def test_a_known_model_passes_the_preflight_with_one_lookup(fake: FakeAnthropic) -> None:
    from agentloop.agent.factory import preflight_model

    preflight_model(DEFAULT_MODEL)
    assert fake.model_lookups == [DEFAULT_MODEL]
    preflight_model(f"replay:{ROOT / 'examples' / 'cassettes' / 'shop-issue-1.json'}")  # no API call for a replay
    assert fake.model_lookups == [DEFAULT_MODEL]
