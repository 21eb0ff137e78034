"""Evidence and the PR body from a run record built on disk the way the graph writes it, and
`loop verify` against a real git repository: tampered artifacts and a head commit that moved."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from looptest import MakeRepo

from agentloop import git
from agentloop.evidence import is_draft, render_report, write_evidence
from agentloop.evidence.verify import verify_run
from agentloop.results import Comparison, Diagnosis, SuiteResult, TestCaseResult, Verdict

SECRET = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4"


def _verdict(passed: bool, *, failed: str = "", flaky: bool = False) -> dict[str, Any]:
    tests = [TestCaseResult(name="tests/test_add.py::test_add", outcome="failed" if failed else "passed", message=failed)]
    if flaky:
        tests.append(TestCaseResult(name="tests/test_io.py::test_io", outcome="failed", flaky=True))
    comparison = Comparison(fixed=[] if failed else ["unit: tests/test_add.py::test_add"],
                            flaky=["unit: tests/test_io.py::test_io"] if flaky else [])
    return Verdict(passed=passed, proven=not failed, reasons=["passed: 1 suite" if passed else "failed: 1 suite"],
                   results=[SuiteResult(name="unit", command="pytest", tests=tests)], comparison=comparison,
                   unproven=["flaky: unit: tests/test_io.py::test_io"] if flaky else []).model_dump(mode="json")


def _run(make_repo: MakeRepo, *, flaky: bool = False) -> tuple[Path, Path, dict[str, Any]]:
    repo = make_repo({"calc.py": "def add(a, b):\n    return a - b\n"})
    base = git.head(git.Worktree(repo, repo))
    git.open_repo(repo).git.checkout("-q", "-b", "loop/1-r-1")
    (repo / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    head = git.commit_all(git.Worktree(repo, repo), "Fix #1")
    run_dir = repo.parent / "runs" / "r-1"
    (run_dir / "iterations" / "1" / "validate").mkdir(parents=True)
    (run_dir / "iterations" / "1" / "validate" / "results.json").write_text("{}")
    (run_dir / "diff.patch").write_text(git.open_repo(repo).git.diff(base, head, "--binary"))
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in [
        {"time": 1, "node": "edit", "event": "end", "iteration": 1, "duration": 4.0, "outcome": "ok"},
        {"time": 2, "node": "deploy", "event": "end", "iteration": 1, "duration": 2.5, "outcome": "ok"},
        {"time": 3, "node": "validate", "event": "end", "iteration": 1, "duration": 1.5, "outcome": "failed"},
        {"time": 4, "node": "edit", "event": "end", "iteration": 2, "duration": 3.0, "outcome": "ok"},
    ]))
    state = {
        "run_id": "r-1", "repo": str(repo), "branch": "loop/1-r-1", "base_commit": base, "head_commit": head,
        "issue": {"number": 1, "title": "add() subtracts", "body": f"token {SECRET} leaked here"},
        "sandbox": {"name": "r-1", "backend": "local", "route_key": "k-777", "link": "http://127.0.0.1:1/__loop/preview?key=k-777",
                    "forks": {"orders": {"service": "orders", "url": "http://127.0.0.1:2", "source": str(repo)}}},
        "attempts": [
            {"iteration": 1, "changed_files": ["calc.py"], "deploy": {"ok": True}, "verdict": _verdict(False, failed="assert 6 == 5"),
             "diagnosis": Diagnosis(summary="test_add failed", excerpts={"orders": "Traceback (most recent call last):\nValueError: boom"}).model_dump()},
            {"iteration": 2, "changed_files": ["calc.py"], "edit": {"summary": "add adds"}, "deploy": {"ok": True},
             "verdict": _verdict(True, flaky=flaky)},
        ],
        "usage": {"input_tokens": 1000, "output_tokens": 200, "cost_usd": 0.0123},
        "status": "running",
    }
    state["verdict"] = state["attempts"][-1]["verdict"]
    return repo, run_dir, write_evidence(run_dir, state)


def test_evidence_records_the_run_and_hashes_every_final_artifact(make_repo: MakeRepo) -> None:
    repo, run_dir, evidence = _run(make_repo)

    on_disk = json.loads((run_dir / "evidence.json").read_text())
    assert on_disk == json.loads(json.dumps(evidence))
    assert on_disk["schema_version"] == 1
    assert on_disk["diff"]["files_changed"] == 1 and on_disk["diff"]["insertions"] == 1
    assert on_disk["sandbox"]["route_key"] == "k-777" and list(on_disk["sandbox"]["forks"]) == ["orders"]
    assert on_disk["time"]["model"] == 7.0 and on_disk["time"]["provisioning"] == 2.5 and on_disk["time"]["tests"] == 1.5
    assert {"loop", "python", "langgraph", "anthropic"} <= set(on_disk["versions"])
    paths = [a["path"] for a in on_disk["artifacts"]]
    assert paths == ["diff.patch", "iterations/1/validate/results.json", "report.md"]  # events.jsonl is still growing
    assert on_disk["iterations"][0]["log_excerpts"]["orders"].startswith("Traceback")
    assert SECRET not in (run_dir / "evidence.json").read_text()
    assert verify_run(run_dir, repo) == []


def test_the_report_leads_with_the_verdict_and_carries_what_a_reviewer_needs(make_repo: MakeRepo) -> None:
    _, run_dir, evidence = _run(make_repo)
    report = (run_dir / "report.md").read_text()

    assert report.startswith("## ✅ Validated after 2 iterations")
    assert "route key `k-777`" in report and "http://127.0.0.1:1/__loop/preview?key=k-777" in report
    assert "| ✅ | suite `unit` | 1 | 0 |" in report
    assert "Fixed by this change (fail in the base run, pass in the sandbox):** `unit: tests/test_add.py::test_add`" in report
    assert "### Earlier iterations" in report and "Fixed in iteration 2 by changing `calc.py`: add adds" in report
    assert "<details><summary>iteration 1: orders</summary>" in report
    assert "loop verify r-1 --rerun" in report and report.rstrip().endswith("Fixes #1")
    assert not is_draft(evidence)

    short = render_report(evidence, max_chars=600)
    assert len(short) <= 600 and "full evidence is in the run record" in short and short.rstrip().endswith("Fixes #1")


def test_a_flaky_test_makes_the_pull_request_a_draft(make_repo: MakeRepo) -> None:
    _, run_dir, evidence = _run(make_repo, flaky=True)
    assert is_draft(evidence)
    assert "Flaky (failed, then passed on a rerun; not blocking):** `unit: tests/test_io.py::test_io`" in (run_dir / "report.md").read_text()


def test_verify_says_exactly_which_artifact_was_tampered_with(make_repo: MakeRepo) -> None:
    repo, run_dir, _ = _run(make_repo)
    results = run_dir / "iterations" / "1" / "validate" / "results.json"
    results.write_text('{"passed": true}')
    (run_dir / "report.md").unlink()
    (run_dir / "extra.txt").write_text("slipped in")

    differences = verify_run(run_dir, repo)

    assert len(differences) == 3
    assert differences[0].startswith("iterations/1/validate/results.json: content changed")
    assert differences[1].startswith("report.md: missing")
    assert differences[2] == "extra.txt: not in the record (added after the run)"


def test_verify_notices_a_head_commit_that_does_not_match_the_diff(make_repo: MakeRepo) -> None:
    repo, run_dir, evidence = _run(make_repo)
    (run_dir / "diff.patch").write_text((run_dir / "diff.patch").read_text().replace("a + b", "a * b"))
    evidence_path = run_dir / "evidence.json"
    data = json.loads(evidence_path.read_text())
    from agentloop.evidence import artifacts
    data["artifacts"] = artifacts(run_dir)  # a consistent record of the wrong diff
    evidence_path.write_text(json.dumps(data))

    differences = verify_run(run_dir, repo)
    assert differences == [
        (f"head commit {evidence['commits']['head'][:12]}: its diff against base {evidence['commits']['base'][:12]} "
         "is not diff.patch (same files, different content)")
    ]

    data["commits"]["head"] = "0" * 40
    evidence_path.write_text(json.dumps(data))
    assert verify_run(run_dir, repo) == [f"head commit {'0' * 12} is not in {repo} (fetch the run's branch, or it was rewritten)"]
