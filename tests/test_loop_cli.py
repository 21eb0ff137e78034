"""The command line as a user meets it: real subprocesses of `loop`, one-line errors, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from looptest import MakeRepo

CONFIG = {"services": {}, "validate": [{"suite": "unit", "run": "python3 -m pytest -q"}]}


def loop(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentloop.cli.main", *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    text = " ".join(result.stderr.split())
    assert text.startswith("error:"), result.stderr
    for needle in needles:
        assert needle in text, (needle, result.stderr)


def test_not_a_git_repository(tmp_path: Path) -> None:
    assert_one_line_error(loop("fix", "1", cwd=tmp_path), "not a git repository", "git init")


def test_missing_loop_yaml(make_repo: MakeRepo) -> None:
    repo = make_repo({"README": "x"})
    assert_one_line_error(loop("fix", "1", cwd=repo), "loop.yaml", "not found")


def test_invalid_loop_yaml_names_the_field(make_repo: MakeRepo) -> None:
    repo = make_repo({}, {"services": {"web": {"path": "web"}}})
    assert_one_line_error(loop("fix", "1", cwd=repo), "loop.yaml", "services.web.run")


def test_unknown_key_in_loop_yaml(make_repo: MakeRepo) -> None:
    repo = make_repo({}, {"services": {}, "agnet": {}})
    assert_one_line_error(loop("fix", "1", cwd=repo), "agnet")


def test_yaml_syntax_error_names_the_line(make_repo: MakeRepo) -> None:
    repo = make_repo({"loop.yaml": "services:\n  web: [unclosed\n"})
    assert_one_line_error(loop("fix", "1", cwd=repo), "loop.yaml", "line")


def test_unknown_issue(make_repo: MakeRepo) -> None:
    repo = make_repo({}, CONFIG)
    assert_one_line_error(loop("fix", "issue-7", "--model", "replay:/nonexistent", cwd=repo), ".loop/issues/7.md")


def test_bad_issue_reference(make_repo: MakeRepo) -> None:
    repo = make_repo({}, CONFIG)
    assert_one_line_error(loop("fix", "seven", cwd=repo), "issue-123")


def test_dirty_worktree_is_refused_and_left_alone(make_repo: MakeRepo) -> None:
    repo = make_repo({"a.py": "x = 1\n", ".loop/issues/1.md": "# t\n"}, CONFIG)
    (repo / "a.py").write_text("x = 2\n")
    assert_one_line_error(loop("fix", "1", cwd=repo), "uncommitted changes", "a.py")
    assert (repo / "a.py").read_text() == "x = 2\n"


def test_missing_api_key_for_a_claude_model(make_repo: MakeRepo) -> None:
    repo = make_repo({".loop/issues/1.md": "# t\n"}, CONFIG)
    assert_one_line_error(loop("fix", "1", "--model", "claude-sonnet-5-5", cwd=repo), "ANTHROPIC_API_KEY")


def test_unknown_run_id(make_repo: MakeRepo) -> None:
    repo = make_repo({}, CONFIG)
    for command in (["show", "r-nope"], ["resume", "r-nope"], ["verify", "r-nope"]):
        assert_one_line_error(loop(*command, cwd=repo), "r-nope", "loop runs")


def test_runs_lists_nothing_then_json_is_a_list(make_repo: MakeRepo) -> None:
    repo = make_repo({}, CONFIG)
    result = loop("runs", "--json", cwd=repo)
    assert result.returncode == 0
    assert json.loads(result.stdout) == []


def test_runs_json_names_the_branch_of_a_run_that_stopped_before_its_worktree_and_selects_fields(
        make_repo: MakeRepo, tmp_path: Path) -> None:
    import re

    from looptest import write_cassette

    broken = {"services": {"web": {"path": "web", "run": "exit 3", "ready_timeout": 5}}, **{
        k: v for k, v in CONFIG.items() if k != "services"}}
    repo = make_repo({".loop/issues/1.md": "# t\n", "web/app.txt": "x\n"}, broken)
    cassette = write_cassette(tmp_path / "cassette.json", [[]])
    run = loop("fix", "1", "--model", f"replay:{cassette}", cwd=repo)
    assert run.returncode == 3, run.stderr  # the baseline never came up: no worktree, no branch made
    [row] = json.loads(loop("runs", "--json", "id,branch,status,started_at", cwd=repo).stdout)
    assert list(row) == ["id", "branch", "status", "started_at"]
    assert row["branch"] == f"loop/1-{row['id']}" and row["status"] == "error"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", row["started_at"])
    [full] = json.loads(loop("runs", "--json", cwd=repo).stdout)
    assert {"branch", "worktree", "ended_at", "duration", "cost_usd"} <= set(full)
    assert json.loads(loop("runs", "--json=id", cwd=repo).stdout) == [{"id": row["id"]}]
    unknown = loop("runs", "--json", "id,nmuber", cwd=repo)
    assert_one_line_error(unknown, "unknown field 'nmuber'", "available fields: id, issue, issue_title")


@pytest.mark.parametrize("ref", ["issue-1", "#1", "1", "https://github.com/acme/shop/issues/1"])
def test_issue_reference_forms(ref: str) -> None:
    from agentloop.loop.runner import parse_issue_ref

    assert parse_issue_ref(ref) == 1


def test_a_repository_with_no_commits(tmp_path: Path) -> None:
    import subprocess as sp

    sp.run(["git", "init", "-q", "-b", "main"], cwd=tmp_path, check=True)
    (tmp_path / "loop.yaml").write_text("services: {}\n")
    sp.run(["git", "add", "loop.yaml"], cwd=tmp_path, check=True)
    assert_one_line_error(loop("fix", "1", cwd=tmp_path), "no commits yet")


def test_resume_refuses_a_run_that_is_still_running(make_repo: MakeRepo) -> None:
    import subprocess as sp

    from agentloop.runs.folder import RunFolder, RunSummary

    repo = make_repo({}, CONFIG)
    holder = sp.Popen(["sleep", "30"])
    try:
        RunFolder(repo / ".loop" / "runs", "r-busy").save_summary(
            RunSummary(id="r-busy", issue=1, repo=str(repo), status="running", pid=holder.pid))
        assert_one_line_error(loop("resume", "r-busy", cwd=repo), "still running", str(holder.pid))
    finally:
        holder.kill()
        holder.wait()
