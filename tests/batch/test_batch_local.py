"""`loop batch` with the local executor, end to end: real `loop` processes, real git worktrees, real
service forks behind the real router, the replay model reading one cassette per issue."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from batchtest import (
    Barrier,
    batch_record,
    ctrl_c_when,
    hold_conftest,
    loop,
    make_system,
    start_loop,
    web_test,
)
from looptest import MakeRepo, create, git, replace, write_cassette


def _pulls(repo: Path) -> list[dict[str, object]]:
    return [json.loads(p.read_text()) for p in sorted((repo / ".git" / "loop" / "pulls").glob("*.json"))]


def _backend(repo: Path):  # type: ignore[no-untyped-def]
    from agentloop.config import load_config
    from agentloop.sandbox.factory import open_backend

    return open_backend(repo, load_config(repo))


def test_three_issues_in_parallel_publish_three_pull_requests_on_one_baseline(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo = make_system(make_repo, {1: "/hello should say hello", 2: "/bye should say goodbye", 3: "/ping should say pong"})
    barrier = Barrier()
    cassettes = tmp_path / "cassettes"
    cassettes.mkdir()
    # runs 1 and 2 fork the same service with different changes; each must see only its own
    write_cassette(cassettes / "1.json", [[
        create("tests/test_hello.py", web_test("test_hello", {"/hello": "hello", "/bye": "bye?"}, barrier, 2)),
        replace("web/app.py", 'b"hi"', 'b"hello"')]])
    write_cassette(cassettes / "2.json", [[
        create("tests/test_bye.py", web_test("test_bye", {"/hello": "hi", "/bye": "goodbye"}, barrier, 2)),
        replace("web/app.py", 'b"bye?"', 'b"goodbye"')]])
    write_cassette(cassettes / "3.json", [[
        create("tests/test_ping.py", web_test("test_ping", {"/ping": "pong"})),
        replace("web/app.py", 'b"ping?"', 'b"pong"')]])

    try:
        done = loop(repo, "batch", "1", "2", "3", "--parallel", "3", "--model", f"replay:{cassettes}/{{issue}}.json")
    finally:
        barrier.close()

    assert done.returncode == 0, done.stdout + done.stderr
    record = batch_record(repo)
    totals = record["totals"]
    assert (totals["resolved"], totals["failed"]) == (3, 0)
    assert len(totals["pull_requests"]) == 3 and set(totals["pull_requests"]) == {p["url"] for p in _pulls(repo)}
    assert totals["cost_usd"] > 0
    # totals are rounded from unrounded sums: compare within the rounding, never exactly
    assert totals["run_seconds"] == pytest.approx(sum(item["duration"] for item in record["items"]), abs=0.05)
    assert totals["speedup"] == pytest.approx(totals["run_seconds"] / totals["wall_seconds"], abs=0.02)
    assert totals["speedup"] > 1, "three runs at once take less wall time than their sum"
    assert "3 resolved, 0 failed" in done.stderr
    # one baseline for the whole batch: started once by the batch, never by a run, and stopped at the end
    for item in record["items"]:
        events = (repo / ".loop" / "runs" / item["run_id"] / "events.jsonl").read_text()
        assert '"outcome": "started"' not in events
    assert _backend(repo).baseline_status()["up"] is False, "the batch stops the baseline it started"
    # each branch carries its own change only
    by_issue = {item["issue"]: item["run_id"] for item in record["items"]}
    app1 = git(repo, "show", f"loop/1-{by_issue['1']}:web/app.py")
    app2 = git(repo, "show", f"loop/2-{by_issue['2']}:web/app.py")
    assert 'b"hello"' in app1 and 'b"bye?"' in app1
    assert 'b"goodbye"' in app2 and 'b"hi"' in app2
    # two forks of the same service, both up while the other run's test ran (the barrier), each passing
    forks = [json.loads((repo / ".loop" / "runs" / by_issue[n] / "evidence.json").read_text())["sandbox"] for n in "12"]
    assert forks[0]["route_key"] != forks[1]["route_key"]
    assert forks[0]["forks"]["web"]["url"] != forks[1]["forks"]["web"]["url"]
    # (their base runs arrive too, with route keys of their own that no sandbox owns)
    assert {forks[0]["route_key"], forks[1]["route_key"]} <= barrier.arrived
    assert _backend(repo).list() == []


CALC = {"calc.py": "def add(a, b):\n    return a - b\n", "tests/__init__.py": "",
        ".loop/issues/1.md": "# add() subtracts\n", ".loop/issues/2.md": "# add() subtracts, again\n"}
CALC_FIX = [create("tests/test_add.py", "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"),
            replace("calc.py", "a - b", "a + b")]


def test_a_crashing_run_does_not_stop_the_others(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo = make_repo(CALC, {"services": {}, "validate": [{"suite": "unit", "run": "python3 -m pytest -q tests"}]})
    cassettes = tmp_path / "cassettes"
    cassettes.mkdir()
    (cassettes / "1.json").write_text("{not json")
    write_cassette(cassettes / "2.json", [CALC_FIX])

    done = loop(repo, "batch", "1", "2", "--model", f"replay:{cassettes}/{{issue}}.json")

    assert done.returncode == 1, done.stdout + done.stderr
    record = batch_record(repo)
    statuses = {item["issue"]: item["status"] for item in record["items"]}
    assert statuses == {"1": "error", "2": "published"}
    assert (record["totals"]["resolved"], record["totals"]["failed"]) == (1, 1)
    assert record["totals"]["pull_requests"] == [p["url"] for p in _pulls(repo)]
    assert "1 resolved, 1 failed" in done.stderr
    crashed = next(item for item in record["items"] if item["issue"] == "1")
    assert "cassette" in (repo / ".loop" / "runs" / f"batch-{record['id']}" / f"{crashed['run_id']}.log").read_text()


def _validating(repo: Path) -> set[str]:
    started = set()
    for events in (repo / ".loop" / "runs").glob("*/events.jsonl"):
        if any(json.loads(line)["node"] == "validate" for line in events.read_text().splitlines()):
            started.add(events.parent.name)
    return started


def test_ctrl_c_stops_every_run_cleanly_and_resume_finishes_the_batch(make_repo: MakeRepo, tmp_path: Path) -> None:
    holds = tmp_path / "holds"
    holds.mkdir()
    hold = holds / "hold"
    hold.write_text("")
    repo = make_system(make_repo, {1: "/hello should say hello", 2: "/bye should say goodbye"}, readable=holds)
    (repo / "tests" / "conftest.py").write_text(hold_conftest(hold))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "a suite that waits while the test holds it")
    cassettes = tmp_path / "cassettes"
    cassettes.mkdir()
    write_cassette(cassettes / "1.json", [[create("tests/test_hello.py", web_test("test_hello", {"/hello": "hello"})),
                                           replace("web/app.py", 'b"hi"', 'b"hello"')]])
    write_cassette(cassettes / "2.json", [[create("tests/test_bye.py", web_test("test_bye", {"/bye": "goodbye"})),
                                           replace("web/app.py", 'b"bye?"', 'b"goodbye"')]])
    proc = start_loop(repo, "batch", "1", "2", "--model", f"replay:{cassettes}/{{issue}}.json")
    try:
        output = ctrl_c_when(lambda: len(_validating(repo)) == 2, proc)
    finally:
        hold.unlink()

    assert proc.returncode == 130, output
    record = batch_record(repo)
    assert record["status"] == "interrupted"
    assert f"loop batch --resume {record['id']}" in output
    for item in record["items"]:
        assert item["status"] == "interrupted"
        summary = json.loads((repo / ".loop" / "runs" / item["run_id"] / "run.json").read_text())
        assert summary["status"] == "interrupted"
    assert _backend(repo).list() == [], "every sandbox is removed"

    resumed = loop(repo, "batch", "--resume", record["id"])

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    record = batch_record(repo)
    assert record["status"] == "done"
    assert [item["status"] for item in record["items"]] == ["published", "published"]
    assert len(_pulls(repo)) == 2 and record["totals"]["resolved"] == 2
    assert _backend(repo).list() == []


def test_a_second_ctrl_c_stops_at_once_and_resume_still_finishes(make_repo: MakeRepo, tmp_path: Path) -> None:
    import signal
    import time

    holds = tmp_path / "holds"
    holds.mkdir()
    hold = holds / "hold"
    hold.write_text("")
    repo = make_system(make_repo, {1: "/hello should say hello", 2: "/bye should say goodbye"}, readable=holds)
    # a service slow to stop (it ignores SIGTERM): a clean stop of each run takes the sandbox's grace period
    app = repo / "web" / "app.py"
    app.write_text("import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + app.read_text())
    (repo / "tests" / "conftest.py").write_text(hold_conftest(hold))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "a slow-to-stop service and a suite that waits while the test holds it")
    cassettes = tmp_path / "cassettes"
    cassettes.mkdir()
    write_cassette(cassettes / "1.json", [[create("tests/test_hello.py", web_test("test_hello", {"/hello": "hello"})),
                                           replace("web/app.py", 'b"hi"', 'b"hello"')]])
    write_cassette(cassettes / "2.json", [[create("tests/test_bye.py", web_test("test_bye", {"/bye": "goodbye"})),
                                           replace("web/app.py", 'b"bye?"', 'b"goodbye"')]])
    proc = start_loop(repo, "batch", "1", "2", "--model", f"replay:{cassettes}/{{issue}}.json")
    try:
        from batchtest import wait_until

        wait_until(lambda: len(_validating(repo)) == 2, proc)
        os.kill(proc.pid, signal.SIGINT)
        time.sleep(1.0)  # the runs may still be stopping (or the batch already done: then it is ignored)
        os.kill(proc.pid, signal.SIGINT)
        output, _ = proc.communicate(timeout=180)  # a clean stop under a loaded machine, not a speed measure
    finally:
        hold.unlink()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)

    assert proc.returncode == 130, output
    record = batch_record(repo)
    listed = {run["id"]: run["status"] for run in json.loads(loop(repo, "runs", "--json").stdout)}
    for item in record["items"]:
        pid = json.loads((repo / ".loop" / "runs" / item["run_id"] / "run.json").read_text())["pid"]
        try:
            os.kill(pid, 0)
            alive = True
        except ProcessLookupError:
            alive = False
        assert not alive, "the second Ctrl-C kills every run at once"
        assert listed[item["run_id"]] == "interrupted"
    # the batch collected what the killed runs left behind
    assert _backend(repo).gc() == [] and _backend(repo).list() == []

    resumed = loop(repo, "batch", "--resume", record["id"], timeout=180)

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert [item["status"] for item in batch_record(repo)["items"]] == ["published", "published"]
    assert _backend(repo).list() == [], "the resumed runs took their sandboxes over and removed them"
