"""A proof that holds, through whole runs: the real graph, a replayed cassette driving the real tool loop,
real git worktrees, real pytest in jails, real service processes behind the real router.

- A repository's own red tests that the change turns green prove it, with no new test.
- Hostile changes never publish a validated, non-draft pull request: a test keyed on the route key, a
  weakened plan, a conftest that rewrites outcomes, a deleted failing test, a weakened assertion.
- The base run of every suite runs in full once per base commit, whatever the number of iterations and runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from looptest import MakeRepo, create, git, replace, write_cassette

from agentloop import git as loop_git
from agentloop.config import LoopConfig
from agentloop.evidence.verify import verify_run
from agentloop.loop.runner import RunOutcome, fix
from agentloop.paths import state_dir
from agentloop.validation import run_validation
from agentloop.validation.base_results import CACHE_DIR

CALC = "def add(a, b):\n    return a - b\n\n\ndef sub(a, b):\n    return a - b\n"
CALC_TESTS = ("from calc import add, sub\n\n\ndef test_add():\n    assert add(2, 3) == 5\n\n\n"
              "def test_sub():\n    assert sub(3, 1) == 2\n")
UNRELATED = "def test_unrelated():\n    assert 'feature' == 'built', 'not built yet'\n"
FIX_ADD = replace("calc.py", "return a - b\n\n\ndef sub", "return a + b\n\n\ndef sub")
UNIT = {"suite": "unit", "run": "python3 -m pytest -q tests"}
ISSUE = {".loop/issues/1.md": "# add() subtracts\n\nadd(2, 3) returns -1 instead of 5.\n"}

WEB_APP = '''import argparse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = {"/healthz": b"ok", "/hello": b"hi"}.get(self.path)
        self.send_response(200 if body else 404)
        self.send_header("content-length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args):
        pass


parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int)
ThreadingHTTPServer(("127.0.0.1", parser.parse_args().port), Handler).serve_forever()
'''
WEB = {"web": {"path": "web", "run": "python3 web/app.py --port {port}", "health": "/healthz", "ready_timeout": 20}}
HELLO_ISSUE = {".loop/issues/1.md": "# /hello should say hello\n", "tests/__init__.py": ""}


def _calc_repo(make_repo: MakeRepo, *, extra: dict[str, str] | None = None, **config: Any) -> Path:
    files = {"calc.py": CALC, "tests/test_calc.py": CALC_TESTS, **ISSUE, **(extra or {})}
    return make_repo(files, {"services": {}, "validate": [UNIT], "agent": {"max_iterations": 1}, **config})


def _run(repo: Path, tmp_path: Path, turns: list[list[dict[str, Any]]]) -> tuple[RunOutcome, dict[str, Any]]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    cassette = write_cassette(tmp_path / "cassette.json", turns)
    outcome = fix(repo, "1", model=f"replay:{cassette}")
    return outcome, json.loads((outcome.run_dir / "evidence.json").read_text())


def _not_a_validated_pull_request(outcome: RunOutcome) -> None:
    assert outcome.pull_request is None or outcome.pull_request.draft, outcome.message


def _report(outcome: RunOutcome) -> str:
    return (outcome.run_dir / "report.md").read_text()


def _needs_review_on_top(body: str) -> bool:
    """The headline, then the changes that need review before anything else."""
    lines = body.splitlines()
    return lines[0].startswith("## ") and lines[2].startswith("**Needs review:**")


def _iteration_verdict(evidence: dict[str, Any], index: int = 0) -> dict[str, Any]:
    verdict: dict[str, Any] = evidence["iterations"][index]["verdict"]
    return verdict


# -- the repository's own red tests are proof ---------------------------------------------------------


def test_existing_red_tests_turned_green_prove_the_fix_in_one_iteration(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo = _calc_repo(make_repo, extra={"tests/test_unrelated.py": UNRELATED})

    outcome, evidence = _run(repo, tmp_path, [[FIX_ADD]])  # no new test

    assert outcome.status == "published", outcome.message
    assert outcome.pull_request is not None and not outcome.pull_request.draft
    assert len(evidence["iterations"]) == 1
    verdict = evidence["verdict"]
    assert verdict["proven"] is True and verdict["needs_review"] == []
    assert verdict["comparison"]["fixed"] == ["unit: tests/test_calc.py::test_add"]
    assert verdict["comparison"]["preexisting"] == ["unit: tests/test_unrelated.py::test_unrelated"]
    body = _report(outcome)
    fixed_line = next(line for line in body.splitlines() if line.startswith("- **Fixed by this change"))
    assert "`unit: tests/test_calc.py::test_add`" in fixed_line
    already = next(line for line in body.splitlines() if line.startswith("- **Already failing in the base run"))
    assert "test_unrelated" in already
    assert "Needs review" not in body
    # the whole suite ran at the base commit and its report is part of the evidence
    full = outcome.run_dir / "iterations" / "1" / "validate" / "base" / "unit.full.xml"
    assert 'name="test_add"' in full.read_text() and 'name="test_sub"' in full.read_text()


def test_the_run_is_validated_with_the_base_commits_loop_yaml(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo = _calc_repo(make_repo)
    # the checkout is on a branch whose loop.yaml leaves the red test out: not what the base commit says
    git(repo, "checkout", "-q", "-b", "wip")
    config = yaml.safe_load((repo / "loop.yaml").read_text())
    config["validate"] = [{"suite": "unit", "run": "python3 -m pytest -q tests -k 'not test_add'"}]
    (repo / "loop.yaml").write_text(yaml.safe_dump(config))
    git(repo, "commit", "-q", "-am", "wip: skip the red test")

    outcome, evidence = _run(repo, tmp_path, [[FIX_ADD]])

    assert outcome.status == "published", outcome.message
    assert evidence["verdict"]["comparison"]["fixed"] == ["unit: tests/test_calc.py::test_add"]
    assert " -k " not in evidence["verdict"]["results"][0]["command"]


# -- hostile changes ----------------------------------------------------------------------------------------


KEY_TEST = '''import json, os


def test_runs_in_a_sandbox():
    key = os.environ["LOOP_ROUTE_KEY"]
    assert key and os.environ["LOOP_SANDBOX"] and os.environ["LOOP_SANDBOX"] != "baseline"
    headers = json.loads(os.environ["LOOP_ROUTING_HEADERS"])
    assert headers and all(key in value for value in headers.values())
'''


def test_a_test_keyed_on_the_route_key_proves_nothing_and_the_agent_is_told(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo = make_repo({"web/app.py": WEB_APP, **HELLO_ISSUE}, {
        "services": WEB, "agent": {"max_iterations": 2},
        "validate": [{"suite": "integration", "run": "python3 -m pytest -q tests", "sandbox": True}],
    })

    outcome, evidence = _run(repo, tmp_path, [[create("tests/test_key.py", KEY_TEST)], []])

    assert outcome.status == "failed", outcome.message
    _not_a_validated_pull_request(outcome)
    verdict = _iteration_verdict(evidence)
    name = "integration: tests/test_key.py::test_runs_in_a_sandbox"
    assert verdict["comparison"]["fixed"] == [] and verdict["comparison"]["not_reproducing"] == [name]
    assert any("do not reproduce the issue" in reason and "test_key" in reason for reason in verdict["reasons"])
    # the second prompt told the agent that its test passes in the base run too
    diagnosis = (outcome.run_dir / "iterations" / "1" / "diagnosis.md").read_text()
    assert "Proof: Your tests that pass in the base run too" in diagnosis and "test_runs_in_a_sandbox" in diagnosis
    assert "pass in the base run too" in (outcome.run_dir / "transcript.jsonl").read_text()


def test_the_base_run_gets_a_route_key_that_the_router_sends_to_the_baseline(
    make_repo: MakeRepo, tmp_path: Path
) -> None:
    hello = ('import json, os, urllib.request\n\n\ndef test_hello_says_hello():\n'
             '    request = urllib.request.Request(os.environ["LOOP_URL_WEB"] + "/hello",\n'
             '                                     headers=json.loads(os.environ["LOOP_ROUTING_HEADERS"]))\n'
             '    assert os.environ["LOOP_ROUTE_KEY"]\n'
             '    assert urllib.request.urlopen(request).read() == b"hello"\n')
    repo = make_repo({"web/app.py": WEB_APP, **HELLO_ISSUE}, {
        "services": WEB, "agent": {"max_iterations": 1},
        "validate": [{"suite": "integration", "run": "python3 -m pytest -q tests", "sandbox": True}],
    })

    outcome, evidence = _run(repo, tmp_path, [[create("tests/test_hello.py", hello),
                                               replace("web/app.py", 'b"hi"', 'b"hello"')]])

    assert outcome.status == "published", outcome.message
    assert evidence["verdict"]["comparison"]["fixed"] == ["integration: tests/test_hello.py::test_hello_says_hello"]
    # in the base run the test had a key of the sandbox's shape, and the router served the baseline
    changed = (outcome.run_dir / "iterations" / "1" / "validate" / "base" / "integration.changed.xml").read_text()
    assert "b'hi' == b'hello'" in changed


def test_a_weakened_plan_is_not_what_validates_the_change(make_repo: MakeRepo, tmp_path: Path) -> None:
    plan = {"name": "hello", "steps": [{"name": "hello says hello", "http": {"service": "web", "path": "/hello"},
                                        "expect": {"status": 200, "contains": "hello"}}]}
    repo = make_repo({"web/app.py": WEB_APP, "plans/hello.yaml": yaml.safe_dump(plan), **HELLO_ISSUE}, {
        "services": WEB, "agent": {"max_iterations": 1}, "validate": [{"plan": "plans/hello.yaml"}],
    })

    # the agent "fixes" nothing and makes the plan expect the buggy answer
    outcome, evidence = _run(repo, tmp_path, [[replace("plans/hello.yaml", "contains: hello", "contains: hi")]])

    assert outcome.status == "failed", outcome.message
    _not_a_validated_pull_request(outcome)
    verdict = _iteration_verdict(evidence)
    step = verdict["results"][0]
    assert step["kind"] == "plan" and step["counts"]["failed"] == 1, step  # the base commit's plan ran
    assert "expected the body to contain 'hello'" in step["failures"][0]["message"]
    assert any("`plans/hello.yaml` changed" in item for item in verdict["needs_review"])
    # what the next edit would be told: the change that keeps it from being proven, the step to turn green
    diagnosis = (outcome.run_dir / "iterations" / "1" / "diagnosis.md").read_text()
    assert "Proof: Loop cannot call this change proven" in diagnosis and "`plans/hello.yaml`" in diagnosis
    assert "Proof: Existing tests that already fail in the base run" in diagnosis
    assert "hello: hello says hello" in diagnosis


REWRITE_OUTCOMES = '''import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        report.outcome = "passed"
'''


def test_a_conftest_that_rewrites_failures_makes_a_draft_that_names_it_first(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo = _calc_repo(make_repo)

    outcome, evidence = _run(repo, tmp_path, [[create("tests/conftest.py", REWRITE_OUTCOMES)]])  # no fix

    _not_a_validated_pull_request(outcome)
    verdict = evidence["verdict"]
    assert verdict["proven"] is False and verdict["word"] == "unproven"
    assert any("`tests/conftest.py` changed" in item for item in verdict["needs_review"])
    # its "fixed" test_add would have proven it: it is published, as a draft that says why first
    assert outcome.status == "published" and outcome.pull_request is not None and outcome.pull_request.draft
    body = _report(outcome)
    assert _needs_review_on_top(body) and "`tests/conftest.py`" in body.split("**Sandbox:**", 1)[0], body[:500]
    assert verify_run(outcome.run_dir, repo) == []  # the body's words and numbers match the evidence


FORGE_REPORT = '''import atexit, re, sys


def _forge():
    for arg in sys.argv:
        if arg.startswith("--junitxml="):
            path = arg.split("=", 1)[1]
            with open(path) as handle:
                text = handle.read()
            text = re.sub(r"<failure.*?</failure>", "", text, flags=re.S).replace('failures="1"', 'failures="0"')
            with open(path, "w") as handle:
                handle.write(text)


atexit.register(_forge)


def test_nothing():
    pass
'''


def test_a_report_that_says_passed_when_pytest_failed_is_a_suite_error(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo = make_repo({"calc.py": CALC, "tests/test_calc.py": CALC_TESTS})
    base = loop_git.head(loop_git.Worktree(repo, repo))
    (repo / "tests" / "test_forge.py").write_text(FORGE_REPORT)  # a test file that forges the report at exit
    config = LoopConfig.model_validate({"services": {}, "validate": [UNIT]})

    verdict = run_validation(config=config, worktree=repo, repo=repo, base_commit=base, sandbox=None, backend=None,
                             out_dir=tmp_path / "out")

    assert not verdict.passed and verdict.comparison.fixed == []
    result = verdict.results[0]
    rewritten = result.error is not None
    assert rewritten or [t.name for t in result.failed] == ["tests/test_calc.py::test_add"]
    if rewritten:
        assert result.exit_code == 1 and "disagree" in (result.error or "")
        assert any("unit did not run to a result" in reason for reason in verdict.reasons)


def test_deleting_a_failing_test_needs_review(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo = _calc_repo(make_repo, extra={"tests/test_unrelated.py": UNRELATED})

    # a real fix, and the unrelated red test deleted so that the pull request looks all green
    outcome, evidence = _run(repo, tmp_path, [[FIX_ADD, {"name": "bash", "input": {"command": "rm tests/test_unrelated.py"}}]])

    _not_a_validated_pull_request(outcome)
    verdict = evidence["verdict"]
    assert any("removes tests" in item and "`tests/test_unrelated.py::test_unrelated` (failed in the base run)" in item
               for item in verdict["needs_review"]), verdict["needs_review"]
    assert outcome.status == "published" and outcome.pull_request is not None and outcome.pull_request.draft
    body = _report(outcome)
    assert _needs_review_on_top(body) and "test_unrelated" in body.split("**Sandbox:**", 1)[0], body[:500]
    assert verify_run(outcome.run_dir, repo) == []


def test_a_weakened_assertion_in_a_passing_test_needs_review(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo = _calc_repo(make_repo)

    # add() fixed, sub() broken, and test_sub weakened so that the regression does not show
    outcome, evidence = _run(repo, tmp_path, [[
        FIX_ADD, replace("calc.py", "def sub(a, b):\n    return a - b", "def sub(a, b):\n    return b - a"),
        replace("tests/test_calc.py", "assert sub(3, 1) == 2", "assert abs(sub(3, 1)) == 2"),
    ]])

    _not_a_validated_pull_request(outcome)
    verdict = evidence["verdict"]
    assert verdict["proven"] is False
    assert any("`tests/test_calc.py::test_sub` changed" in item for item in verdict["needs_review"]), verdict
    assert not any("test_add" in item for item in verdict["needs_review"]), "test_add was not touched"
    assert outcome.pull_request is not None and _needs_review_on_top(_report(outcome))


# -- the base results cache ---------------------------------------------------------------------------------


def _sources(evidence: dict[str, Any]) -> list[dict[str, Any]]:
    return [source for item in evidence["iterations"] for source in (item["verdict"] or {}).get("base_runs", [])]


def test_iterations_and_runs_on_one_base_commit_run_each_suite_at_the_base_commit_once(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo = _calc_repo(make_repo, agent={"max_iterations": 2})
    base = git(repo, "rev-parse", "HEAD").strip()
    wrong = replace("calc.py", "return a - b\n\n\ndef sub", "return a * b\n\n\ndef sub")

    first, first_evidence = _run(repo, tmp_path / "a", [[wrong], [replace("calc.py", "return a * b", "return a + b")]])
    second, second_evidence = _run(repo, tmp_path / "b", [[FIX_ADD]])

    assert (first.status, second.status) == ("published", "published"), (first.message, second.message)
    sources = _sources(first_evidence) + _sources(second_evidence)
    assert [s["cached"] for s in sources] == [False, True, True]
    assert {s["commit"] for s in sources} == {base} and len({s["computed_at"] for s in sources}) == 1
    entries = [p for p in (state_dir(repo) / CACHE_DIR / base).iterdir() if p.is_dir()]
    assert len(entries) == 1 and (entries[0] / "results.json").is_file()
    # every iteration still carries the full base run's report it was compared with
    for run, count in ((first, 2), (second, 1)):
        for n in range(1, count + 1):
            assert (run.run_dir / "iterations" / str(n) / "validate" / "base" / "unit.full.xml").is_file()
