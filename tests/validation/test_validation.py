"""run_validation on real git repositories with real pytest runs in subprocesses: per-test results
from JUnit, the comparison with the base run in a detached worktree, flaky reruns, and the verdict rules."""

from __future__ import annotations

import json
from pathlib import Path

from looptest import MakeRepo

from agentloop import git
from agentloop.config import LoopConfig
from agentloop.results import SandboxInfo, Verdict
from agentloop.validation import run_validation

CALC = "def add(a, b):\n    return a - b\n\n\ndef sub(a, b):\n    return a - b\n"
TEST_SUB = "from calc import sub\n\n\ndef test_sub():\n    assert sub(3, 1) == 2\n"
TEST_ADD = "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"
UNIT = {"suite": "unit", "run": "python -m pytest -q -p no:cacheprovider tests"}


def _validate(repo: Path, tmp_path: Path, validate: list[dict[str, object]], *, require: str = "proven",
              sandbox: SandboxInfo | None = None) -> Verdict:
    config = LoopConfig.model_validate({"services": {}, "validate": validate, "require": require})
    base = git.head(git.Worktree(repo, repo))
    return run_validation(config=config, worktree=repo, repo=repo, base_commit=base, sandbox=sandbox, backend=None,
                          out_dir=tmp_path / "out")


def test_a_fix_with_a_reproducing_test_is_proven(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo = make_repo({"calc.py": CALC, "tests/test_sub.py": TEST_SUB})
    (repo / "calc.py").write_text(CALC.replace("return a - b\n\n\ndef sub", "return a + b\n\n\ndef sub"))
    (repo / "tests/test_add.py").write_text(TEST_ADD)

    verdict = _validate(repo, tmp_path, [UNIT])

    assert verdict.passed and verdict.proven, verdict.reasons
    assert verdict.comparison.fixed == ["unit: tests/test_add.py::test_add"]
    assert {t.name: t.outcome for t in verdict.results[0].tests} == {
        "tests/test_add.py::test_add": "passed", "tests/test_sub.py::test_sub": "passed"}
    assert json.loads((tmp_path / "out" / "results.json").read_text())["passed"] is True
    assert (tmp_path / "out" / "sandbox" / "unit.xml").is_file()
    # the base run ran in a temporary worktree (`worktrees/base-*/tree`) that is gone again
    assert "/worktrees/base-" not in git.open_repo(repo).git.worktree("list")


def test_a_test_that_passes_in_the_base_run_too_proves_nothing(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo = make_repo({"calc.py": CALC, "tests/test_sub.py": TEST_SUB})
    (repo / "tests/test_more.py").write_text(TEST_SUB.replace("test_sub", "test_sub_again"))

    verdict = _validate(repo, tmp_path, [UNIT])

    assert not verdict.passed and not verdict.proven
    assert any("not proven" in reason for reason in verdict.reasons)


def test_a_regression_is_named_and_blocks(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo = make_repo({"calc.py": CALC, "tests/test_sub.py": TEST_SUB})
    (repo / "calc.py").write_text(CALC.replace("return a - b\n\n\ndef sub", "return a + b\n\n\ndef sub")
                                  .replace("def sub(a, b):\n    return a - b", "def sub(a, b):\n    return b - a"))
    (repo / "tests/test_add.py").write_text(TEST_ADD)

    verdict = _validate(repo, tmp_path, [UNIT])

    assert not verdict.passed
    assert verdict.comparison.regressions == ["unit: tests/test_sub.py::test_sub"]
    assert verdict.comparison.fixed == ["unit: tests/test_add.py::test_add"]
    assert any("regressed" in r and "test_sub" in r for r in verdict.reasons)


def test_a_failure_already_in_the_base_run_is_listed_but_does_not_block(make_repo: MakeRepo, tmp_path: Path) -> None:
    broken = "def test_always_broken():\n    assert 1 == 2, 'broken before this change'\n"
    repo = make_repo({"calc.py": CALC, "tests/test_old.py": broken})
    (repo / "calc.py").write_text(CALC.replace("return a - b\n\n\ndef sub", "return a + b\n\n\ndef sub"))
    (repo / "tests/test_add.py").write_text(TEST_ADD)

    verdict = _validate(repo, tmp_path, [UNIT])

    assert verdict.passed, verdict.reasons
    assert verdict.comparison.preexisting == ["unit: tests/test_old.py::test_always_broken"]
    assert any("already failing in the base run" in r for r in verdict.reasons)
    failed = verdict.results[0].failed
    assert [t.name for t in failed] == ["tests/test_old.py::test_always_broken"]
    assert "broken before this change" in failed[0].message

    strict = _validate(repo, tmp_path / "strict", [UNIT], require="all")
    assert not strict.passed and any("require: all" in r for r in strict.reasons)


def test_a_test_that_passes_on_its_rerun_is_flaky_shown_and_not_blocking(make_repo: MakeRepo, tmp_path: Path) -> None:
    flaky = (
        "from pathlib import Path\n\n\ndef test_sometimes(tmp_path_factory):\n"
        "    marker = Path(__file__).with_name('.ran-once')\n"
        "    first = not marker.exists()\n    marker.write_text('x')\n    assert not first, 'first run fails'\n"
    )
    repo = make_repo({"calc.py": CALC, "tests/test_flaky.py": flaky, ".gitignore": ".ran-once\n"})
    (repo / "calc.py").write_text(CALC.replace("return a - b\n\n\ndef sub", "return a + b\n\n\ndef sub"))
    (repo / "tests/test_add.py").write_text(TEST_ADD)

    verdict = _validate(repo, tmp_path, [UNIT])

    assert verdict.passed, verdict.reasons
    assert verdict.comparison.flaky == ["unit: tests/test_flaky.py::test_sometimes"]
    assert any("flaky" in u for u in verdict.unproven)
    assert verdict.results[0].counts()["flaky"] == 1


def test_a_runner_that_crashes_with_no_report_fails_with_its_output(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo = make_repo({"run.sh": "echo 'loading fixtures'\necho 'Segmentation fault (core dumped)' >&2\nexit 139\n"})
    suite = {"suite": "e2e", "run": "sh run.sh", "junit": "reports/e2e.xml"}

    verdict = _validate(repo, tmp_path, [suite])

    assert not verdict.passed
    result = verdict.results[0]
    assert result.exit_code == 139 and "no JUnit report" in (result.error or "")
    assert "Segmentation fault" in result.output_tail
    assert any("did not run to a result" in r for r in verdict.reasons)


def test_a_non_pytest_runner_is_read_from_its_junit_path(make_repo: MakeRepo, tmp_path: Path) -> None:
    report = ('<testsuite name="js"><testcase classname="cart" name="adds up" time="0.01"/>'
              '<testcase classname="cart" name="rounds"><failure message="expected 3 got 2">trace</failure></testcase>'
              '</testsuite>')
    repo = make_repo({"run.sh": f"mkdir -p out && echo '{report}' > out/junit.xml && exit 1\n"})

    verdict = _validate(repo, tmp_path, [{"suite": "js", "run": "sh run.sh", "junit": "out/junit.xml"}])

    outcomes = {t.name: (t.outcome, t.message) for t in verdict.results[0].tests}
    assert outcomes["cart.adds up"] == ("passed", "")
    assert outcomes["cart.rounds"][0] == "failed" and "expected 3 got 2" in outcomes["cart.rounds"][1]


def test_suites_see_the_sandbox_and_skip_cleanly_without_one(make_repo: MakeRepo, tmp_path: Path) -> None:
    probe = (
        "import json, os\n\n\ndef test_env():\n"
        "    assert os.environ['LOOP_SANDBOX'] == 'r-1'\n"
        "    assert os.environ['LOOP_URL_ORDER_API'] == 'http://127.0.0.1:9'\n"
        "    assert json.loads(os.environ['LOOP_ROUTING_HEADERS']) == {'x-loop-route': 'k123456'}\n"
        "    assert os.environ['LOOP_ROUTE_KEY'] == 'k123456'\n"
    )
    repo = make_repo({"tests/test_env.py": probe})
    sandbox = SandboxInfo(name="r-1", backend="local", route_key="k123456", router_url="http://127.0.0.1:9",
                          service_urls={"order-api": "http://127.0.0.1:9"}, routing_headers={"x-loop-route": "k123456"})
    suite = {**UNIT, "suite": "integration", "sandbox": True}

    with_sandbox = _validate(repo, tmp_path / "a", [suite], sandbox=sandbox)
    assert with_sandbox.results[0].tests[0].outcome == "passed", with_sandbox.results[0].output_tail

    without = _validate(repo, tmp_path / "b", [suite])
    assert without.results[0].ran is False
    assert any("integration was skipped" in u for u in without.unproven)
