"""`loop demo` end to end, as `make demo` runs it: the bundled shop in a fresh repository, the scripted
agent, real services, sandbox, tests, logs and a published local pull request; nothing left running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from agentloop.config import load_config
from agentloop.sandbox.factory import open_backend


def loop(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agentloop.cli.main", *args], cwd=cwd, capture_output=True, text=True, check=False,
                          timeout=300, env={**os.environ, "COLUMNS": "160"})


def test_demo_publishes_after_a_failed_first_attempt_and_stops_what_it_started(tmp_path: Path) -> None:
    result = loop("demo", "--dir", str(tmp_path), cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "scripted" in output and "real" in output
    assert "pull request:" in output

    repo = tmp_path / "shop"
    runs = json.loads(loop("runs", "--json", "--repo", str(repo), cwd=tmp_path).stdout)
    assert len(runs) == 1
    run = runs[0]
    assert (run["status"], run["iterations"]) == ("published", 2)
    assert run["branch"] == f"loop/1-{run['id']}" and run["ended_at"].endswith("Z")  # ISO 8601, UTC

    details = json.loads(loop("show", run["id"], "--json", "--repo", str(repo), cwd=tmp_path).stdout)
    first, second = details["iterations"]
    assert first["verdict"]["passed"] is False and second["verdict"]["passed"] is True
    assert set(first["deploy"]["forked"]) == {"orders"}, "only the changed service is forked"
    assert "inventory" in set(second["deploy"]["forked"])
    # the logs told the agent why the first attempt failed
    assert "no 'qty'" in first["log_excerpts"]["inventory (baseline)"]

    body = (Path(details["record"]) / "report.md").read_text()
    assert "Fixes #1" in body and "route key" in body
    verified = loop("verify", run["id"], "--rerun", "--repo", str(repo), cwd=tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "passed on a fresh sandbox" in verified.stdout

    backend = open_backend(repo, load_config(repo))
    assert backend.baseline_status()["up"] is False
    assert backend.list() == []
