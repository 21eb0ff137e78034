"""`loop batch --executor kubernetes` against the loopback Kubernetes API server (the real `kubernetes`
client speaks to tests/sandbox_kubernetes/fake_apiserver.py, since no cluster can run here) and the
real PostgreSQL on 127.0.0.1:5432. The fake's kubelet runs each Job's container command as a local
process with the Job's environment and Secret, so the Jobs really clone the repository and run
`loop fix`, writing their records to Postgres, which the batch and `loop runs` read back."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from batchtest import ctrl_c_when, hold_conftest, loop, start_loop
from looptest import MakeRepo, create, git, replace, write_cassette
from sandbox_kubernetes.fake_apiserver import FakeApiServer

KEY = "sk-ant-test-0123456789abcdef"


@pytest.fixture
def cluster(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeApiServer]:
    server = FakeApiServer().start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "loopback",
        "clusters": [{"name": "loopback", "cluster": {"server": server.url}}],
        "contexts": [{"name": "loopback", "context": {"cluster": "loopback", "user": "tester"}}],
        "users": [{"name": "tester", "user": {"token": "t"}}],
    }))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("LOOP_DATABASE_URL", database_url)
    server.put({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "loop-keys"}, "data": {
        name: base64.b64encode(value.encode()).decode()
        for name, value in {"ANTHROPIC_API_KEY": KEY, "LOOP_DATABASE_URL": database_url}.items()}})
    pods = tmp_path / "pods"
    pods.mkdir()

    def kubelet(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        base = {k: v for k, v in os.environ.items() if k not in ("LOOP_DATABASE_URL", "KUBECONFIG")}
        base["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{base['PATH']}"  # `loop` is in the image
        log = (pods / f"{env['LOOP_RUN_ID']}.log").open("wb")
        return subprocess.Popen(argv, env=base | env, cwd=pods, stdout=log, stderr=subprocess.STDOUT)

    server.job_runner = kubelet
    try:
        yield server
    finally:
        server.stop()


def test_each_run_is_a_job_and_every_run_is_seen_through_the_database(
    make_repo: MakeRepo, tmp_path: Path, cluster: FakeApiServer
) -> None:
    files = {"calc.py": "def add(a, b):\n    return a - b\n\n\ndef mul(a, b):\n    return a + b\n",
             ".loop/issues/1.md": "# add() subtracts\n", ".loop/issues/2.md": "# mul() adds\n"}
    repo = make_repo(files, {"services": {}, "validate": [{"suite": "unit", "run": "python3 -m pytest -q tests"}]})
    origin = tmp_path / "origin.git"
    git(tmp_path, "clone", "-q", "--bare", str(repo), str(origin))
    git(repo, "remote", "add", "origin", str(origin))
    cassettes = tmp_path / "cassettes"
    cassettes.mkdir()
    write_cassette(cassettes / "1.json", [[
        create("tests/test_add.py", "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"),
        replace("calc.py", "a - b", "a + b")]])
    write_cassette(cassettes / "2.json", [[
        create("tests/test_mul.py", "from calc import mul\n\n\ndef test_mul():\n    assert mul(2, 3) == 6\n"),
        replace("calc.py", "return a + b", "return a * b")]])
    model = f"replay:{cassettes}/{{issue}}.json"

    done = loop(repo, "batch", "1", "2", "--executor", "kubernetes", "--image", "registry.local/loop:test",
                "--model", model)

    assert done.returncode == 0, done.stdout + done.stderr
    jobs = cluster.items("jobs")
    assert len(jobs) == 2
    record = json.loads(next((repo / ".loop" / "runs").glob("batch-*.json")).read_text())
    by_run = {item["run_id"]: item for item in record["items"]}
    for job in jobs:
        pod = job["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert pod["restartPolicy"] == "Never" and container["image"] == "registry.local/loop:test"
        repository, issue, run_id, job_model = container["args"]
        assert (repository, job_model) == (str(origin), model) and by_run[run_id]["issue"] == issue
        assert container["envFrom"] == [{"secretRef": {"name": "loop-keys"}}]
        assert job["status"]["succeeded"] == 1
    assert KEY not in json.dumps(jobs) and KEY not in json.dumps(record)
    assert (record["totals"]["resolved"], record["totals"]["failed"]) == (2, 0)
    assert len(record["totals"]["pull_requests"]) == 2
    # the runs happened in the Jobs' own clones, yet this checkout lists and shows them
    assert not any((repo / ".loop" / "runs" / run_id / "run.json").exists() for run_id in by_run)
    listed = json.loads(loop(repo, "runs", "--json").stdout)
    assert {(run["id"], run["status"]) for run in listed} == {(run_id, "published") for run_id in by_run}
    shown = json.loads(loop(repo, "show", next(iter(by_run)), "--json").stdout)
    assert shown["iterations"][0]["verdict"]["passed"] is True


def test_the_kubernetes_executor_needs_an_image_and_a_database(make_repo: MakeRepo, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = make_repo({".loop/issues/1.md": "# x\n"}, {"services": {}, "validate": []})
    monkeypatch.delenv("LOOP_IMAGE", raising=False)
    no_database = loop(repo, "batch", "1", "--executor", "kubernetes", "--image", "loop:1")
    assert no_database.returncode == 2 and "LOOP_DATABASE_URL" in no_database.stderr
    monkeypatch.setenv("LOOP_DATABASE_URL", "postgresql://127.0.0.1:1/x")
    no_image = loop(repo, "batch", "1", "--executor", "kubernetes")
    assert no_image.returncode == 2 and "--image" in no_image.stderr and "Traceback" not in no_image.stderr


def test_ctrl_c_deletes_the_jobs_and_their_runs_stop_cleanly(
    make_repo: MakeRepo, tmp_path: Path, cluster: FakeApiServer, database_url: str
) -> None:
    holds = tmp_path / "holds"
    holds.mkdir()
    hold = holds / "hold"
    hold.write_text("")
    repo = make_repo({"calc.py": "def add(a, b):\n    return a - b\n", ".loop/issues/1.md": "# add() subtracts\n",
                      "tests/conftest.py": hold_conftest(hold)},
                     {"services": {}, "validate": [{"suite": "unit", "run": "python3 -m pytest -q tests"}],
                      "policy": {"readable": [str(holds)]}})
    cassette = write_cassette(tmp_path / "1.json", [[
        create("tests/test_add.py", "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"),
        replace("calc.py", "a - b", "a + b")]])
    from agentloop.runs.store import RunStore

    store = RunStore(database_url)
    proc = start_loop(repo, "batch", "1", "--executor", "kubernetes", "--image", "loop:test", "--repository", str(repo),
                      "--model", f"replay:{cassette}")
    try:
        output = ctrl_c_when(lambda: any(e["node"] == "validate" for s in store.summaries() for e in store.events(s["id"])),
                             proc)
    finally:
        hold.unlink()

    assert proc.returncode == 130, output
    assert cluster.items("jobs") == [], "the Job is deleted once its pod has stopped"
    [summary] = store.summaries()
    assert summary["status"] == "interrupted", summary
    record = json.loads(next((repo / ".loop" / "runs").glob("batch-*.json")).read_text())
    assert record["status"] == "interrupted" and record["items"][0]["status"] == "interrupted"
