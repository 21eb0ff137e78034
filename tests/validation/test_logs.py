"""diagnose: what failed, said so the next edit can act on it, and logs with tracebacks first."""

from __future__ import annotations

from pathlib import Path

from agentloop.results import DeployResult, SuiteResult, TestCaseResult, Verdict
from agentloop.validation.logs import diagnose, excerpt

KEY = "sk-ant-" + "abcdefghijklmnop1234"
LOG = "\n".join([
    "2026-11-22T10:00:00.000Z orders listening on 8081",
    *[f"2026-11-22T10:00:01.{i:03d}Z GET /healthz 200" for i in range(200)],
    "2026-11-22T10:00:02.000Z Traceback (most recent call last):",
    '  File "orders/app.py", line 40, in checkout',
    "    total = price * qty",
    "TypeError: can't multiply sequence by non-int of type 'str'",
    f"2026-11-22T10:00:02.100Z ERROR using key {KEY}",
    "2026-11-22T10:00:03.000Z GET /healthz 200",
])


def test_a_failed_deploy_is_diagnosed_from_its_log_with_the_traceback_first(tmp_path: Path) -> None:
    deploy = DeployResult(ok=False, error="orders exited with code 1", service="orders", exit_code=1, log_tail=LOG)

    diagnosis = diagnose(backend=None, sandbox=None, verdict=None, deploy=deploy, since=0, until=1, out_dir=tmp_path,
                         limit_chars=3000)

    text = diagnosis.excerpts["orders"]
    assert text.startswith("2026-11-22T10:00:02.000Z Traceback") and "TypeError: can't multiply" in text
    assert KEY not in text and "[REDACTED]" in text
    assert len(text) <= 3000
    assert "The deploy failed (service orders, exit code 1): orders exited with code 1" in diagnosis.summary
    assert "TypeError" in (tmp_path / "diagnosis.md").read_text()


def test_the_summary_names_failed_tests_and_plan_steps_with_their_messages(tmp_path: Path) -> None:
    verdict = Verdict(passed=False, reasons=["failed: 2 suites and plans"], results=[
        SuiteResult(name="unit", tests=[TestCaseResult(name="tests/test_add.py::test_add", outcome="failed",
                                                       message="assert 6 == 5")]),
        SuiteResult(name="checkout", kind="plan", tests=[TestCaseResult(
            name="place an order", outcome="failed", message='expected status 201, got 500: {"error": "boom"}')]),
        SuiteResult(name="e2e", error="exited 139 with no JUnit report", output_tail="Segmentation fault"),
    ])

    summary = diagnose(backend=None, sandbox=None, verdict=verdict, deploy=None, since=0, until=1, out_dir=tmp_path).summary

    assert "suite unit, test tests/test_add.py::test_add: failed\n    assert 6 == 5" in summary
    assert "plan checkout, step place an order: failed\n    expected status 201, got 500" in summary
    assert "suite e2e: exited 139 with no JUnit report" in summary and "Segmentation fault" in summary


def test_an_excerpt_of_a_quiet_log_is_its_last_lines() -> None:
    quiet = "\n".join(f"line {i}" for i in range(100))
    assert excerpt(quiet, 10_000).splitlines()[-1] == "line 99"
    assert "line 50" not in excerpt(quiet, 10_000)
