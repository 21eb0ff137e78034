"""Killed and interrupted runs, resumed: real `loop` processes, SIGKILL and SIGINT, real checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from looptest import MakeRepo, bash, create, git, replace, write_cassette
from test_graph import CALC_FILES, TEST_ADD, WEB_APP, WEB_TEST


def _start(repo: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "agentloop.cli.main", *args], cwd=repo, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )


def _wait_for_event(
    repo: Path, node: str, proc: subprocess.Popen[str], timeout: float = 90, iteration: int = 1
) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for events in (repo / ".loop" / "runs").glob("*/events.jsonl"):
            for line in events.read_text().splitlines():
                event = json.loads(line)
                if event["node"] == node and event["event"] == "start" and event["iteration"] == iteration:
                    return events.parent.name
        assert proc.poll() is None, proc.communicate()[0]
        time.sleep(0.1)
    raise AssertionError(f"{node} never started")


def _hold_file(tmp_path: Path) -> Path:
    """A file whose directory the jails may read (`policy.readable`): confined code sees it go."""
    holds = tmp_path / "holds"
    holds.mkdir()
    hold = holds / "hold"
    hold.write_text("")
    return hold


def _hold_conftest(hold: Path) -> str:
    """A conftest that makes the suite wait while `hold` exists: a window to kill the run in validate."""
    return f"import os, time\nwhile os.path.exists({str(hold)!r}):\n    time.sleep(0.1)\n"


def _processes_in(directory: Path) -> list[int]:
    """Processes whose working directory is `directory` (a suite the run started there)."""
    found = []
    for proc_dir in Path("/proc").iterdir():
        if proc_dir.name.isdigit():
            try:
                if Path(os.readlink(proc_dir / "cwd")) == directory:
                    found.append(int(proc_dir.name))
            except OSError:
                continue
    return found


def _run(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agentloop.cli.main", *args], cwd=repo, capture_output=True, text=True, timeout=180, check=False)


def test_sigkill_in_validate_then_resume_publishes_once(make_repo: MakeRepo, tmp_path: Path) -> None:
    hold = _hold_file(tmp_path)
    repo = make_repo({**CALC_FILES, "tests/conftest.py": _hold_conftest(hold)}, {
        "services": {},
        "validate": [{"suite": "unit", "run": "python3 -m pytest -q tests"}],
        "policy": {"readable": [str(hold.parent)]},
    })
    cassette = write_cassette(tmp_path / "c.json", [[TEST_ADD, replace("calc.py", "return a - b\n\n\ndef sub", "return a + b\n\n\ndef sub")]])
    proc = _start(repo, "fix", "1", "--model", f"replay:{cassette}")
    run_id = _wait_for_event(repo, "validate", proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    hold.unlink()

    listed = json.loads(_run(repo, "runs", "--json").stdout)
    assert [(r["id"], r["status"]) for r in listed] == [(run_id, "interrupted")]

    resumed = _run(repo, "resume", run_id)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    branches = git(repo, "for-each-ref", "--format=%(refname:short)", "refs/heads/loop/").split()
    assert branches == [f"loop/1-{run_id}"]
    assert "return a + b" in git(repo, "show", f"loop/1-{run_id}:calc.py")
    assert len(list((repo / ".git" / "loop" / "pulls").glob("*.json"))) == 1
    events = [json.loads(l) for l in (repo / ".loop" / "runs" / run_id / "events.jsonl").read_text().splitlines()]
    edits = [e for e in events if e["node"] == "edit" and e["event"] == "end"]
    assert len(edits) == 1, "the edit finished before the kill and must not be redone"

    again = _run(repo, "resume", run_id)
    assert again.returncode == 2 and "already published" in again.stderr


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_stops_cleanly_removes_the_sandbox_and_resumes(
    make_repo: MakeRepo, tmp_path: Path, stop: signal.Signals
) -> None:
    hold = _hold_file(tmp_path)
    repo = make_repo(
        {"web/app.py": WEB_APP, ".loop/issues/2.md": "# /hello should say hello\n", "tests/conftest.py": _hold_conftest(hold)},
        {"services": {"web": {"path": "web", "run": "python3 web/app.py --port {port}"}},
         "validate": [{"suite": "integration", "sandbox": True, "run": "python3 -m pytest -q tests"}],
         "policy": {"readable": [str(hold.parent)]}},
    )
    cassette = write_cassette(tmp_path / "c.json", [[create("tests/test_web.py", WEB_TEST), replace("web/app.py", 'b"hi"', 'b"hello"')]])
    proc = _start(repo, "fix", "2", "--model", f"replay:{cassette}")
    run_id = _wait_for_event(repo, "validate", proc)
    os.kill(proc.pid, stop)
    output, _ = proc.communicate(timeout=180)  # a clean stop under a loaded machine; never a speed measure
    worktree = (repo / ".git" / "loop" / "worktrees" / run_id).resolve()
    left = _processes_in(worktree)
    hold.unlink()
    assert proc.returncode == 130, output
    assert "loop resume" in output
    assert left == [], "the waiting suite was stopped with the run"

    from agentloop.config import load_config
    from agentloop.sandbox.factory import open_backend

    backend = open_backend(repo, load_config(repo))
    assert backend.get(run_id) is None
    summary = json.loads((repo / ".loop" / "runs" / run_id / "run.json").read_text())
    assert summary["status"] == "interrupted"

    resumed = _run(repo, "resume", run_id)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert backend.get(run_id) is None


def test_sigkill_in_the_middle_of_a_second_edit_redoes_only_that_edit(make_repo: MakeRepo, tmp_path: Path) -> None:
    hold = _hold_file(tmp_path)
    repo = make_repo(CALC_FILES, {"services": {}, "validate": [{"suite": "unit", "run": "python3 -m pytest -q tests"}],
                                  "policy": {"readable": [str(hold.parent)]}})
    cassette = write_cassette(tmp_path / "c.json", [
        [TEST_ADD, replace("calc.py", "return a - b\n\n\ndef sub", "return a * b\n\n\ndef sub")],
        # the second edit changes a file, then is killed while a command runs: half an edit on disk
        [replace("calc.py", "return a * b", "return a + b"), bash(f"while [ -e {hold} ]; do sleep 0.1; done")],
    ])
    proc = _start(repo, "fix", "1", "--model", f"replay:{cassette}")
    run_id = _wait_for_event(repo, "edit", proc, iteration=2)
    worktree = repo / ".git" / "loop" / "worktrees" / run_id
    deadline = time.monotonic() + 30
    while "return a + b" not in (worktree / "calc.py").read_text():
        assert time.monotonic() < deadline, "the second edit never reached the file"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    hold.unlink()

    resumed = _run(repo, "resume", run_id)

    # the replayed edit applied cleanly again (str_replace of `a * b`), so the half edit was rolled back first
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    branch = f"loop/1-{run_id}"
    assert "return a + b" in git(repo, "show", f"{branch}:calc.py")
    assert "def test_add" in git(repo, "show", f"{branch}:tests/test_add.py"), "the first edit was kept"
    events = [json.loads(l) for l in (repo / ".loop" / "runs" / run_id / "events.jsonl").read_text().splitlines()]
    assert [e["iteration"] for e in events if e["node"] == "edit" and e["event"] == "end"] == [1, 2]
    # every call is 1000 + 100 tokens: 6 calls without the kill; what the killed attempt spent still counts
    tokens = json.loads((repo / ".loop" / "runs" / run_id / "run.json").read_text())["tokens"]
    assert tokens >= 7 * 1100
