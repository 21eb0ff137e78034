"""SIGKILL a real `loop fix` at each node start, while a fork starts, while a suite runs and during the
base run's comparison; then `loop resume`. The run publishes once, and nothing of it is left -- no process,
no listening port, no worktree -- without `loop sandbox gc`.

The kill comes from inside (`LOOP_TEST_KILL_AT`, see `agentloop.owned.kill_point`), at an exact
point, the way the OOM killer or a crash would stop it: no finally block runs.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from looptest import MakeRepo, create, git, replace, write_cassette
from test_graph import WEB_APP, WEB_TEST

from agentloop.paths import state_dir

FILES = {"web/app.py": WEB_APP, "tests/__init__.py": "", ".loop/issues/2.md": "# /hello should say hello\n"}
CONFIG = {
    "services": {"web": {"path": "web", "run": "python3 web/app.py --port {port}", "health": "/healthz",
                         "ready_timeout": 30}},
    # without the plugins of loop's own virtualenv (the project's python here) pytest starts in a tenth
    "validate": [{"suite": "integration", "run": "python3 -m pytest -q tests", "sandbox": True,
                  "env": {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}}],
    "agent": {"max_iterations": 3},
}
# the first edit adds the test only (validation fails, diagnose runs), the second fixes the service
TURNS = [[create("tests/test_web.py", WEB_TEST)], [replace("web/app.py", 'b"hi"', 'b"hello"')]]
NODES = ["intake", "edit", "deploy", "validate", "diagnose", "publish"]


def _loop(repo: Path, *args: str, kill_at: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "LOOP_TEST_KILL_AT"}
    if kill_at is not None:
        env["LOOP_TEST_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "-m", "agentloop.cli.main", *args], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=240, check=False)


def _ours(state: Path, run_id: str) -> dict[int, str]:
    """Live processes whose command line names the state dir or the run, or that run inside the state dir
    (a jailed service's own command names neither): pid -> command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if str(state) in argv or run_id in argv or cwd == str(state) or cwd.startswith(f"{state}/"):
            found[int(entry.name)] = argv
    return found


def _listening() -> dict[int, set[int]]:
    """Listening TCP port -> pids holding its socket (root reads every /proc/<pid>/fd)."""
    inodes: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                inodes[fields[9]] = int(fields[1].rsplit(":", 1)[1], 16)
    holders: dict[int, set[int]] = {port: set() for port in inodes.values()}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            links = [os.readlink(fd) for fd in (entry / "fd").iterdir()]
        except OSError:
            continue
        for link in links:
            if link.startswith("socket:[") and link[8:-1] in inodes:
                holders[inodes[link[8:-1]]].add(int(entry.name))
    return holders


def _recorded_ports(state: Path) -> set[int]:
    """Every port the registry names: the router's, the baseline's services', the forks' (healthy or not)."""
    path = state / "local" / "registry.json"
    if not path.is_file():
        return set()
    data = json.loads(path.read_text())
    ports: set[int] = set()
    if data.get("baseline"):
        ports |= set(data["baseline"]["router_ports"].values())
        ports |= {service["port"] for service in data["baseline"]["services"].values()}
    for box in data["sandboxes"].values():
        ports |= {fork["port"] for fork in [*box["forks"].values(), *box.get("starting", {}).values()]}
    return ports


class Left:
    """What the kill left: processes (pid -> command line), the registry, git's worktrees."""

    def __init__(self, repo: Path, run_id: str) -> None:
        state = state_dir(repo)
        self.processes = _ours(state, run_id)
        registry = state / "local" / "registry.json"
        self.registry = json.loads(registry.read_text()) if registry.is_file() else {}
        self.worktrees = _worktrees(repo)


def _worktrees(repo: Path) -> list[str]:
    listed = git(repo, "worktree", "list", "--porcelain")
    return [line[len("worktree "):] for line in listed.splitlines() if line.startswith("worktree ")]


def _killed_then_resumed(repo: Path, cassette: Path, kill_at: str) -> tuple[str, Left]:
    """`loop fix 2` SIGKILLed at `kill_at`, then `loop resume`: the run id and what the kill left."""
    runs = repo / ".loop" / "runs"
    before = {path.name for path in runs.iterdir()} if runs.is_dir() else set()
    killed = _loop(repo, "fix", "2", "--model", f"replay:{cassette}", kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL, f"never reached {kill_at}:\n{killed.stdout}{killed.stderr}"
    (run_id,) = {path.name for path in runs.iterdir()} - before
    state = state_dir(repo)
    left = Left(repo, run_id)
    ports = _recorded_ports(state) | {port for port, pids in _listening().items() if pids & set(left.processes)}

    resumed = _loop(repo, "resume", run_id)

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert json.loads((runs / run_id / "run.json").read_text())["status"] == "published"
    assert _ours(state, run_id) == {}, "processes of the run are still running"
    listening = _listening()
    assert [port for port in ports if port in listening and listening[port] & set(left.processes)] == []
    assert [port for port in ports if port in listening and not listening[port]] == [], "a port nobody we see holds"
    return run_id, left


def _only_the_main_checkout(repo: Path) -> None:
    assert _worktrees(repo) == [str(repo)]
    owned = state_dir(repo) / "owned"
    assert not owned.exists() or list(owned.iterdir()) == [], "a run's temporary things are still recorded"


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [*(f"node:{node}" for node in NODES), "fork", "suite", "comparison", "baseline"])
def test_a_kill_anywhere_then_resume_publishes_once_and_leaves_nothing(
    make_repo: MakeRepo, tmp_path: Path, kill_at: str,
) -> None:
    repo = make_repo(FILES, CONFIG)
    cassette = write_cassette(tmp_path / "c.json", TURNS)

    run_id, left = _killed_then_resumed(repo, cassette, kill_at)

    # the kill left the baseline running, recorded as this run's before any of it started
    assert any("agentloop.sandbox.router" in argv for argv in left.processes.values()), left.processes
    assert left.registry["baseline"]["owner_run"] == run_id
    if kill_at == "fork":  # recorded as soon as it was spawned, before it was healthy
        fork = left.registry["sandboxes"][run_id]["starting"]["web"]
        assert fork["pid"] in left.processes
    if kill_at == "comparison":  # a temporary worktree of the base commit, recorded as the run's
        state = state_dir(repo)
        known = {str(repo), str(state / "worktrees" / run_id), str(state / "local" / "baseline" / "worktree")}
        (made,) = [path for path in left.worktrees if path not in known]
        assert made.startswith(f"{state}/owned/run-{run_id}/worktrees/")
    branches = git(repo, "for-each-ref", "--format=%(refname:short)", "refs/heads/loop/").split()
    assert branches == [f"loop/2-{run_id}"]
    assert 'b"hello"' in git(repo, "show", f"loop/2-{run_id}:web/app.py")
    assert len(list((state_dir(repo) / "pulls").glob("*.json"))) == 1
    _only_the_main_checkout(repo)


@pytest.mark.slow
def test_five_runs_killed_at_random_node_starts_leave_nothing(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo = make_repo(FILES, CONFIG)
    cassette = write_cassette(tmp_path / "c.json", TURNS)
    points = [f"node:{node}" for node in random.Random(14).choices(NODES, k=5)]

    ids = [_killed_then_resumed(repo, cassette, point)[0] for point in points]

    branches = git(repo, "for-each-ref", "--format=%(refname:short)", "refs/heads/loop/").split()
    assert sorted(branches) == sorted(f"loop/2-{run_id}" for run_id in ids)
    registry = json.loads((state_dir(repo) / "local" / "registry.json").read_text())
    assert registry == {"baseline": None, "sandboxes": {}}
    _only_the_main_checkout(repo)
