"""pytest is recognised (and gets its JUnit report) however a suite's command reaches it: after `cd sub &&`,
`cd sub;`, variable assignments, `env X=1`, and combinations. Each form runs for real, confined, on a
repository with a subproject; anything else runs exactly as written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from looptest import MakeRepo

from agentloop import git
from agentloop.config import LoopConfig, SuiteConfig, load_config
from agentloop.confine import project_confinement
from agentloop.validation import run_validation
from agentloop.validation.pytest_command import PytestCommand, recognise
from agentloop.validation.suites import run_suite

TESTS = '''import os


def test_ok():
    pass


def test_bad():
    assert False, "bad on purpose"


def test_variables_reach_pytest():
    assert os.environ.get("VAR", "1") == "1" and os.environ.get("OTHER", "2") == "2"
'''
FILES = {
    "pytest.ini": "[pytest]\ntestpaths = sub/tests\n",
    "sub/pytest.ini": "[pytest]\n",  # a subproject: after `cd sub`, pytest's rootdir is sub
    "sub/tests/test_a.py": TESTS,
}
EXPECTED = {"sub/tests/test_a.py::test_ok": "passed", "sub/tests/test_a.py::test_bad": "failed",
            "sub/tests/test_a.py::test_variables_reach_pytest": "passed"}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LoopConfig]:
    from looptest import git as run_git

    repo = tmp_path_factory.mktemp("forms") / "repo"
    for name, text in FILES.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    # The project's own Python (with pytest) is declared with `path:`, as a project's virtualenv would be.
    (repo / "loop.yaml").write_text(json.dumps({"path": [str(Path(sys.prefix) / "bin")], "services": {},
                                              "env": {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}}))
    run_git(repo, "init", "-q", "-b", "main")
    run_git(repo, "add", "-A")
    run_git(repo, "commit", "-q", "-m", "initial")
    return repo, load_config(repo)


@pytest.mark.parametrize("command", [
    "cd sub && pytest -q -p no:cacheprovider",
    "VAR=1 OTHER=2 python -m pytest -q -p no:cacheprovider",
    "cd sub; pytest -q -p no:cacheprovider",
    "env VAR=1 pytest -q -p no:cacheprovider",
    "cd sub && VAR=1 env OTHER=2 python3 -m pytest -q -p no:cacheprovider",
    "cd sub/tests && cd .. ; env VAR=1 OTHER=2 pytest -q -p no:cacheprovider",
])
def test_each_form_reports_every_test_by_its_path_in_the_repository(
        project: tuple[Path, LoopConfig], tmp_path: Path, command: str) -> None:
    repo, config = project
    result = run_suite(SuiteConfig(suite="unit", run=command), cwd=repo, env={}, out_dir=tmp_path,
                       confinement=project_confinement(config))
    assert result.command.startswith(command) and "--junitxml=" in result.command
    assert {t.name: t.outcome for t in result.tests} == EXPECTED, result.output_tail
    assert result.exit_code == 1 and result.error is None
    assert (tmp_path / "unit.xml").is_file()


@pytest.mark.parametrize("command", [
    "cd sub && python -m unittest discover -s tests",  # not pytest
    "pytest -q -p no:cacheprovider || true",  # would hide the failure behind the report
    "pytest -q -p no:cacheprovider # --junitxml appended here would be a comment",
    "pytest -q -p no:cacheprovider && echo done",  # pytest is not what runs last
])
def test_other_commands_run_exactly_as_written(
        project: tuple[Path, LoopConfig], tmp_path: Path, command: str) -> None:
    repo, config = project
    result = run_suite(SuiteConfig(suite="unit", run=command), cwd=repo, env={}, out_dir=tmp_path,
                       confinement=project_confinement(config))
    assert result.command == command
    assert [t.name for t in result.tests] == ["unit"], "no report: the suite is one result"


def test_a_cd_out_of_the_repository_is_not_followed() -> None:
    """Names are then left as pytest gives them: loop never looks for test files outside the repository."""
    assert recognise("cd ../.. && pytest") == recognise("cd $HOME && pytest") == PytestCommand(directory=None)
    assert recognise("cd sub && cd ../other && pytest") == PytestCommand(directory="other")


def test_a_fix_proven_by_a_new_test_in_a_subproject(make_repo: MakeRepo, tmp_path: Path) -> None:
    """The new test is named by its path in the repository, so it is recognised as the change's own."""
    calc = "def add(a, b):\n    return a - b\n"
    repo = make_repo({"sub/pytest.ini": "[pytest]\n", "sub/calc.py": calc,
                      "sub/tests/test_old.py": "def test_old():\n    pass\n"}, config={"services": {}})
    (repo / "sub/calc.py").write_text(calc.replace("a - b", "a + b"))
    (repo / "sub/tests/test_add.py").write_text(
        "import sys, os\nsys.path.insert(0, os.getcwd())\nfrom calc import add\n\n\n"
        "def test_add():\n    assert add(2, 3) == 5\n")
    config = load_config(repo).model_copy(update={"validate_": [
        SuiteConfig(suite="unit", run="cd sub && python -m pytest -q -p no:cacheprovider")]})
    verdict = run_validation(config=config, worktree=repo, repo=repo, base_commit=git.head(git.Worktree(repo, repo)),
                             sandbox=None, backend=None, out_dir=tmp_path / "out")
    assert verdict.comparison.fixed == ["unit: sub/tests/test_add.py::test_add"], verdict.reasons
    assert verdict.passed and verdict.proven, verdict.reasons
