"""Optional capabilities of backends, forges and model clients, as a user meets them: a backend or forge that
lacks one gives the clear error it always gave, one that has it is used, and each of loop's own
implementations declares what it has."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from looptest import MakeRepo, write_cassette
from typer.testing import CliRunner

from agentloop.agent.base import Seekable
from agentloop.agent.replay import RecordingModel, ReplayModel
from agentloop.cli import sandbox as sandbox_cli
from agentloop.config import parse_config
from agentloop.forge.base import HoldsSecrets, ListsIssues
from agentloop.forge.github import GitHubForge
from agentloop.forge.local import LocalForge
from agentloop.sandbox.base import Detachable, Plannable
from agentloop.sandbox.local.backend import LocalSandboxBackend

SERVICES = {"services": {"web": {"path": "web", "run": "python3 -m http.server {port}"}}}


def test_each_implementation_declares_what_it_can_do(make_repo: MakeRepo, tmp_path: Path) -> None:
    pytest.importorskip("kubernetes")
    from agentloop.sandbox.kubernetes.backend import KubernetesSandboxBackend

    repo = make_repo({"web/index.html": "hi"}, SERVICES)
    config = parse_config({**SERVICES, "sandbox": {"kubernetes": {"image": "registry.local/{service}:{commit}"}}},
                          repo / "loop.yaml")
    local = LocalSandboxBackend(repo, config, tmp_path / "state")
    cluster = KubernetesSandboxBackend(repo, config, tmp_path / "state")
    assert isinstance(local, Plannable) and isinstance(local, Detachable)
    assert isinstance(cluster, Plannable) and not isinstance(cluster, Detachable)
    github = GitHubForge("owner/name", token="t0ken-for-the-test")
    assert isinstance(LocalForge(repo), ListsIssues) and not isinstance(LocalForge(repo), HoldsSecrets)
    assert isinstance(github, HoldsSecrets) and not isinstance(github, ListsIssues)
    assert isinstance(ReplayModel(write_cassette(tmp_path / "c.json", [[]])), Seekable)


def _loop(repo: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agentloop.cli.main", *args], cwd=repo, capture_output=True,
                          text=True, timeout=180, check=False, env={**os.environ, "COLUMNS": "200", **env})


def test_a_baseline_started_from_the_command_line_outlives_the_command(make_repo: MakeRepo) -> None:
    repo = make_repo({"web/index.html": "hi"}, SERVICES)
    started = _loop(repo, "sandbox", "baseline", "up")
    assert started.returncode == 0 and "baseline started" in started.stdout, started.stderr
    # `loop sandbox baseline up` has exited: gc removes what a dead process owned, and leaves this baseline
    assert _loop(repo, "sandbox", "gc").returncode == 0
    status = json.loads(_loop(repo, "sandbox", "baseline", "status", "--json").stdout)
    assert status["up"] is True and status["owner_pid"] is None
    assert _loop(repo, "sandbox", "baseline", "down").returncode == 0
    assert json.loads(_loop(repo, "sandbox", "baseline", "status", "--json").stdout) == {"up": False}


class _Unplannable:
    """A backend with only the protocol's methods: no `plan`, no `detach`."""

    name = "elsewhere"

    def baseline_status(self) -> dict[str, object]:
        return {"up": False}


def test_a_dry_run_on_a_backend_that_cannot_plan_is_one_clear_error(
        make_repo: MakeRepo, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = make_repo({"web/index.html": "hi"}, SERVICES)
    monkeypatch.setattr(sandbox_cli, "open_backend", lambda root, config: _Unplannable())
    result = CliRunner().invoke(sandbox_cli.app, ["create", "x", "--fork", "web", "--dry-run", "--repo", str(repo)])
    assert result.exit_code == 2
    assert result.stderr.strip() == ("error: --dry-run: the elsewhere backend cannot plan; "
                                     "use --backend local or --backend kubernetes")


def test_batch_by_label_on_a_forge_that_cannot_list_issues_is_one_clear_error(make_repo: MakeRepo) -> None:
    repo = make_repo({"README": "x"}, {"services": {}, "forge": {"kind": "github", "repo": "owner/name"}})
    result = _loop(repo, "batch", "--label", "bug", GITHUB_TOKEN="t0ken-for-the-test")
    assert result.returncode == 2, result.stderr
    assert " ".join(result.stderr.split()) == ("error: --label with the github forge is not supported yet; "
                                               "list the issues")


def test_batch_by_label_on_the_local_forge_lists_its_labelled_issues(make_repo: MakeRepo) -> None:
    repo = make_repo({".loop/issues/1.md": "# one\nlabels: bug\n\nbroken", ".loop/issues/2.md": "# two\n\nfine",
                      ".loop/issues/3.md": "# three\nlabels: docs, bug\n\nalso broken"}, {"services": {}})
    assert [issue.number for issue in LocalForge(repo).list_issues("bug")] == [1, 3]


class _Plain:
    """A model client without positions (the Anthropic API): nothing to seek."""

    model = "plain"

    def __init__(self, responses: list[dict[str, Any]]) -> None:
        self.responses = responses

    def create(self, request: dict[str, Any]) -> dict[str, Any]:
        return self.responses.pop(0)


def test_a_resumed_recording_goes_on_from_the_call_where_the_run_stopped(tmp_path: Path) -> None:
    source = write_cassette(tmp_path / "source.json", [[{"name": "bash", "input": {"command": f"echo {n}"}}]
                                                       for n in range(2)])
    responses = json.loads(source.read_text())["responses"]
    recorded = tmp_path / "recorded.json"
    recorded.write_text(json.dumps({"version": 1, "model": "scripted", "responses": responses[:3]}))

    # A run killed during its second edit made 3 calls, 2 of them in finished edits: it resumes at call 2.
    resumed = RecordingModel(ReplayModel(source), recorded)
    resumed.seek(2)
    assert resumed.create({}) == responses[2], "the replayed cassette goes on at call 2"
    assert json.loads(recorded.read_text())["responses"] == responses[:3], "the unfinished edit's call re-recorded"

    plain = RecordingModel(_Plain(responses[2:]), tmp_path / "plain.json")
    plain.seek(0)  # nothing to seek in the API: its next answer is simply the next one
    assert plain.create({}) == responses[2]
