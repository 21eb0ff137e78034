"""What a run owns besides its sandbox (`agentloop.owned`): a killed `loop`'s jailed commands and
temporary worktrees are stopped and removed by its resume or by gc -- and nothing that is not its own is."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from looptest import MakeRepo, git

from agentloop import owned
from agentloop.errors import LoopError
from agentloop.paths import state_dir
from agentloop.processes import record_of, start_time


def _child(repo: Path, body: str) -> subprocess.CompletedProcess[str]:
    """A Python process that does `body` with `repo` and `owned` in scope, and is expected to kill itself."""
    script = "import os, signal\nfrom pathlib import Path\nfrom agentloop import owned\n" \
             f"repo = Path({str(repo)!r})\n" + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)


def _alive(pid: int) -> bool:
    return start_time(pid) is not None


def _wait_gone(pid: int) -> bool:
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


def _worktrees(repo: Path) -> list[str]:
    return [line[len("worktree "):] for line in git(repo, "worktree", "list", "--porcelain").splitlines()
            if line.startswith("worktree ")]


def test_a_killed_runs_command_is_stopped_when_the_run_is_resumed(make_repo: MakeRepo, tmp_path: Path) -> None:
    """Unconfined (bubblewrap's --die-with-parent already ends a jail with its `loop`), the command's
    process group outlives the killed `loop`; the record of it is how the resumed run finds it."""
    repo = make_repo({"a.txt": "a\n"})
    killed = _child(repo, f"""
        from agentloop.config import PolicyConfig
        from agentloop.confine import Confinement
        jail = Confinement(PolicyConfig(allow_unconfined=True), use_bwrap=False)
        home = Path({str(tmp_path / "home")!r})
        with owned.owning(owned.run_owner(repo, "r-1")):
            jail.run(["/bin/sh", "-c", "sleep 300"], cwd=repo, env=jail.env({{}}, home=home), writable=[repo],
                     home=home, network=False, timeout=600, output_limit=1000,
                     on_start=lambda: os.kill(os.getpid(), signal.SIGKILL))
    """)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (record,) = (state_dir(repo) / "owned" / "run-r-1" / "groups").glob("*.json")
    leader = int(record.stem)
    assert _alive(leader), "the command outlived its loop (what this record is for)"

    with owned.owning(owned.run_owner(repo, "r-1")):  # what `loop resume r-1` does first
        assert not _alive(leader)
    assert not (state_dir(repo) / "owned" / "run-r-1").exists()


def test_a_recorded_pid_that_is_now_another_process_is_never_killed(make_repo: MakeRepo) -> None:
    repo = make_repo({"a.txt": "a\n"})
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    ours = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        groups = state_dir(repo) / "owned" / "run-r-2" / "groups"
        groups.mkdir(parents=True)
        # the kernel gave the recorded pid to another process since: its start time differs
        reused = record_of(stranger.pid).model_copy(update={"start_time": "1"})
        (groups / f"{stranger.pid}.json").write_text(reused.model_dump_json())
        (groups / f"{ours.pid}.json").write_text(record_of(ours.pid).model_dump_json())

        released = owned.release(owned.run_owner(repo, "r-2"))

        assert released == [("process group", str(ours.pid))]
        assert ours.wait(timeout=10) == -signal.SIGKILL
        assert stranger.poll() is None, "a process that is not the run's was signalled"
    finally:
        for proc in (stranger, ours):
            proc.kill()
            proc.wait()


def test_release_removes_links_and_never_what_they_point_at(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo = make_repo({"a.txt": "a\n"})
    outside = tmp_path / "outside"
    (outside / "tree").mkdir(parents=True)
    (outside / "tree" / "keep.txt").write_text("mine\n")
    root = state_dir(repo) / "owned"
    (root / "run-r-3" / "worktrees").mkdir(parents=True)
    (root / "run-r-3" / "worktrees" / "base-x").symlink_to(outside)  # a planted worktree folder
    (root / "run-r-4").symlink_to(outside)  # a planted owner folder

    owned.release(owned.run_owner(repo, "r-3"))
    owned.release(owned.run_owner(repo, "r-4"))

    assert (outside / "tree" / "keep.txt").read_text() == "mine\n"
    assert not (root / "run-r-3").exists() and not (root / "run-r-4").is_symlink()


def test_gc_removes_the_worktree_of_a_killed_process_and_not_a_live_ones(make_repo: MakeRepo) -> None:
    repo = make_repo({"a.txt": "a\n"})
    head = git(repo, "rev-parse", "HEAD").strip()
    killed = _child(repo, f"""
        with owned.scratch_worktree(repo, {head!r}, prefix="verify-") as tree:
            print(tree, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = killed.stdout.strip()
    assert left in _worktrees(repo) and left.startswith(str(state_dir(repo) / "owned")), "made under the state dir"

    with owned.scratch_worktree(repo, head, prefix="base-") as mine:
        found = owned.release_orphans(repo)
        assert [kind for kind, _, _ in found] == ["worktree"] and found[0][1] == left
        assert "is gone" in found[0][2]
        assert _worktrees(repo) == [str(repo), str(mine)], "this live process's worktree stays"
    assert _worktrees(repo) == [str(repo)]


def test_loop_sandbox_gc_names_what_a_killed_loop_left(make_repo: MakeRepo) -> None:
    repo = make_repo({"a.txt": "a\n"}, {"services": {}, "validate": []})
    head = git(repo, "rev-parse", "HEAD").strip()
    killed = _child(repo, f"""
        with owned.scratch_worktree(repo, {head!r}, prefix="verify-") as tree:
            print(tree, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    left = killed.stdout.strip()

    dry = subprocess.run([sys.executable, "-m", "agentloop.cli.main", "sandbox", "gc", "--dry-run"], cwd=repo,
                         capture_output=True, text=True, timeout=120, check=False)
    assert dry.returncode == 0, dry.stderr
    assert left in _worktrees(repo) and "would remove leftovers" in dry.stdout
    done = subprocess.run([sys.executable, "-m", "agentloop.cli.main", "sandbox", "gc"], cwd=repo, capture_output=True,
                          text=True, timeout=120, check=False)

    assert done.returncode == 0, done.stderr
    assert f"removed worktree {left} (its process " in done.stdout
    assert _worktrees(repo) == [str(repo)]
    assert not (state_dir(repo) / "owned").exists() or list((state_dir(repo) / "owned").iterdir()) == []


def test_a_run_is_not_taken_over_while_its_process_lives(make_repo: MakeRepo) -> None:
    repo = make_repo({"a.txt": "a\n"})
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        root = state_dir(repo) / "owned" / "run-r-5"
        root.mkdir(parents=True)
        (root / "owner.json").write_text(record_of(other.pid).model_dump_json())
        with pytest.raises(LoopError, match=f"run r-5 is still running \\(pid {other.pid}\\)"), \
                owned.owning(owned.run_owner(repo, "r-5")):
            pass
        assert (root / "owner.json").is_file()
    finally:
        other.kill()
        other.wait()


def test_a_bad_run_id_is_refused_before_any_path_is_made(make_repo: MakeRepo) -> None:
    repo = make_repo({"a.txt": "a\n"})
    with pytest.raises(LoopError, match=r"run id '\.\./x'"):
        owned.run_owner(repo, "../x")
    assert os.path.exists(state_dir(repo))  # made by state_dir itself; nothing under it for the bad id
    assert not (state_dir(repo) / "owned").exists()


def test_a_killed_loops_index_lock_in_the_run_worktree_is_cleared_on_resume(make_repo: MakeRepo) -> None:
    """A `loop` SIGKILLed while git wrote the run worktree's index (the commit before validating) left
    `index.lock`; the resumed run can commit again, and a live owner's lock is never touched."""
    repo = make_repo({"a.txt": "a\n"})
    worktree = state_dir(repo) / "worktrees" / "r-6"
    git(repo, "worktree", "add", "-q", "-b", "loop/1-r-6", str(worktree))
    lock = Path(git(worktree, "rev-parse", "--absolute-git-dir").strip()) / "index.lock"
    lock.write_text("")
    dead = subprocess.Popen(["true"], start_new_session=True)
    dead.wait()
    root = state_dir(repo) / "owned" / "run-r-6"
    root.mkdir(parents=True)
    (root / "owner.json").write_text(record_of(dead.pid).model_dump_json())
    with pytest.raises(subprocess.CalledProcessError):
        git(worktree, "add", "a.txt")  # what the resumed run's commit met

    with owned.owning(owned.run_owner(repo, "r-6")):  # what `loop resume r-6` does first
        assert not lock.exists()
        (worktree / "a.txt").write_text("b\n")
        git(worktree, "add", "a.txt")
