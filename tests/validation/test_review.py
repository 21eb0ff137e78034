"""What makes a change need review, found from a real git repository: the change is left in the checkout,
its diff against the base commit read by loop's git, the base's files by `git show`."""

from __future__ import annotations

from pathlib import Path

import pytest
from looptest import MakeRepo

from agentloop import git
from agentloop.config import LoopConfig
from agentloop.results import SuiteResult, TestCaseResult
from agentloop.validation.review import parse_patch, review

CONFIG = LoopConfig.model_validate({"services": {}, "validate": [
    {"suite": "unit", "run": "python3 -m pytest -q tests"},
    {"suite": "js", "run": "sh run.sh", "junit": "out/js.xml"},
    {"plan": "plans/checkout.yaml"},
]})
TESTS = '''import pytest


@pytest.fixture
def two():
    return 2


def test_sub(two):
    assert 3 - 1 == two


class TestK:
    @pytest.mark.parametrize("n", [1, 2])
    def test_m(self, n):
        assert n > 0
'''
PASSED = ["tests/test_calc.py::test_sub", "tests/test_calc.py::TestK::test_m[1]", "tests/test_calc.py::TestK::test_m[2]"]
BASE = {
    "calc.py": "def add(a, b):\n    return a - b\n",
    "tests/test_calc.py": TESTS,
    "tests/conftest.py": "import helpers\n",
    "tests/helpers.py": "def check(x):\n    assert x\n",
    "pyproject.toml": '[project]\nname = "calc"\nversion = "1"\n\n[tool.pytest.ini_options]\naddopts = "-q"\n',
    "setup.cfg": "[metadata]\nname = calc\n\n[tool:pytest]\naddopts = -q\n",
    "plans/checkout.yaml": "steps: []\n",
    "docs/readme.md": "hello\n",
}


def _review(repo: Path) -> list[str]:
    base = git.head(git.Worktree(repo, repo))
    tree = git.Worktree(repo, repo)
    kept = PASSED if (repo / "tests/test_calc.py").exists() else []
    now = SuiteResult(name="unit", tests=[TestCaseResult(name=name, outcome="passed")
                                          for name in [*kept, "tests/test_other.py::test_other"]])
    return review(repo=repo, worktree=tree, base_commit=base, config=CONFIG, changed=git.changed_files(tree, base),
                  suites=[(now, dict.fromkeys([*PASSED, "tests/test_other.py::test_other"], "passed"))])


def _edit(repo: Path, name: str, old: str, new: str) -> None:
    path = repo / name
    text = path.read_text() if path.exists() else ""
    assert old in text
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.replace(old, new, 1) if old else text + new)


@pytest.mark.parametrize(("name", "old", "new", "expected"), [
    ("pyproject.toml", 'addopts = "-q"', 'addopts = "-q -p rewrite"', "`pyproject.toml` changes its [tool.pytest] table"),
    ("setup.cfg", "addopts = -q", "addopts = -q -x", "`setup.cfg` changes its [tool:pytest] section"),
    ("tests/conftest.py", "", "\n# nothing\n", "`tests/conftest.py` changed: a pytest conftest"),
    ("tests/helpers.py", "assert x", "pass", "`tests/helpers.py` changed: a pytest plugin (`tests/conftest.py` imports it)"),
    ("pytest.ini", "", "[pytest]\naddopts = -p no:junitxml\n", "`pytest.ini` changed: pytest's configuration"),
    ("sitecustomize.py", "", "import os\n", "`sitecustomize.py` changed: Python runs it at start"),
    ("loop.yaml", "", "services: {}\n", "`loop.yaml` changed: validation uses the base commit's"),
    ("plans/checkout.yaml", "steps: []", "steps: [x]", "`plans/checkout.yaml` changed: a plan of loop.yaml"),
    ("out/js.xml", "", "<testsuite/>", "`out/js.xml` changed: the JUnit report"),
    ("tests/test_new.py", "", "pytest_plugins = ['evil']\n\n\ndef test_new():\n    pass\n",
     "`tests/test_new.py` line 1 reaches into pytest itself (`pytest_plugins = ['evil']`)"),
    ("tests/test_calc.py", "assert 3 - 1 == two", "assert 3 - 1 == two or True",
     "`tests/test_calc.py::test_sub` changed: it passed in the base run"),
    ("tests/test_calc.py", "assert n > 0", "return", "`tests/test_calc.py::TestK::test_m` changed"),
    ("tests/test_calc.py", "def test_sub(two):\n", "def test_sub(two):\n    return\n",
     "`tests/test_calc.py::test_sub` changed"),
    ("tests/test_calc.py", "    return 2\n", "    return 2  # or whatever the code says\n",
     "`tests/test_calc.py::two` changed: a fixture of a test file"),
])
def test_a_change_to_test_infrastructure_or_a_passing_test_needs_review(
    make_repo: MakeRepo, name: str, old: str, new: str, expected: str
) -> None:
    repo = make_repo(BASE)
    _edit(repo, name, old, new)

    reasons = _review(repo)

    assert any(expected in reason for reason in reasons), reasons


@pytest.mark.parametrize(("name", "old", "new"), [
    ("calc.py", "a - b", "a + b"),
    ("pyproject.toml", 'version = "1"', 'version = "2"'),
    ("setup.cfg", "name = calc", "name = calculator"),
    ("docs/readme.md", "", "more\n"),
    # a new test added below the existing ones, and an import extended: no existing test's lines change
    ("tests/test_calc.py", "", "\n\ndef test_add():\n    assert 2 + 3 == 5\n"),
    ("tests/test_calc.py", "import pytest\n", "import pytest\nimport math\n"),
])
def test_a_change_to_code_or_new_tests_needs_no_review(make_repo: MakeRepo, name: str, old: str, new: str) -> None:
    repo = make_repo(BASE)
    _edit(repo, name, old, new)

    assert _review(repo) == []


def test_a_deleted_test_file_names_every_test_it_held(make_repo: MakeRepo) -> None:
    repo = make_repo(BASE)
    (repo / "tests/test_calc.py").unlink()

    reasons = _review(repo)

    assert any(r.startswith("removes tests that ran in the base run: `tests/test_calc.py::test_sub` (passed in")
               for r in reasons), reasons


def test_the_patch_parser_knows_the_base_lines_each_hunk_touches() -> None:
    patch = (
        "diff --git a/t.py b/t.py\n--- a/t.py\n+++ b/t.py\n"
        "@@ -2,3 +2,3 @@ def f():\n a\n-b\n+B\n c\n"
        "@@ -10,0 +11,2 @@\n+x\n+-- not a header\n"
        'diff --git "a/sp ace.py" "b/sp ace.py"\nnew file mode 100644\n--- /dev/null\n+++ "b/sp ace.py"\n'
        "@@ -0,0 +1 @@\n+y\n"
    )

    parsed = parse_patch(patch)

    assert parsed["t.py"].removed == [3] and parsed["t.py"].inserted_after == [3, 10, 10]
    assert parsed["t.py"].added == [(3, "B"), (11, "x"), (12, "-- not a header")]
    assert parsed["sp ace.py"].added == [(1, "y")]
