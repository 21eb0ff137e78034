"""`langgraph dev` (LangGraph Server with the in-memory runtime, what Studio talks to) serves the loop:
its schemas load, and a run on the bundled example with the scripted cassette can be stepped (paused
before deploy, then continued) to a published pull request, through the real `langgraph_sdk` client on
loopback. Nothing it started is left running."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
LANGGRAPH = Path(sys.executable).parent / "langgraph"
GRAPH_SPEC = "./graphs/loop.py:graph"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not LANGGRAPH.exists() or importlib.util.find_spec("langgraph_runtime_inmem") is None,
                       reason='langgraph-cli with the in-memory runtime is not installed: pip install "langgraph-cli[inmem]"'),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """`langgraph dev` on a free loopback port, offline, with the repository's graph; stopped afterwards.

    It runs in tmp_path (the in-memory runtime keeps `.langgraph_api/` in its working directory) from a
    copy of langgraph.json that names the same graph by absolute path; TMPDIR puts the example's copies
    there too."""
    config = json.loads((ROOT / "langgraph.json").read_text())
    assert config["graphs"] == {"loop": GRAPH_SPEC}
    config["graphs"] = {"loop": str(ROOT / GRAPH_SPEC.removeprefix("./"))}
    config["dependencies"] = [str(ROOT)]
    config.pop("env", None)
    (tmp_path / "langgraph.json").write_text(json.dumps(config))
    port = _free_port()
    env = {**os.environ, "TMPDIR": str(tmp_path), "LANGGRAPH_CLI_NO_ANALYTICS": "1", "LANGSMITH_TRACING": "false",
           "LANGCHAIN_TRACING_V2": "false", "LOOP_EXAMPLES": str(ROOT / "examples")}
    env.pop("LANGSMITH_API_KEY", None)
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen(
        [str(LANGGRAPH), "dev", "--no-browser", "--no-reload", "--host", "127.0.0.1", "--port", str(port),
         "--config", str(tmp_path / "langgraph.json")],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text(errors="replace")[-3000:]
            try:
                if httpx.get(f"{url}/ok", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "langgraph dev did not answer within 120 s"
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()
        _stop_what_runs_started(tmp_path)


def _stop_what_runs_started(tmp_path: Path) -> None:
    """A failing test must not leave the example's services running."""
    from agentloop.config import load_config
    from agentloop.sandbox.factory import open_backend

    for repo in tmp_path.glob("loop-demo-*/shop"):
        backend = open_backend(repo, load_config(repo))
        if backend.baseline_status()["up"] or backend.list():
            backend.baseline_down()


def test_langgraph_dev_serves_the_loop_and_steps_a_run_to_a_pull_request(server: str, tmp_path: Path) -> None:
    from langgraph_sdk import get_sync_client

    client = get_sync_client(url=server, timeout=httpx.Timeout(300.0))
    assistant = client.assistants.search(graph_id="loop")[0]["assistant_id"]
    schemas = httpx.get(f"{server}/assistants/{assistant}/schemas", timeout=60)
    assert schemas.status_code == 200, schemas.text
    assert {"repo", "issue", "model", "max_iterations"} <= set(schemas.json()["context_schema"]["properties"])
    assert "attempts" in schemas.json()["state_schema"]["properties"]

    thread = client.threads.create()["thread_id"]
    # step: the run pauses before deploy, with its worktree and branch made and the first edit done
    client.runs.wait(thread, assistant, input={}, context={"issue": "#1"}, interrupt_before=["deploy"])
    paused = client.threads.get_state(thread)
    assert paused["next"] == ["deploy"]
    values = paused["values"]
    repo = Path(values["repo"])
    assert repo.is_relative_to(tmp_path) and values["branch"].startswith("loop/1-")
    assert values["model"].startswith("replay:") and values["attempts"][0]["changed_files"]

    # continue from the checkpoint to the end
    client.runs.wait(thread, assistant, input=None)
    final = client.threads.get_state(thread)
    assert final["next"] == []
    values = final["values"]
    assert values["status"] == "published", values.get("error")
    assert [attempt["verdict"]["passed"] for attempt in values["attempts"]] == [False, True]
    pull = values["pull_request"]
    assert pull["branch"] == values["branch"] and Path(pull["url"].removeprefix("file://")).is_file()
    assert "Fixes #1" in Path(pull["url"].removeprefix("file://")).read_text()

    # the run's record says the same, and the sandbox and the baseline it started are gone
    record = json.loads((repo / ".loop" / "runs" / values["run_id"] / "run.json").read_text())
    assert (record["status"], record["pull_request"]) == ("published", pull["url"])
    from agentloop.config import load_config
    from agentloop.sandbox.factory import open_backend

    backend = open_backend(repo, load_config(repo))
    assert backend.baseline_status()["up"] is False and backend.list() == []
