"""The evidence of real runs (the real graph, git, pytest; only the model's answers replayed) read back
field by field: the status the run ended with, the branch, each file credited to the iteration that
changed it, the counts equal to the JUnit XML the suite wrote, the verdict's word; and `loop verify`
naming a number edited in report.md or in a JUnit file."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from looptest import MakeRepo, create, replace, write_cassette
from rich.console import Console

from agentloop.cli.show import render_details, run_details
from agentloop.evidence import write_evidence
from agentloop.evidence.check import check_report
from agentloop.evidence.manifest import diff_stats
from agentloop.evidence.verify import verify_run
from agentloop.forge.local import LocalForge
from agentloop.loop.runner import RunOutcome, fix
from agentloop.results import Comparison, PullRequest, SuiteResult, TestCaseResult, Verdict
from agentloop.runs.folder import RunFolder

FILES = {
    "calc.py": "def add(a, b):\n    return a - b\n\n\ndef sub(a, b):\n    return a - b\n",
    "tests/test_calc.py": "from calc import sub\n\n\ndef test_sub():\n    assert sub(3, 1) == 2\n",
    ".loop/issues/1.md": "# add() subtracts\n\nadd(2, 3) returns -1 instead of 5.\n",
}
CONFIG = {"services": {}, "validate": [{"suite": "unit", "run": "python3 -m pytest -q tests"}], "agent": {"max_iterations": 3}}
TEST_ADD = create("tests/test_add.py", "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n")
TIMES = replace("calc.py", "return a - b\n\n\ndef sub", "return a * b\n\n\ndef sub")
PLUS = replace("calc.py", "return a - b\n\n\ndef sub", "return a + b\n\n\ndef sub")


def _run(make_repo: MakeRepo, tmp_path: Path, turns: list[list[dict[str, Any]]], **options: Any) -> tuple[Path, RunOutcome]:
    repo = make_repo(FILES, CONFIG)
    outcome = fix(repo, "1", model=f"replay:{write_cassette(tmp_path / 'c.json', turns)}", **options)
    return repo, outcome


def _loop(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agentloop.cli.main", *args], cwd=repo, capture_output=True, text=True,
                          timeout=120, check=False, env={**os.environ, "COLUMNS": "250"})


def _read(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    evidence = json.loads((run_dir / "evidence.json").read_text())
    summary = json.loads((run_dir / "run.json").read_text())
    return evidence, summary, (run_dir / "report.md").read_text().splitlines()


def _junit(path: Path) -> dict[str, int]:
    """Counted by hand from the XML: what a reviewer opening the artifact would count."""
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    for case in ET.parse(path).getroot().iter("testcase"):
        tags = {child.tag for child in case}
        counts["failed" if tags & {"failure", "error"} else "skipped" if "skipped" in tags else "passed"] += 1
    return counts


def _row(report: list[str], suite: str) -> list[str]:
    row = next(line for line in report if f"suite `{suite}`" in line)
    return [cell.strip() for cell in row.strip("|").split("|")]


def _assert_counts_are_the_junit_files(run_dir: Path, evidence: dict[str, Any], report: list[str]) -> None:
    verdict = evidence["verdict"]
    [result] = verdict["results"]
    xml = f"iterations/{verdict['iteration']}/validate/sandbox/unit.xml"
    assert result["counted_from"] == xml and xml in {a["path"] for a in evidence["artifacts"]}
    by_hand = _junit(run_dir / xml)
    counts = result["counts"]
    assert (counts["passed"], counts["failed"] + counts["error"], counts["skipped"]) == (
        by_hand["passed"], by_hand["failed"], by_hand["skipped"])
    assert _row(report, "unit")[2:5] == [str(by_hand["passed"]), str(by_hand["failed"]), str(by_hand["skipped"])]


def test_a_published_run_reads_back_field_by_field(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo, outcome = _run(make_repo, tmp_path, [[TEST_ADD, TIMES], [replace("calc.py", "return a * b", "return a + b")]])
    assert outcome.status == "published", outcome.message
    evidence, summary, report = _read(outcome.run_dir)
    branch = f"loop/1-{outcome.run_id}"

    assert evidence["run"]["status"] == summary["status"] == "published"
    assert evidence["run"]["branch"] == evidence["repository"]["branch"] == summary["branch"] == branch
    assert outcome.pull_request is not None and evidence["pull_request"]["url"] == summary["pull_request"] == outcome.pull_request.url
    assert evidence["run"]["ended_at"] == summary["ended_at"]
    assert evidence["run"]["iterations"] == summary["iterations"] == len(evidence["iterations"]) == 2
    first, second = evidence["iterations"]
    assert first["changed_files"] == ["calc.py", "tests/test_add.py"] and first["verdict"]["word"] == "failed"
    assert second["changed_files"] == ["calc.py"]  # the test was written in iteration 1, not 2
    assert second["changed_since_base"] == ["calc.py", "tests/test_add.py"]
    assert evidence["verdict"]["word"] == "passed" and evidence["verdict"]["iteration"] == 2
    _assert_counts_are_the_junit_files(outcome.run_dir, evidence, report)

    assert report[0] == "## ✅ Validated after 2 iterations — passed: 1 suite; 2 passed"
    assert "1. changed `calc.py`, `tests/test_add.py` — failed: 1 suite; 1 passed, 1 failed" in "\n".join(report)
    assert any(line.startswith("Fixed in iteration 2 by changing `calc.py`:") for line in report)
    assert any(line.startswith(f"<sub>Run `{outcome.run_id}` · branch `{branch}` · ") for line in report)

    listed = json.loads(_loop(repo, "runs", "--json").stdout)
    assert [(r["id"], r["branch"], r["status"]) for r in listed] == [(outcome.run_id, branch, "published")]
    verified = _loop(repo, "verify", outcome.run_id)
    assert verified.returncode == 0 and "every number in its report.md" in verified.stdout, verified.stdout


def test_a_failed_run_reads_back_field_by_field(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo, outcome = _run(make_repo, tmp_path, [[TEST_ADD, TIMES]], max_iterations=1)
    assert outcome.status == "failed"
    evidence, summary, report = _read(outcome.run_dir)

    assert evidence["run"]["status"] == summary["status"] == "failed"
    assert evidence["run"]["branch"] == evidence["repository"]["branch"] == summary["branch"] == f"loop/1-{outcome.run_id}"
    assert evidence["run"]["stopped_because"] == summary["message"] == "iteration budget spent: 1 of 1 (agent.max_iterations)"
    assert evidence["run"]["iterations"] == 1 and evidence["iterations"][0]["changed_files"] == ["calc.py", "tests/test_add.py"]
    assert evidence["verdict"]["word"] == "failed" and evidence["pull_request"]["draft"]  # its draft stays one
    assert evidence["verdict"]["reasons"][0] == "failed: 1 suite; 1 passed, 1 failed"
    _assert_counts_are_the_junit_files(outcome.run_dir, evidence, report)
    assert report[0] == "## ❌ Failed after 1 iteration — failed: 1 suite; 1 passed, 1 failed"
    assert _row(report, "unit")[0] == "❌"
    comment = (repo / ".git" / "loop" / "comments" / "1.md").read_text()
    assert f"loop run `{outcome.run_id}` stopped (verdict: failed): iteration budget spent" in comment
    assert verify_run(outcome.run_dir, repo) == []


def test_a_passing_but_unproven_run_is_called_unproven_never_failed(make_repo: MakeRepo, tmp_path: Path) -> None:
    # the fix is right and every test passes, but no test fails without it: nothing failed, nothing is proven
    repo, outcome = _run(make_repo, tmp_path, [[PLUS]], max_iterations=1)
    assert outcome.status == "failed"  # the run did not get a proven change; its verdict did not fail
    evidence, _, report = _read(outcome.run_dir)

    verdict = evidence["verdict"]
    assert verdict["word"] == "unproven" and verdict["reasons"][0] == "unproven: 1 suite; 1 passed"
    assert not any(reason.startswith("failed") for reason in verdict["reasons"])
    assert report[0] == "## 🟡 Unproven after 1 iteration — unproven: 1 suite; 1 passed"
    assert _row(report, "unit")[0] == "✅"
    comment = (repo / ".git" / "loop" / "comments" / "1.md").read_text()
    stop = next(line for line in comment.splitlines() if "stopped" in line)
    assert "(verdict: unproven)" in stop and "failed" not in stop

    console = Console(record=True, width=200)
    render_details(run_details(RunFolder(outcome.run_dir.parent, outcome.run_id)), console)
    shown = console.export_text()
    assert "verdict: unproven" in shown and "verdict: failed" not in shown
    assert "· unproven: 1 suite; 1 passed" in shown
    assert verify_run(outcome.run_dir, repo) == []


def test_verify_names_the_number_edited_in_the_report_or_a_junit_file(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo, outcome = _run(make_repo, tmp_path, [[TEST_ADD, PLUS]])
    assert outcome.status == "published", outcome.message
    assert verify_run(outcome.run_dir, repo) == []

    def copy(name: str) -> Path:
        return Path(shutil.copytree(outcome.run_dir, outcome.run_dir.parent / name))

    edited_report = copy("edited-report")
    report = edited_report / "report.md"
    report.write_text(report.read_text().replace("| ✅ | suite `unit` | 2 |", "| ✅ | suite `unit` | 3 |")
                      .replace("tokens, $", "tokens, $1").replace("passed: 1 suite; 2 passed", "passed: 1 suite; 3 passed"))
    differences = verify_run(edited_report, repo)
    assert differences[0].startswith("report.md: content changed")
    assert "report.md: suite `unit` passed is 3 in the report, 2 in iterations/1/validate/sandbox/unit.xml" in differences
    assert "report.md: the headline's passed is 3 in the report, 2 in iterations/1/validate/sandbox/unit.xml" in differences
    assert any(re.fullmatch(r"report\.md: cost is 1[\d.]+ in the report, [\d.]+ in evidence\.json", d) for d in differences)
    cli = _loop(repo, "verify", "edited-report")
    assert cli.returncode == 1 and "suite `unit` passed is 3 in the report" in " ".join(cli.stdout.split())

    edited_junit = copy("edited-junit")
    xml = edited_junit / "iterations" / "1" / "validate" / "sandbox" / "unit.xml"
    text = xml.read_text()
    case_end = re.search(r"<testcase [^>]*?(/>|>)", text)
    assert case_end is not None
    if case_end.group(1) == "/>":  # an empty testcase: give it a body with the failure
        text = text[:case_end.end() - 2] + '><failure message="edited">x</failure></testcase>' + text[case_end.end():]
    else:
        text = text[:case_end.end()] + '<failure message="edited">x</failure>' + text[case_end.end():]
    xml.write_text(text)
    differences = verify_run(edited_junit, repo)
    assert differences[0].startswith("iterations/1/validate/sandbox/unit.xml: content changed")
    assert "report.md: suite `unit` passed is 2 in the report, 1 in iterations/1/validate/sandbox/unit.xml" in differences
    assert "report.md: suite `unit` failed is 0 in the report, 1 in iterations/1/validate/sandbox/unit.xml" in differences
    assert any("the verdict is 'passed', but iterations/1/validate/sandbox/unit.xml has 1 failing tests" in d
               for d in differences)


class _BrokenForge(LocalForge):
    """A forge that fails while opening the pull request, after the evidence was written."""

    def publish(self, **kwargs: Any) -> PullRequest:
        raise RuntimeError("the forge went away")


def test_a_run_that_errs_after_its_evidence_was_written_says_error(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo = make_repo(FILES, CONFIG)
    cassette = write_cassette(tmp_path / "c.json", [[TEST_ADD, PLUS]])
    outcome = fix(repo, "1", model=f"replay:{cassette}", forge=_BrokenForge(repo))

    assert outcome.status == "error" and "the forge went away" in outcome.message
    evidence, summary, _ = _read(outcome.run_dir)
    assert evidence["run"]["status"] == summary["status"] == "error"
    assert evidence["run"]["stopped_because"] == summary["message"] and evidence["pull_request"] is None
    assert "error.txt" in {a["path"] for a in evidence["artifacts"]}  # written after the evidence, still hashed
    assert verify_run(outcome.run_dir, repo) == []


def test_a_head_whose_last_change_never_deployed_is_not_called_passed(tmp_path: Path) -> None:
    """Iteration 1 validated; iteration 2's change (in the head commit too) failed to deploy."""
    passed = Verdict(passed=True, proven=True, outcome="passed", reasons=["passed: 1 suite; 1 passed"],
                     results=[SuiteResult(name="unit", tests=[TestCaseResult(name="t::test_add", outcome="passed")])],
                     comparison=Comparison(fixed=["unit: t::test_add"])).model_dump(mode="json")
    state = {"run_id": "r-9", "status": "failed", "branch": "loop/9-r-9", "issue": {"number": 9, "title": "x"},
             "attempts": [{"iteration": 1, "changed_files": ["a.py"], "deploy": {"ok": True}, "verdict": passed},
                          {"iteration": 2, "changed_files": ["a.py"], "deploy": {"ok": False, "error": "exit 3"}}],
             "verdict": passed}
    run_dir = tmp_path / "r-9"
    run_dir.mkdir()

    evidence = write_evidence(run_dir, state)

    assert evidence["verdict"]["word"] == "failed" and evidence["verdict"]["iteration"] == 1
    report = (run_dir / "report.md").read_text()
    assert report.startswith("## ❌ Failed after 2 iterations — failed: 1 suite; 1 passed")
    assert "iteration 2's change was not validated (its deploy failed: exit 3)" in report
    assert check_report(run_dir, evidence, diff_stats(run_dir / "diff.patch")) == []
