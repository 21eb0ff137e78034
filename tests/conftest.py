"""Fixtures shared by every test: real git repositories in temp dirs, an isolated environment."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from looptest import GIT_ENV, MakeRepo, git

from agentloop.config import PolicyConfig
from agentloop.confine import Confinement

_BWRAP_USABLE = Confinement(PolicyConfig()).confined


# Python with pytest for the test repositories' own suites: a project's toolchain, declared with `path:`
# (loop never lends its own interpreter to a project; tests/test_project_env.py shows that).
PROJECT_PYTHON_BIN = str(Path(sys.prefix) / "bin")


@pytest.fixture(scope="session")
def _shared_setup_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One setup cache for the whole session and every xdist worker: the bundled example's virtualenv
    is made once, then restored (LOOP_SETUP_CACHE is how a team shares one on purpose)."""
    root = tmp_path_factory.getbasetemp()
    shared = (root.parent if root.name.startswith("popen-gw") else root) / "setup-cache"
    shared.mkdir(exist_ok=True)
    return shared


@pytest.fixture(autouse=True)
def _reap_what_the_test_left(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test with a tmp_path, every process whose command line names that folder is killed: a baseline
    or a sandbox kept on purpose (a review sandbox has no owner process) must not outlive its test and pile up
    on the machine. Tests that check nothing is left assert it before this runs, so no leak is hidden."""
    if "tmp_path" not in request.fixturenames:
        yield
        return
    folder = str(request.getfixturevalue("tmp_path"))  # asked now, so it is torn down after this fixture
    yield
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            args = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if folder not in args:
                continue
            group = os.getpgid(int(entry.name))
            if group == os.getpgrp():  # started in pytest's own group: that one process only, never the group
                os.kill(int(entry.name), signal.SIGKILL)
            else:
                os.killpg(group, signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, _shared_setup_cache: Path) -> None:
    """No test sees the developer's keys or loop settings."""
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "LOOP_MODEL", "LOOP_RUNS_DIR", "LOOP_STATE_DIR",
                 "GITHUB_TOKEN", "GITHUB_API_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LOOP_SETUP_CACHE", str(_shared_setup_cache))
    for name, value in GIT_ENV.items():
        monkeypatch.setenv(name, value)
    if _BWRAP_USABLE:
        monkeypatch.delenv("LOOP_ALLOW_UNCONFINED", raising=False)
    else:  # the confinement tests skip; the rest run unconfined, as a user who opted in would
        monkeypatch.setenv("LOOP_ALLOW_UNCONFINED", "1")


@pytest.fixture
def make_repo(tmp_path: Path) -> Iterator[MakeRepo]:
    """make_repo(files={path: text}, config={...}) -> a git repo on branch main with one commit."""
    made: list[Path] = []

    def _make(files: dict[str, str], config: dict[str, Any] | None = None, name: str = "repo") -> Path:
        repo = tmp_path / name
        repo.mkdir()
        for rel, text in files.items():
            path = repo / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        if config is not None:
            config = {"path": [PROJECT_PYTHON_BIN], **config}
            # The test repositories' suites need bare pytest: this venv's plugins (langsmith, anyio, xdist...)
            # would cost 1.5 s of CPU per pytest start, hundreds of times in a session.
            config["env"] = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", **(config.get("env") or {})}
            (repo / "loop.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        git(repo, "init", "-q", "-b", "main")
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "initial")
        made.append(repo)
        return repo

    yield _make
    for repo in made:
        _stop_everything(repo)


def _stop_everything(repo: Path) -> None:
    """Whatever a failing test left running in this repository's sandboxes goes away."""
    if not (repo / ".git" / "loop").exists() or not (repo / "loop.yaml").exists():
        return
    from agentloop.config import load_config
    from agentloop.errors import LoopError
    from agentloop.sandbox.factory import open_backend

    try:
        backend = open_backend(repo, load_config(repo))
        for sandbox in backend.list():
            backend.remove(sandbox.name)
        backend.baseline_down()
    except LoopError:
        pass




# End-to-end files whose tests each drive whole runs: started first, so that no worker is left alone with
# one of them at the end of the session (order only; nothing here depends on how long anything takes).
_LONG_FIRST = ("test_demo.py", "test_kill_points.py", "test_kill_side_effects.py", "test_serve_kill.py",
               "test_first_contact.py", "test_batch_local.py", "test_batch_base_results.py", "test_resume.py",
               "test_secrets.py", "test_evidence_truth.py", "test_real_shapes.py", "test_langgraph_dev.py",
               "test_webhook_durability.py", "test_doctor.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.path.name not in _LONG_FIRST)  # stable: the rest keep their order
