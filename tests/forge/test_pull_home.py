"""The pull request as the run's home and the check run `loop / validation` (issue 16), against the
loopback GitHub and on the local forge: the draft appears after the first deploy and turns ready only
when proven; the check goes in_progress -> success, failure (with annotations at file:line) or neutral;
a run killed right after opening its draft opens no second one; a token without checks still publishes."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from looptest import MakeRepo, create, replace, write_cassette

from agentloop.errors import RunInterrupted
from agentloop.forge.base import CHECK_NAME, Annotation, CheckReport, Step
from agentloop.forge.github import GitHubForge
from agentloop.forge.github_pulls import graphql_url
from agentloop.loop.nodes._home import failure_location
from agentloop.loop.runner import fix, resume
from agentloop.paths import state_dir
from agentloop.results import TestCaseResult

from .conftest import SLUG
from .fake_github import FakeGitHub
from .test_kill_side_effects import CALC, FIXED, NOT_FIXED, _config, _killed_at_each, _status

PLANTED = "planted-Secret-4f9a1c7e2b"  # a `policy.secrets` value the failing test prints
HOSTILE = {**CALC, "calc.py": f"KEY = {PLANTED!r}\n\n\ndef add(a, b):\n    return a - b\n"}
TEST_LEAKS = {"name": "str_replace_based_edit_tool", "input": {
    "command": "create", "path": "tests/test_add.py",
    "file_text": "import calc\n\n\ndef test_add():\n    assert calc.add(2, 3) == 5, calc.KEY\n"}}
# fixed and shown by test_add, but it also edits a test that passed in the base run: not provable
UNPROVEN = [[FIXED[0][0], FIXED[0][1], replace("tests/test_calc.py", "    pass", "    assert True")]]


def _github_run(github: FakeGitHub, make_repo: MakeRepo, tmp_path: Path, cassette: list[list[dict[str, Any]]], *,
                files: dict[str, str] = CALC, token: str | None = None,
                config: dict[str, Any] | None = None) -> tuple[Any, list[dict[str, Any]]]:
    """`loop fix 7` in process against the loopback GitHub; returns (outcome, what it saw at its verdicts)."""
    repo = make_repo(files, {**_config({"kind": "github", "repo": SLUG}), **(config or {})})
    github.add_repo(SLUG, repo)
    github.add_issue(SLUG, 7, "add() subtracts", "add(2, 3) returns -1 instead of 5.")
    seen: list[dict[str, Any]] = []

    def progress(event: dict[str, Any]) -> None:
        if event.get("kind") == "verdict":  # validated, not yet reported: the check is still running
            seen.append({"drafts": [p["draft"] for p in github.repos[SLUG].pulls],
                         "checks": [c["status"] for c in github.check_runs]})

    forge = GitHubForge(SLUG, api_url=github.api_url, token=token or github.token, backoff=0)
    outcome = fix(repo, "7", model=f"replay:{write_cassette(tmp_path / 'c.json', cassette)}", forge=forge,
                  progress=progress)
    return outcome, seen


def test_the_draft_opens_after_the_deploy_and_turns_ready_when_proven(
    github: FakeGitHub, make_repo: MakeRepo, tmp_path: Path
) -> None:
    outcome, seen = _github_run(github, make_repo, tmp_path, FIXED)

    assert outcome.status == "published", outcome.message
    assert seen == [{"drafts": [True], "checks": ["in_progress"]}]  # while validating: a draft, a running check
    [pull] = github.repos[SLUG].pulls
    assert not pull["draft"] and outcome.pull_request is not None and not outcome.pull_request.draft
    assert "Fixes #7" in pull["body"] and "step=publish:1 -->" in pull["body"]
    [check] = github.check_runs
    assert (check["name"], check["status"], check["conclusion"]) == (CHECK_NAME, "completed", "success")
    assert check["head_sha"] == pull["head"]["sha"] == github.branch_sha(SLUG, pull["head"]["ref"])
    assert "Verdict: passed" in check["output"]["summary"] and "| unit | suite |" in check["output"]["summary"]
    assert check["annotations"] == []
    [status] = github.comments_on(SLUG, 7)
    assert pull["html_url"] in status["body"]


def test_an_unproven_run_leaves_its_pull_request_a_draft_and_the_check_neutral(
    github: FakeGitHub, make_repo: MakeRepo, tmp_path: Path
) -> None:
    outcome, _ = _github_run(github, make_repo, tmp_path, UNPROVEN)

    assert outcome.status == "published", outcome.message
    [pull] = github.repos[SLUG].pulls
    assert pull["draft"], "an unproven change was marked ready for review"
    assert [c["conclusion"] for c in github.check_runs] == ["neutral"]
    assert not [s for s in github.seen if s.path == "/api/graphql"]


def test_a_failed_run_stays_a_draft_and_its_check_fails_with_annotations_without_the_secret(
    github: FakeGitHub, make_repo: MakeRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CALC_KEY", PLANTED)
    outcome, seen = _github_run(github, make_repo, tmp_path, [[TEST_LEAKS]], files=HOSTILE,
                                config={"policy": {"secrets": ["CALC_KEY"]}})

    assert outcome.status == "failed" and seen == [{"drafts": [True], "checks": ["in_progress"]}]
    [pull] = github.repos[SLUG].pulls
    assert pull["draft"]
    [check] = github.check_runs
    assert (check["status"], check["conclusion"]) == ("completed", "failure")
    [note] = check["annotations"]
    assert (note["path"], note["start_line"], note["annotation_level"]) == ("tests/test_add.py", 5, "failure")
    assert "test_add" in note["title"]
    everything = json.dumps([github.check_runs, github.repos[SLUG].pulls, github.repos[SLUG].comments])
    assert PLANTED not in everything, "the planted secret reached GitHub"
    [status] = github.comments_on(SLUG, 7)
    assert pull["html_url"] in status["body"] and "stopped" in status["body"]


def test_a_validation_that_crashes_completes_its_check_with_the_error_masked(
    github: FakeGitHub, make_repo: MakeRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CALC_KEY", PLANTED)

    def crashing_runner(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"the suite runner fell over holding {PLANTED}\nsecond line")

    monkeypatch.setattr("agentloop.validation.run_suite", crashing_runner)
    outcome, _ = _github_run(github, make_repo, tmp_path, FIXED, config={"policy": {"secrets": ["CALC_KEY"]}})

    assert outcome.status == "error", outcome.message
    [check] = github.check_runs
    assert (check["status"], check["conclusion"]) == ("completed", "failure"), "the check was left in progress"
    assert "RuntimeError: the suite runner fell over" in check["output"]["summary"]
    assert "second line" not in check["output"]["summary"]
    [pull] = github.repos[SLUG].pulls
    assert pull["draft"] and "validation stopped (RuntimeError" in pull["body"]
    assert PLANTED not in json.dumps([github.check_runs, github.repos[SLUG].pulls]), "the secret reached GitHub"


def test_an_interrupted_validation_leaves_its_check_in_progress_for_the_resume(
    github: FakeGitHub, make_repo: MakeRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def stopped(*args: Any, **kwargs: Any) -> Any:
        raise RunInterrupted("stopped by /loop stop")

    with monkeypatch.context() as patch:
        patch.setattr("agentloop.validation.run_suite", stopped)
        outcome, _ = _github_run(github, make_repo, tmp_path, FIXED)
    assert outcome.status == "interrupted", outcome.message
    assert [c["status"] for c in github.check_runs] == ["in_progress"]

    forge = GitHubForge(SLUG, api_url=github.api_url, token=github.token, backoff=0)
    again = resume(outcome.run_dir.parents[2], outcome.run_id, forge=forge)  # the run is in <repo>/.loop/runs

    assert again.status == "published", again.message
    [check] = github.check_runs  # the resumed step completed the check it had started
    assert (check["status"], check["conclusion"]) == ("completed", "success")


def test_a_second_iterations_check_runs_on_the_new_head_commit(
    github: FakeGitHub, make_repo: MakeRepo, tmp_path: Path
) -> None:
    outcome, _ = _github_run(github, make_repo, tmp_path, [NOT_FIXED[0], [replace("calc.py", "return a * b", "return a + b")]],
                             config={"agent": {"max_iterations": 2}})

    assert outcome.status == "published", outcome.message
    [pull] = github.repos[SLUG].pulls
    forge = GitHubForge(SLUG, api_url=github.api_url, token=github.token, backoff=0)
    found = forge.find_pull_request(pull["head"]["ref"])
    head = github.branch_sha(SLUG, pull["head"]["ref"])
    assert found is not None and found.head_commit == head
    first, second = github.check_runs
    assert (first["conclusion"], second["conclusion"]) == ("failure", "success")
    assert second["head_sha"] == head and first["head_sha"] != head


def test_a_token_without_checks_still_publishes_and_says_so_once(
    github: FakeGitHub, make_repo: MakeRepo, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pat = "ghp_personal000000000000000000000000000000"
    github.tokens.add(pat)
    github.no_checks.add(pat)
    caplog.set_level(logging.WARNING)
    outcome, _ = _github_run(github, make_repo, tmp_path, FIXED, token=pat)

    assert outcome.status == "published", outcome.message
    [pull] = github.repos[SLUG].pulls
    assert not pull["draft"] and github.check_runs == []
    assert len([r for r in caplog.records if "cannot write the check run" in r.getMessage()]) == 1


def test_killed_right_after_opening_the_draft_and_its_check_then_resumed_makes_one_of_each(
    github: FakeGitHub, make_repo: MakeRepo, tmp_path: Path
) -> None:
    repo = make_repo(CALC, _config({"kind": "github", "repo": SLUG}))
    github.add_repo(SLUG, repo)
    github.add_issue(SLUG, 7, "add() subtracts", "add(2, 3) returns -1 instead of 5.")
    write_cassette(tmp_path / "c.json", FIXED)
    env = {"GITHUB_API_URL": github.api_url, "GITHUB_TOKEN": github.token}
    run_id, last = _killed_at_each(repo, tmp_path / "c.json", ["pull:validate", "check:validate"], env)

    assert last.returncode == 0 and _status(repo, run_id) == "published", last.stdout + last.stderr
    [pull] = github.repos[SLUG].pulls
    assert not pull["draft"] and pull["head"]["ref"] == f"loop/7-{run_id}"
    [check] = github.check_runs
    assert check["conclusion"] == "success"


def test_the_local_forge_killed_after_each_side_effect_of_validate_makes_one_of_each(
    make_repo: MakeRepo, tmp_path: Path
) -> None:
    repo = make_repo(CALC, _config({}))
    write_cassette(tmp_path / "c.json", FIXED)
    run_id, last = _killed_at_each(repo, tmp_path / "c.json", ["pull:validate", "comment:validate", "check:validate"])

    assert last.returncode == 0 and _status(repo, run_id) == "published", last.stdout + last.stderr
    [pull] = [json.loads(p.read_text()) for p in (state_dir(repo) / "pulls").glob("*.json")]
    assert not pull["draft"] and pull["branch"] == f"loop/7-{run_id}"
    [check] = [json.loads(p.read_text()) for p in (state_dir(repo) / "checks").glob("*.json")]
    assert check["conclusion"] == "success"
    comments = (state_dir(repo) / "comments" / "7.md").read_text()
    assert comments.count("step=validate:1 -->") == 1


def test_the_local_forge_keeps_the_draft_and_the_check_on_disk(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo = make_repo(CALC, _config({}))
    failed = fix(repo, "7", model=f"replay:{write_cassette(tmp_path / 'c.json', NOT_FIXED)}")

    assert failed.status == "failed" and failed.pull_request is not None and failed.pull_request.draft
    [check] = [json.loads(p.read_text()) for p in (state_dir(repo) / "checks").glob("*.json")]
    assert (check["name"], check["status"], check["conclusion"]) == (CHECK_NAME, "completed", "failure")
    assert [(a["path"], a["line"]) for a in check["output"]["annotations"]] == [("tests/test_add.py", 5)]
    comments = (state_dir(repo) / "comments" / "7.md").read_text()
    assert failed.pull_request.url in comments


def test_more_than_fifty_annotations_go_in_batches(github: FakeGitHub, shop: Path) -> None:
    forge = GitHubForge(SLUG, api_url=github.api_url, token=github.token, backoff=0)
    sha = github.branch_sha(SLUG, "main")
    assert sha is not None
    check_id = forge.start_check(sha, step=Step("r1", "validate", 1))
    assert check_id is not None
    notes = [Annotation(path="tests/test_x.py", line=n + 1, title=f"t{n}", message="boom") for n in range(120)]
    forge.finish_check(check_id, CheckReport(conclusion="failure", title="loop: failed", summary="s", annotations=notes))

    [check] = github.check_runs
    assert [len(u["output"]["annotations"]) for u in check["updates"]] == [50, 50, 20]
    assert [a["start_line"] for a in check["annotations"]] == list(range(1, 121))
    assert check["conclusion"] == "failure"
    again = forge.start_check(sha, step=Step("r1", "validate", 1))  # a resumed step finds its check
    assert again == check_id and len(github.check_runs) == 1


@pytest.mark.parametrize(("message", "file", "line", "where"), [
    ("assert 6 == 5\ntests/test_add.py:5: AssertionError", None, None, ("tests/test_add.py", 5)),
    ('Traceback:\n  File "/usr/lib/x.py", line 3\n  File "src/calc.py", line 9, in add', None, None, ("src/calc.py", 9)),
    ("boom", "tests/test_b.py", 12, ("tests/test_b.py", 12)),
    ("boom", None, None, None),
])
def test_a_failing_test_is_placed_at_its_file_and_line(message: str, file: str | None, line: int | None,
                                                         where: tuple[str, int] | None) -> None:
    test = TestCaseResult(name="suite.test_x", outcome="failed", message=message, file=file, line=line)
    assert failure_location(test) == where


def test_graphql_lives_next_to_the_rest_api() -> None:
    assert graphql_url("https://api.github.com") == "https://api.github.com/graphql"
    assert graphql_url("https://ghe.example.com/api/v3/") == "https://ghe.example.com/api/graphql"


WEB_APP = '''import argparse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = {"/healthz": b"ok", "/hello": b"hi"}.get(self.path)
        self.send_response(200 if body else 404)
        self.end_headers()
        self.wfile.write(body or b"")


parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int)
ThreadingHTTPServer(("127.0.0.1", parser.parse_args().port), Handler).serve_forever()
'''
WEB_TEST = '''import json, os, urllib.request


def test_hello_says_hello():
    request = urllib.request.Request(os.environ["LOOP_URL_WEB"] + "/hello", headers=json.loads(os.environ["LOOP_ROUTING_HEADERS"]))
    assert urllib.request.urlopen(request).read() == b"hello"
'''


def test_an_iteration_whose_deploy_failed_says_so_in_the_draft(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo = make_repo(
        {"web/app.py": WEB_APP, "tests/__init__.py": "", ".loop/issues/2.md": "# /hello should say hello\n"},
        {"services": {"web": {"path": "web", "run": "python3 web/app.py --port {port}", "health": "/healthz",
                              "ready_timeout": 10}},
         "validate": [{"suite": "integration", "run": "python3 -m pytest -q tests", "sandbox": True}],
         "agent": {"max_iterations": 2}},
    )
    cassette = write_cassette(tmp_path / "c.json", [
        [create("tests/test_web.py", WEB_TEST)],  # deploys, its test fails: the draft opens
        [replace("web/app.py", "parser = argparse", "raise SystemExit(3)\nparser = argparse")],  # does not start
    ])
    bodies: list[str] = []

    def progress(event: dict[str, Any]) -> None:
        if (event.get("kind"), event.get("node"), event.get("event")) == ("node", "diagnose", "end"):
            bodies.append((state_dir(repo) / "pulls" / "1.md").read_text())

    outcome = fix(repo, "2", model=f"replay:{cassette}", progress=progress)

    assert outcome.status == "failed" and outcome.pull_request is not None and outcome.pull_request.draft
    assert "iteration 1: failed" in bodies[0] and "| integration | suite | 0 | 1 |" in bodies[0]
    assert "iteration 2: the deploy failed" in bodies[1], bodies[1][:500]
