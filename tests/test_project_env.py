"""The project's own environment: setup steps run confined and cached, the project's interpreter (never
loop's) for suites, services and the agent's shell, top-level and per-suite `env`."""

from __future__ import annotations

import json
import site
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from looptest import MakeRepo, git

from agentloop import git as loopgit
from agentloop import project_env
from agentloop.agent.policy import ConfinedShell
from agentloop.config import load_config
from agentloop.confine import project_confinement
from agentloop.project_env import SetupFailed
from agentloop.validation.base_results import config_hash
from agentloop.validation.suites import run_suite, suite_env

# The project's virtualenv: made without pip (fast, offline), its one dependency `greet` copied in, and
# pytest reachable through a .pth file (standing for a wheel the project would install).
_SETUP = ("python3 -m venv --without-pip .venv && .venv/bin/python -c \"import pathlib, shutil, site; "
          "sp = pathlib.Path(site.getsitepackages()[0]); shutil.copytree('vendor/greet', sp / 'greet'); "
          "(sp / 'tools.pth').write_text(pathlib.Path('tools.txt').read_text())\" && "
          "printf '#!%s/.venv/bin/python\\nimport greet; print(greet.hello())\\n' \"$PWD\" > .venv/bin/greet-cli && "
          "chmod +x .venv/bin/greet-cli")

_TEST = """\
import os, sys
from pathlib import Path
import greet

def test_runs_in_the_projects_own_virtualenv():
    assert Path(sys.prefix) == Path.cwd() / ".venv"
    assert greet.hello() == "hello from the project's venv"

def test_sees_the_project_and_suite_env():
    assert os.environ["SHOP_MODE"] == "suite"
    assert os.environ["SHARED"] == "top"
"""


def _project(make_repo: MakeRepo, *, setup: str = _SETUP, extra: dict[str, object] | None = None) -> Path:
    config: dict[str, object] = {
        "setup": [{"run": setup, "inputs": ["requirements.txt"], "creates": [".venv"]}],
        "path": [".venv/bin"],
        "env": {"SHARED": "top", "SHOP_MODE": "top"},
        "services": {},
        "validate": [{"suite": "unit", "run": "python3 -m pytest -q tests", "env": {"SHOP_MODE": "suite"}}],
        **(extra or {}),
    }
    files = {
        "requirements.txt": "greet==1.0\n",
        "tools.txt": site.getsitepackages()[0] + "\n",
        "vendor/greet/__init__.py": "def hello():\n    return \"hello from the project's venv\"\n",
        "tests/test_greet.py": _TEST,
        ".gitignore": "",
    }
    repo = make_repo(files, config=None)
    (repo / "loop.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "loop.yaml")
    return repo


def _checkout(repo: Path, name: str) -> Path:
    path = repo.parent / name
    loopgit.add_worktree(loopgit.open_repo(repo), path, branch=None, commit=git(repo, "rev-parse", "HEAD").strip())
    return path


@pytest.fixture
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("LOOP_SETUP_CACHE", raising=False)  # the per-repository cache under the state dir
    return tmp_path


def test_suite_runs_under_the_projects_interpreter_with_its_env(make_repo: MakeRepo, own_cache: Path,
                                                                tmp_path: Path) -> None:
    repo = _project(make_repo)
    config = load_config(repo)
    confinement = project_confinement(config)
    tree = _checkout(repo, "tree")
    done = project_env.prepare(tree, repo=repo, confinement=confinement, share=True)
    assert [d.how for d in done] == ["ran"]
    result = run_suite(config.suites[0], cwd=tree, env=suite_env(None), out_dir=tmp_path / "out",
                       confinement=confinement)
    assert result.error is None, result.output_tail
    assert sorted(t.outcome for t in result.tests) == ["passed", "passed"]
    # what setup made is not part of the change
    assert loopgit.changed_files(loopgit.Worktree(repo, tree), "HEAD") == []


def test_second_checkout_restores_from_the_cache_and_works_there(make_repo: MakeRepo, own_cache: Path,
                                                                 tmp_path: Path) -> None:
    repo = _project(make_repo)
    confinement = project_confinement(load_config(repo))
    first, second = _checkout(repo, "first"), _checkout(repo, "second")
    assert [d.how for d in project_env.prepare(first, repo=repo, confinement=confinement, share=True)] == ["ran"]
    assert [d.how for d in project_env.prepare(second, repo=repo, confinement=confinement, share=True)] == ["restored"]
    assert [d.how for d in project_env.prepare(second, repo=repo, confinement=confinement, share=True)] == ["installed"]
    # restored scripts point at their new home, not at the checkout the venv was made in
    script = (second / ".venv" / "bin" / "greet-cli").read_text()
    assert script.startswith(f"#!{second}/.venv/bin/python")
    ran = subprocess.run([str(second / ".venv" / "bin" / "greet-cli")], capture_output=True, text=True, check=True)
    assert ran.stdout.strip() == "hello from the project's venv"


def test_changed_inputs_run_the_step_again_and_an_agents_checkout_is_never_stored(
        make_repo: MakeRepo, own_cache: Path, tmp_path: Path) -> None:
    repo = _project(make_repo)
    confinement = project_confinement(load_config(repo))
    tree = _checkout(repo, "tree")
    project_env.prepare(tree, repo=repo, confinement=confinement, share=True)
    cache = project_env.cache_root(loopgit.common_dir(repo) / "loop")
    entries = {p.name for p in cache.iterdir() if p.is_dir()}
    (tree / "requirements.txt").write_text("greet==2.0\n")  # the agent edits a lockfile
    assert [d.how for d in project_env.prepare(tree, repo=repo, confinement=confinement, share=False)] == ["ran"]
    assert {p.name for p in cache.iterdir() if p.is_dir()} == entries  # nothing stored from the agent's tree


def test_loops_own_interpreter_is_not_on_the_projects_path(make_repo: MakeRepo, own_cache: Path,
                                                           tmp_path: Path) -> None:
    repo = _project(make_repo, extra={"path": []})
    config = load_config(repo)
    shell = ConfinedShell(repo, config.policy, repo=repo, project=project_env.ProjectEnv.of(config))
    try:
        seen = shell.run("echo $PATH; command -v python3 || true").output
    finally:
        shell.close()
    assert str(Path(sys.prefix) / "bin") not in seen
    assert "SHARED" not in seen


def test_agent_shell_gets_the_project_path_and_env(make_repo: MakeRepo, own_cache: Path) -> None:
    repo = _project(make_repo)
    config = load_config(repo)
    tree = _checkout(repo, "tree")
    project_env.prepare(tree, repo=repo, confinement=project_confinement(config), share=True)
    shell = ConfinedShell(tree, config.policy, repo=repo, project=project_env.ProjectEnv.of(config))
    try:
        seen = shell.run("python3 -c 'import greet, sys; print(sys.prefix)'; echo $SHARED").output.split()
    finally:
        shell.close()
    assert seen[:2] == [str(tree.resolve() / ".venv"), "top"]


def test_hostile_setup_step_is_confined(make_repo: MakeRepo, own_cache: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-api03-setup-must-not-see-this")
    outside = tmp_path / "outside.txt"
    repo = _project(make_repo, setup=f"mkdir -p .venv && env > .venv/env.txt && (echo x > {outside} || true)")
    config = load_config(repo)
    tree = _checkout(repo, "tree")
    project_env.prepare(tree, repo=repo, confinement=project_confinement(config), share=True)
    assert "sk-ant" not in (tree / ".venv" / "env.txt").read_text()
    if project_confinement(config).confined:
        assert not outside.exists()


def test_failing_setup_names_the_step_and_becomes_deploy_feedback(make_repo: MakeRepo, own_cache: Path) -> None:
    repo = _project(make_repo, setup="echo 'cannot find greet==9' >&2; exit 3")
    tree = _checkout(repo, "tree")
    with pytest.raises(SetupFailed) as failed:
        project_env.prepare(tree, repo=repo, confinement=project_confinement(load_config(repo)), share=True)
    assert "setup[0]" in str(failed.value) and "exited 3" in str(failed.value)
    assert "cannot find greet==9" in failed.value.log_tail


def test_setup_step_that_does_not_create_what_it_declares(make_repo: MakeRepo, own_cache: Path) -> None:
    repo = _project(make_repo, setup="true")
    tree = _checkout(repo, "tree")
    with pytest.raises(SetupFailed, match=r"did not create '\.venv'"):
        project_env.prepare(tree, repo=repo, confinement=project_confinement(load_config(repo)), share=True)


def test_base_results_are_keyed_by_the_project_environment(make_repo: MakeRepo) -> None:
    repo = _project(make_repo)
    config = load_config(repo)
    before = config_hash(config.suites[0], project_env.ProjectEnv.of(config))
    data = yaml.safe_load((repo / "loop.yaml").read_text())
    data["setup"][0]["run"] += " # another install"
    changed = config.model_validate(data)
    assert config_hash(changed.suites[0], project_env.ProjectEnv.of(changed)) != before


def test_bad_path_entries_are_named(make_repo: MakeRepo) -> None:
    from agentloop.errors import ConfigError
    repo = _project(make_repo, extra={"path": [".venv/bin:/usr/bin"]})
    with pytest.raises(ConfigError, match=r"path\[0\].*one directory per list entry"):
        load_config(repo)
    (repo / "loop.yaml").write_text(json.dumps({"services": {}, "path": ["../elsewhere/bin"]}))
    with pytest.raises(ConfigError, match=r"path\[0\].*leads out of the repository"):
        load_config(repo)


def test_a_symlink_planted_on_the_way_is_refused(make_repo: MakeRepo, own_cache: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    (victim / ".venv").mkdir(parents=True)
    (victim / ".venv" / "keep.txt").write_text("mine")
    data = {"services": {"api": {"path": "api", "run": "true",
                                 "setup": [{"run": "mkdir -p .venv", "creates": [".venv"]}]}}}
    repo = make_repo({"api/app.py": ""}, config=data)
    tree = _checkout(repo, "tree")
    import shutil
    shutil.rmtree(tree / "api")
    (tree / "api").symlink_to(victim)  # what an agent could leave in its worktree
    with pytest.raises(SetupFailed, match="leads out of"):
        project_env.prepare(tree, repo=repo, confinement=project_confinement(load_config(repo)), share=False)
    assert (victim / ".venv" / "keep.txt").read_text() == "mine"
