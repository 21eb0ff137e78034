"""The tool-use loop end to end: the real `anthropic` client against the loopback Messages-API server
(tests/agent/fake_anthropic.py), real files in a real git repository, real shell commands."""

from __future__ import annotations

import json
from pathlib import Path

from agent_support import API_KEY, MakeCoder, edit_task, loop_config
from fake_anthropic import FakeAnthropic, message, text, tool_use

from agentloop.config import DEFAULT_MODEL
from agentloop.results import Usage

APP = "services/orders/app.py"


def _transcript(tmp_path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (tmp_path / "transcript.jsonl").read_text().splitlines()]


def test_edit_and_pass_changes_the_worktree(fake: FakeAnthropic, worktree: Path, coder_for: MakeCoder,
                                            tmp_path: Path) -> None:
    fake.add(
        message(tool_use("str_replace_based_edit_tool", {"command": "view", "path": "/repo/" + APP})),
        message(tool_use("str_replace_based_edit_tool",
                         {"command": "str_replace", "path": APP, "old_str": "sum(prices) - 1", "new_str": "sum(prices)"})),
        message(tool_use("bash", {"command": "cd services/orders && python -m pytest -q -p no:cacheprovider"})),
        message(text("Fixed the off-by-one in total()."), input_tokens=200, output_tokens=20),
    )
    seen: list[Usage] = []
    result = coder_for().edit(edit_task(worktree), on_usage=seen.append)

    assert result.stop_reason == "done", result.error
    assert result.summary == "Fixed the off-by-one in total()."
    assert (worktree / APP).read_text() == "def total(prices):\n    return sum(prices)\n"
    assert result.turns == 4 and result.usage.calls == 4
    assert result.usage.input_tokens == 500 and result.usage.output_tokens == 170
    assert result.usage.cost_usd > 0
    assert [u.calls for u in seen] == [1, 2, 3, 4]  # the live display sees usage grow after every call
    # The model saw the file (numbered) and the passing test run.
    assert "return sum(prices) - 1" in fake.tool_results(1)[0]["content"]
    assert "1 passed" in fake.tool_results(3)[0]["content"]
    # The real client sent the key, the tools the models are trained on, and cache breakpoints.
    sent = fake.headers[0]
    assert API_KEY in (sent.get("x-api-key"), sent.get("authorization", "").removeprefix("Bearer "))
    first = fake.requests[0]
    assert first["model"] == DEFAULT_MODEL
    assert {t.get("type", "custom") for t in first["tools"]} == {"text_editor_20250728", "bash_20250124"}
    assert first["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert first["tools"][-1]["cache_control"] == {"type": "ephemeral"}
    prompt = fake.user_texts(0)
    assert "total([2, 3]) returns 4" in prompt and "services/orders/app.py" in prompt  # issue and repo map
    assert "unit: pytest -q services" in prompt
    kinds = [line["kind"] for line in _transcript(tmp_path)]
    assert kinds.count("request") == 4 and kinds.count("response") == 4


def test_fix_turn_is_given_the_failures_logs_and_diff(fake: FakeAnthropic, worktree: Path,
                                                     coder_for: MakeCoder) -> None:
    coder = coder_for()
    fake.add(
        message(tool_use("str_replace_based_edit_tool",
                         {"command": "str_replace", "path": APP, "old_str": "- 1", "new_str": "+ 0 * 1"})),
        message(text("First attempt.")),
    )
    first = coder.edit(edit_task(worktree))
    assert first.stop_reason == "done"

    fake.add(
        message(tool_use("str_replace_based_edit_tool",
                         {"command": "str_replace", "path": APP, "old_str": "sum(prices) + 0 * 1", "new_str": "sum(prices)"})),
        message(text("Simplified.")),
    )
    second = coder.edit(edit_task(
        worktree, iteration=2, usage_so_far=first.usage,
        failures="tests/integration/test_checkout.py::test_total FAILED: assert 4 == 5",
        logs="## orders\nTraceback: ValueError in total", diff="-    return sum(prices) - 1\n+    return sum(prices) + 0 * 1",
    ))
    assert second.stop_reason == "done"
    assert (worktree / APP).read_text() == "def total(prices):\n    return sum(prices)\n"
    fix_request = fake.requests[2]
    assert len(fix_request["messages"]) == 1  # a fresh conversation; the work lives in the worktree
    prompt = fake.user_texts(2)
    assert "iteration 2" in prompt
    assert "test_total FAILED: assert 4 == 5" in prompt
    assert "ValueError in total" in prompt
    assert "+    return sum(prices) + 0 * 1" in prompt


def test_transient_errors_are_retried_until_success(fake: FakeAnthropic, worktree: Path, coder_for: MakeCoder,
                                                   tmp_path: Path) -> None:
    from fake_anthropic import Failure

    fake.add(Failure(429), Failure(529), Failure(500), message(text("Nothing to change.")))
    result = coder_for().edit(edit_task(worktree))
    assert result.stop_reason == "done"
    assert len(fake.requests) == 4
    assert result.usage.calls == 1
    retries = [line for line in _transcript(tmp_path) if line["kind"] == "retry"]
    assert [r["reason"].split()[1] for r in retries] == ["429", "529", "500"]  # type: ignore[union-attr]


def test_errors_that_outlast_retries_end_the_edit_without_crashing(fake: FakeAnthropic, worktree: Path,
                                                                  coder_for: MakeCoder) -> None:
    from fake_anthropic import Failure

    fake.add(*[Failure(529) for _ in range(6)])
    result = coder_for().edit(edit_task(worktree))
    assert result.stop_reason == "error"
    assert "529" in (result.error or "") and "overloaded_error" in (result.error or "")


def test_a_rejected_key_is_an_error_result_naming_the_variable(fake: FakeAnthropic, worktree: Path,
                                                              coder_for: MakeCoder) -> None:
    from fake_anthropic import Failure

    fake.add(Failure(401, retry_after=None))
    result = coder_for().edit(edit_task(worktree))
    assert result.stop_reason == "error" and "ANTHROPIC_API_KEY" in (result.error or "")
    assert len(fake.requests) == 1  # not retried


def test_malformed_tool_input_is_answered_as_an_error_and_the_loop_goes_on(
        fake: FakeAnthropic, worktree: Path, coder_for: MakeCoder) -> None:
    fake.add(
        message(tool_use("str_replace_based_edit_tool", {"command": "str_replace", "path": APP}),
                tool_use("str_replace_based_edit_tool", {"command": "explode", "path": APP}),
                tool_use("bash", {"cmd": "ls"}),
                tool_use("no_such_tool", {})),
        message(text("Giving up.")),
    )
    result = coder_for().edit(edit_task(worktree))
    assert result.stop_reason == "done"
    results = fake.tool_results(1)
    assert [r.get("is_error") for r in results] == [True, True, True, True]
    assert "old_str" in results[0]["content"]
    assert "command" in results[1]["content"]
    assert "unknown tool" in results[3]["content"]
    assert {r["tool_use_id"] for r in results} == {b["id"] for b in fake.requests[1]["messages"][-2]["content"]}


def test_max_turns_ends_the_edit(fake: FakeAnthropic, worktree: Path, coder_for: MakeCoder) -> None:
    fake.add(*[message(tool_use("bash", {"command": "true"})) for _ in range(3)])
    result = coder_for(config=loop_config(agent={"max_turns": 2})).edit(edit_task(worktree))
    assert result.stop_reason == "max_turns" and result.turns == 2
    assert len(fake.requests) == 2


def test_a_spent_token_budget_stops_the_edit_with_its_usage(fake: FakeAnthropic, worktree: Path,
                                                           coder_for: MakeCoder) -> None:
    fake.add(*[message(tool_use("bash", {"command": "true"})) for _ in range(3)])
    config = loop_config(agent={"budget": {"tokens": 400, "usd": None}})
    result = coder_for(config=config).edit(edit_task(worktree, usage_so_far=Usage(input_tokens=150)))
    # 150 before the edit + 150 per call: the second call crosses 400.
    assert result.stop_reason == "budget"
    assert "agent.budget.tokens" in (result.error or "")
    assert result.usage.calls == 2 and len(fake.requests) == 2


def test_a_dollar_budget_already_spent_makes_no_call(fake: FakeAnthropic, worktree: Path,
                                                    coder_for: MakeCoder) -> None:
    config = loop_config(agent={"budget": {"usd": 1.0}})
    result = coder_for(config=config).edit(edit_task(worktree, usage_so_far=Usage(cost_usd=1.25)))
    assert result.stop_reason == "budget" and "agent.budget.usd" in (result.error or "")
    assert fake.requests == []


def test_the_minutes_budget_ends_an_edit_between_model_calls(fake: FakeAnthropic, worktree: Path,
                                                             coder_for: MakeCoder) -> None:
    fake.add(message(tool_use("bash", {"command": "sleep 0.3"})), message(tool_use("bash", {"command": "true"})))
    import time

    result = coder_for().edit(edit_task(worktree, deadline=time.time() + 0.2))
    # the first call is made before the deadline; the command outlives it, so no second call follows
    assert result.stop_reason == "budget" and "agent.budget.minutes" in (result.error or "")
    assert len(fake.requests) == 1


def test_an_answer_cut_at_max_tokens_is_continued(fake: FakeAnthropic, worktree: Path,
                                                  coder_for: MakeCoder) -> None:
    fake.add(message(text("I will now explain at len"), stop_reason="max_tokens"), message(text("gth. Done.")))
    result = coder_for().edit(edit_task(worktree))
    assert result.stop_reason == "done" and result.turns == 2
    assert "Continue exactly where you stopped" in fake.requests[1]["messages"][-1]["content"][0]["text"]
