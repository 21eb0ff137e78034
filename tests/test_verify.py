"""`loop verify --rerun`: the recorded head commit validated again in a fresh worktree (real git, real
pytest), leaving nothing behind. (Hash and diff checks are in test_evidence.py.)"""

from __future__ import annotations

import json

import pytest
from looptest import MakeRepo

from agentloop import git
from agentloop.evidence.verify import rerun


def test_rerun_validates_the_head_commit_again_and_cleans_up(make_repo: MakeRepo, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    repo = make_repo(
        {"calc.py": "def add(a, b):\n    return a - b\n"},
        {"services": {}, "validate": [{"suite": "unit", "run": "python -m pytest -q -p no:cacheprovider tests"}]},
    )
    base = git.head(git.Worktree(repo, repo))
    git.open_repo(repo).git.checkout("-q", "-b", "loop/1-r-2")
    (repo / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    (repo / "tests").mkdir()
    (repo / "tests" / "test_add.py").write_text("from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n")
    head = git.commit_all(git.Worktree(repo, repo), "Fix #1")
    git.open_repo(repo).git.checkout("-q", "main")
    run_dir = repo.parent / "runs" / "r-2"
    run_dir.mkdir(parents=True)
    (run_dir / "evidence.json").write_text(json.dumps({"commits": {"base": base, "head": head}, "artifacts": []}))

    verdict = rerun(run_dir, repo)

    assert verdict.passed and verdict.comparison.fixed == ["unit: tests/test_add.py::test_add"], verdict.reasons
    assert len(list((run_dir / "reruns").glob("*/results.json"))) == 1
    assert git.open_repo(repo).git.worktree("list").count("\n") == 0  # only the main checkout is left
