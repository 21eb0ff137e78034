"""The loop's routing, end to end through the real graph: real git worktrees, the real replay model
driving the real tool loop, real suites (pytest in a subprocess), real service processes for the
deploy-failure case. Only the model's answers are scripted (a cassette)."""

from __future__ import annotations

import json
from pathlib import Path

from looptest import MakeRepo, create, git, replace, write_cassette

from agentloop.loop.runner import fix
from agentloop.paths import runs_dir
from agentloop.runs.folder import list_runs

CALC_FILES = {
    "calc.py": "def add(a, b):\n    return a - b\n\n\ndef sub(a, b):\n    return a - b\n",
    "tests/test_calc.py": "from calc import sub\n\n\ndef test_sub():\n    assert sub(3, 1) == 2\n",
    ".loop/issues/1.md": "# add() subtracts\n\nadd(2, 3) returns -1 instead of 5.\n",
}
CALC_CONFIG = {
    "services": {},
    "validate": [{"suite": "unit", "run": "python3 -m pytest -q tests"}],
    "agent": {"max_iterations": 3},
}
TEST_ADD = create("tests/test_add.py", "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n")


def _events(run_dir: Path) -> list[tuple[str, str]]:
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    return [(e["node"], e.get("outcome", "")) for e in map(json.loads, lines) if e["event"] == "end"]


def test_passing_first_time_publishes_one_commit_on_the_run_branch(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo = make_repo(CALC_FILES, CALC_CONFIG)
    cassette = write_cassette(tmp_path / "c.json", [[TEST_ADD, replace("calc.py", "return a - b\n\n\ndef sub", "return a + b\n\n\ndef sub")]])

    outcome = fix(repo, "1", model=f"replay:{cassette}")

    assert outcome.status == "published", outcome.message
    assert [node for node, _ in _events(outcome.run_dir)] == ["intake", "edit", "deploy", "validate", "publish"]
    branch = outcome.pull_request.branch
    assert branch == f"loop/1-{outcome.run_id}"
    assert git(repo, "rev-list", "--count", f"main..{branch}").strip() == "1"
    assert "return a + b" in git(repo, "show", f"{branch}:calc.py")
    # the user's checkout is untouched
    assert "return a - b\n\n\ndef sub" in (repo / "calc.py").read_text()
    assert git(repo, "status", "--porcelain") == ""
    for name in ("events.jsonl", "transcript.jsonl", "diff.patch", "report.md", "evidence.json"):
        assert (outcome.run_dir / name).is_file(), name
    assert "Fixes #1" in (outcome.run_dir / "report.md").read_text()
    comments = (repo / ".git" / "loop" / "comments" / "1.md").read_text()
    assert comments.index("is working on this issue") < comments.index(outcome.pull_request.url)


def test_failing_then_fixed_goes_through_diagnose_and_a_second_edit(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo = make_repo(CALC_FILES, CALC_CONFIG)
    cassette = write_cassette(tmp_path / "c.json", [
        [TEST_ADD, replace("calc.py", "return a - b\n\n\ndef sub", "return a * b\n\n\ndef sub")],
        [replace("calc.py", "return a * b", "return a + b")],
    ])

    outcome = fix(repo, "1", model=f"replay:{cassette}")

    assert outcome.status == "published", outcome.message
    assert _events(outcome.run_dir) == [
        ("intake", "running"), ("edit", "ok"), ("deploy", "ok"), ("validate", "failed"), ("diagnose", "ok"),
        ("edit", "ok"), ("deploy", "ok"), ("validate", "passed"), ("publish", "published"),
    ]
    summary = list_runs(runs_dir(repo))[0]
    assert summary.iterations == 2 and summary.status == "published"
    # the second prompt was given what failed
    transcript = (outcome.run_dir / "transcript.jsonl").read_text()
    assert "test_add" in transcript


def test_spent_iteration_budget_reports_failure_with_evidence(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo = make_repo(CALC_FILES, CALC_CONFIG)
    cassette = write_cassette(tmp_path / "c.json", [[TEST_ADD, replace("calc.py", "return a - b\n\n\ndef sub", "return a * b\n\n\ndef sub")]])

    outcome = fix(repo, "1", model=f"replay:{cassette}", max_iterations=1)

    assert outcome.status == "failed"
    assert "iteration budget spent" in outcome.message
    assert [n for n, _ in _events(outcome.run_dir)][-2:] == ["diagnose", "report_failure"]
    assert outcome.pull_request is not None and outcome.pull_request.draft  # opened after the deploy, still a draft
    evidence = json.loads((outcome.run_dir / "evidence.json").read_text())
    assert evidence["verdict"]["passed"] is False
    comments = list((repo / ".git" / "loop" / "comments").glob("1.md"))
    assert comments and "stopped" in comments[0].read_text()


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


def test_deploy_failure_is_diagnosed_and_fixed(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo = make_repo(
        {"web/app.py": WEB_APP, "tests/__init__.py": "", ".loop/issues/2.md": "# /hello should say hello\n"},
        {"services": {"web": {"path": "web", "run": "python3 web/app.py --port {port}", "health": "/healthz",
                              "ready_timeout": 10}},
         "validate": [{"suite": "integration", "run": "python3 -m pytest -q tests", "sandbox": True}]},
    )
    cassette = write_cassette(tmp_path / "c.json", [
        [create("tests/test_web.py", WEB_TEST), replace("web/app.py", 'b"hi"', 'b"hello"'),
         replace("web/app.py", "parser = argparse", "raise SystemExit(3)\nparser = argparse")],
        [replace("web/app.py", "raise SystemExit(3)\n", "")],
    ])

    outcome = fix(repo, "2", model=f"replay:{cassette}")

    assert outcome.status == "published", outcome.message
    ends = _events(outcome.run_dir)
    assert ends[:4] == [("intake", "running"), ("edit", "ok"), ("deploy", "failed"), ("diagnose", "ok")]
    assert ("validate", "passed") in ends
    diagnosis = (outcome.run_dir / "iterations" / "1" / "diagnosis.md").read_text()
    assert "SystemExit" in diagnosis or "exit" in diagnosis.lower()


def test_an_issue_from_a_file_runs_without_a_number(make_repo: MakeRepo, tmp_path: Path) -> None:
    files = {k: v for k, v in CALC_FILES.items() if not k.startswith(".loop")}
    repo = make_repo(files, CALC_CONFIG)
    issue = tmp_path / "bug.md"
    issue.write_text("# add() subtracts\n\nadd(2, 3) returns -1.\n")
    cassette = write_cassette(tmp_path / "c.json", [[TEST_ADD, replace("calc.py", "return a - b\n\n\ndef sub", "return a + b\n\n\ndef sub")]])

    outcome = fix(repo, None, issue_file=issue, model=f"replay:{cassette}")

    assert outcome.status == "published", outcome.message
    assert outcome.pull_request.branch == f"loop/file-{outcome.run_id}"
    assert "Fixes #" not in (outcome.run_dir / "report.md").read_text()


def test_langgraph_json_points_at_the_compiled_graph() -> None:
    """What LangGraph's dev server and Studio load: the path in langgraph.json, as a module attribute."""
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    spec = json.loads((root / "langgraph.json").read_text())
    path, _, attribute = spec["graphs"]["loop"].partition(":")
    module_spec = importlib.util.spec_from_file_location("loop_graph_entry", root / path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    graph = getattr(module, attribute)
    assert set(graph.get_graph().nodes) >= {"intake", "edit", "deploy", "validate", "diagnose", "publish", "report_failure"}
