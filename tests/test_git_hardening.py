"""Loop's own git never runs what a run's worktree controls.

A hostile agent can rewrite everything in its worktree, the `.git` entry included. These tests plant
what it would plant -- a `.git` that is a repository of its own with an fsmonitor, a post-commit hook
and a diff driver; a `.git` naming another worktree; a nested repository with a clean filter; GIT_*
variables in loop's environment -- first show that plain git in the worktree does run the plant, then
that loop's git refuses or ignores it. Real git, real worktrees, a real `loop fix` run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from looptest import MakeRepo, bash, git, write_cassette
from test_graph import CALC_CONFIG, CALC_FILES

from agentloop import git as loopgit
from agentloop.errors import WorktreeTampered
from agentloop.paths import repo_root, worktrees_dir
from agentloop.snapshot import snapshot_tree

STOPS = "the run stops because the worktree's .git was changed"


def _script(tmp_path: Path) -> tuple[Path, Path]:
    """An executable that leaves a marker each time it runs, and the marker's path."""
    marker = tmp_path / "marker"
    script = tmp_path / "plant.sh"
    script.write_text(f'#!/bin/sh\necho "ran: $0 $*" >> {marker}\n', encoding="utf-8")
    script.chmod(0o755)
    return script, marker


def _worktree(repo: Path, name: str = "r-1") -> tuple[loopgit.Worktree, str]:
    """A run's worktree, made as the intake node makes it."""
    user_repo = loopgit.open_repo(repo)
    base = loopgit.resolve_base(user_repo, "main")
    path = repo / ".git" / "loop" / "worktrees" / name
    loopgit.add_worktree(user_repo, path, branch=f"loop/1-{name}", commit=base)
    return loopgit.Worktree(repo, path), base


def _plain_git(path: Path, *args: str) -> None:
    """What a tool that trusts the worktree would run (git discovering `.git` from the directory)."""
    subprocess.run(["git", "-c", "safe.directory=*", *args], cwd=path, capture_output=True, check=False)


def _plant_repository(path: Path, script: Path) -> None:
    """`.git` becomes a repository of the agent's own whose config and hooks run `script`."""
    (path / ".git").unlink()
    git(path, "init", "-q")
    git(path, "add", "-A")
    git(path, "commit", "-qm", "planted")
    git(path, "config", "core.fsmonitor", str(script))
    git(path, "config", "diff.plant.command", str(script))
    git(path, "config", "diff.plant.textconv", str(script))
    hook = path / ".git" / "hooks" / "post-commit"
    hook.write_text(script.read_text(encoding="utf-8"), encoding="utf-8")
    hook.chmod(0o755)
    (path / ".gitattributes").write_text("* diff=plant\n", encoding="utf-8")


LOOP_CALLS: dict[str, Callable[[loopgit.Worktree, str], object]] = {
    "diff": loopgit.diff,
    "changed_files": loopgit.changed_files,
    "commit_all": lambda wt, _base: loopgit.commit_all(wt, "Fix #1"),
    "head": lambda wt, _base: loopgit.head(wt),
    "ls_files": lambda wt, _base: loopgit.ls_files(wt),
    "snapshot": lambda wt, _base: snapshot_tree(wt),
}


@pytest.mark.parametrize("call", sorted(LOOP_CALLS))
def test_a_git_directory_planted_in_the_worktree_is_refused_and_never_run(
    make_repo: MakeRepo, tmp_path: Path, call: str
) -> None:
    repo = make_repo(CALC_FILES)
    worktree, base = _worktree(repo)
    script, marker = _script(tmp_path)
    _plant_repository(worktree.path, script)
    (worktree.path / "calc.py").write_text("def add(a, b):\n    return a + b\n", encoding="utf-8")
    _plain_git(worktree.path, "status")
    _plain_git(worktree.path, "diff")
    _plain_git(worktree.path, "commit", "-qam", "x")
    assert marker.read_text().count("ran:") >= 3, "the plant is live: git trusting the worktree runs it"
    marker.unlink()

    with pytest.raises(WorktreeTampered) as raised:
        LOOP_CALLS[call](worktree, base)

    assert STOPS in str(raised.value) and str(worktree.path / ".git") in str(raised.value)
    assert "is a directory" in str(raised.value) and "\n" not in str(raised.value)
    assert not marker.exists()


def _other_admin(repo: Path) -> str:
    other, _ = _worktree(repo, "r-2")
    return (other.path / ".git").read_text(encoding="utf-8")


TAMPERINGS: dict[str, Callable[[Path, Path], None]] = {
    "names another worktree's git dir": lambda path, repo: (path / ".git").write_text(_other_admin(repo)),
    "is a symlink to the file loop made": lambda path, repo: _symlinked(path),
    "is missing": lambda path, repo: (path / ".git").unlink(),
    "says more than its gitdir": lambda path, repo: (path / ".git").write_text(
        (path / ".git").read_text() + "[core]\n\tfsmonitor = /bin/true\n"),
    "is a fifo": lambda path, repo: _fifo(path),
}


def _fifo(path: Path) -> None:
    (path / ".git").unlink()
    os.mkfifo(path / ".git")


def _symlinked(path: Path) -> None:
    copy = path.parent / "copied-dot-git"
    copy.write_text((path / ".git").read_text())
    (path / ".git").unlink()
    (path / ".git").symlink_to(copy)


@pytest.mark.parametrize("how", sorted(TAMPERINGS))
def test_a_dot_git_that_is_not_the_file_loop_made_stops_the_run(make_repo: MakeRepo, how: str) -> None:
    repo = make_repo(CALC_FILES)
    worktree, base = _worktree(repo)
    assert loopgit.changed_files(worktree, base) == []  # as loop made it, it works

    TAMPERINGS[how](worktree.path, repo)

    with pytest.raises(WorktreeTampered, match=STOPS):
        loopgit.diff(worktree, base)
    with pytest.raises(WorktreeTampered, match=STOPS):
        loopgit.commit_all(worktree, "Fix #1")
    assert git(repo, "rev-list", "--count", "main..loop/1-r-1").strip() == "0"


def test_a_worktree_no_longer_registered_stops_the_run(make_repo: MakeRepo) -> None:
    repo = make_repo(CALC_FILES)
    worktree, base = _worktree(repo)
    (worktree.path / ".git").unlink()
    git(repo, "worktree", "prune")  # what another run's cleanup does to a worktree without `.git`

    with pytest.raises(WorktreeTampered, match="no worktree of .* is registered there"):
        loopgit.changed_files(worktree, base)


def test_command_running_settings_are_ignored_for_an_intact_worktree(make_repo: MakeRepo, tmp_path: Path) -> None:
    """The worktree's `.git` is the one loop made, but settings that run commands are everywhere: the
    repository's config (fsmonitor, a diff driver the agent's .gitattributes selects), its hooks, and a
    nested repository the agent made, whose own config has a clean filter."""
    repo = make_repo(CALC_FILES)
    worktree, base = _worktree(repo)
    script, marker = _script(tmp_path)
    git(repo, "config", "core.fsmonitor", str(script))
    git(repo, "config", "diff.plant.command", str(script))
    for hook in ("pre-commit", "post-commit", "post-index-change"):
        (repo / ".git" / "hooks" / hook).write_text(script.read_text())
        (repo / ".git" / "hooks" / hook).chmod(0o755)
    (worktree.path / ".gitattributes").write_text("*.py diff=plant\n")
    (worktree.path / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    nested = worktree.path / "vendor" / "lib"
    nested.mkdir(parents=True)
    git(nested, "init", "-q")
    (nested / "f.txt").write_text("f\n")
    (nested / ".gitattributes").write_text("* filter=plant\n")
    git(nested, "config", "filter.plant.clean", f"{script} %f; cat")
    git(nested, "add", "-A")
    git(nested, "commit", "-qm", "nested")
    marker.unlink()
    _plain_git(worktree.path, "add", "-A", "--intent-to-add")
    os.utime(nested / "f.txt", (1, 1))  # stat-dirty: `git status` inside the nested repository re-cleans it
    _plain_git(worktree.path, "diff", base)
    ran = marker.read_text()
    assert "calc.py" in ran and "f.txt" in ran, "the settings are live: plain git runs the diff driver and the filter"
    marker.unlink()

    os.utime(nested / "f.txt", (2, 2))
    patch = loopgit.diff(worktree, base)
    changed = loopgit.changed_files(worktree, base)
    head = loopgit.commit_all(worktree, "Fix #1")

    assert "+    return a + b" in patch, "a real diff, not a driver's output"
    assert {"calc.py", ".gitattributes", "vendor/lib"} <= set(changed)
    assert git(repo, "rev-parse", "loop/1-r-1").strip() == head != base
    assert not marker.exists()


def test_git_variables_loop_inherited_do_not_redirect_its_git(
    make_repo: MakeRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = make_repo(CALC_FILES)
    other = make_repo({"other.txt": "another repository\n"}, name="other")
    worktree, base = _worktree(repo)
    (worktree.path / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    script, marker = _script(tmp_path)
    marker.unlink(missing_ok=True)
    for name, value in {
        "GIT_DIR": str(other / ".git"), "GIT_WORK_TREE": str(other), "GIT_INDEX_FILE": str(other / ".git" / "index"),
        "GIT_EXTERNAL_DIFF": str(script), "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "core.fsmonitor",
        "GIT_CONFIG_VALUE_0": str(script), "GIT_CONFIG_PARAMETERS": f"'diff.external'='{script}'",
    }.items():
        monkeypatch.setenv(name, value)

    patch = loopgit.diff(worktree, base)
    head = loopgit.commit_all(worktree, "Fix #1")
    root, worktrees = repo_root(repo), worktrees_dir(repo)
    monkeypatch.undo()

    assert "diff --git a/calc.py b/calc.py" in patch and "other.txt" not in patch
    assert git(repo, "rev-parse", "loop/1-r-1").strip() == head
    assert root == repo.resolve() and worktrees == worktree.path.parent
    assert git(other, "rev-list", "--count", "HEAD").strip() == "1"
    assert not marker.exists()


def test_a_run_whose_agent_replaces_dot_git_stops_with_a_clear_error(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo = make_repo(CALC_FILES, {**CALC_CONFIG, "policy": {"allow_unconfined": True}})
    marker = tmp_path / "marker"
    worktree = (repo / ".git" / "loop" / "worktrees" / "r-planted").resolve()
    plant_script = worktree / ".git" / "plant.sh"
    # The agent plants its repository, arming it last so that its own git never runs the plant.
    plant = (
        "rm .git && git init -q && git add -A && "
        f"printf '#!/bin/sh\\necho \"ran: $0\" >> {marker}\\n' > .git/plant.sh && chmod +x .git/plant.sh && "
        "mkdir -p .git/hooks && cp .git/plant.sh .git/hooks/post-commit && printf '* diff=plant\\n' > .gitattributes && "
        f"git config diff.plant.command {plant_script} && git config core.fsmonitor {plant_script}"
    )
    cassette = write_cassette(tmp_path / "c.json", [[bash(plant)]])

    done = subprocess.run(
        [sys.executable, "-m", "agentloop.cli.main", "fix", "1", "--model", f"replay:{cassette}", "--run-id", "r-planted"],
        cwd=repo, capture_output=True, text=True, timeout=300, check=False,
    )

    run_dir = repo / ".loop" / "runs" / "r-planted"
    assert (worktree / ".git").is_dir(), f"the agent's command did not run: {done.stderr}"
    assert done.returncode == 3, done.stdout + done.stderr
    [line] = [line for line in done.stderr.splitlines() if STOPS in line]
    assert str(worktree / ".git") in line and "is a directory" in line
    summary = json.loads((run_dir / "run.json").read_text())
    assert summary["status"] == "error" and STOPS in summary["message"] and summary.get("pull_request") is None
    events = [json.loads(e) for e in (run_dir / "events.jsonl").read_text().splitlines()]
    [stopped] = [e for e in events if e["node"] == "edit" and e["event"] == "end"]
    assert stopped["outcome"] == "error: WorktreeTampered" and STOPS in stopped["error"]
    assert not [e for e in events if e["node"] in ("deploy", "validate", "publish")]
    assert not list((repo / ".git" / "loop" / "pulls").glob("*.json"))
    assert git(repo, "rev-list", "--count", f"main..loop/1-{run_dir.name}").strip() == "0"
    assert not marker.exists(), "loop ran the planted repository's code"
    # the plant was real: git that trusts the worktree's `.git` runs it
    _plain_git(worktree, "status")
    assert marker.exists()


def test_a_scratch_worktree_whose_dot_git_was_replaced_is_still_removed(make_repo: MakeRepo, tmp_path: Path) -> None:
    """The base run runs the agent's tests in a scratch worktree; whatever they did to its
    `.git`, loop's cleanup removes it (git itself refuses such a worktree)."""
    repo = make_repo(CALC_FILES)
    user_repo = loopgit.open_repo(repo)
    path = loopgit.add_worktree(user_repo, tmp_path / "scratch" / "tree", branch=None, commit="main")
    (path / ".git").unlink()
    git(path, "init", "-q")

    loopgit.remove_worktree(user_repo, path)

    assert not path.exists()
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
