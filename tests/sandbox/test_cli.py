"""`loop sandbox ...` through typer's CliRunner against real processes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from sandbox_shop import eventually, gone, port_of
from typer.testing import CliRunner

from agentloop.cli.sandbox import app
from agentloop.sandbox.local.backend import LocalSandboxBackend


@pytest.fixture
def cli(backend: LocalSandboxBackend, shop: Path) -> Callable[..., tuple[int, str, str]]:
    """Run `loop sandbox ARGS --repo shop` against the session's baseline."""
    runner = CliRunner()

    def run(*args: str, state: Path | None = None) -> tuple[int, str, str]:
        env = {"LOOP_STATE_DIR": str(state or backend.root.parent)}
        result = runner.invoke(app, [*args, "--repo", str(shop)], env=env)
        return result.exit_code, result.stdout, result.stderr

    return run


def test_create_ls_logs_rm(cli: Callable[..., tuple[int, str, str]], fork_tree: Callable[..., Path]) -> None:
    code, out, _ = cli("create", "cli-box", "--fork", f"orders={fork_tree('cli', {})}", "--json")
    assert code == 0
    created = json.loads(out)[0]
    assert created["name"] == "cli-box" and list(created["forks"]) == ["orders"]
    code, out, _ = cli("ls", "--json")
    assert code == 0 and "cli-box" in [box["name"] for box in json.loads(out)]
    code, out, _ = cli("ls")
    assert code == 0 and "cli-box" in out and created["route_key"] in out
    out = eventually(lambda: cli("logs", "cli-box", "orders", "--since", "1h")[1], "orders listening on")
    assert "orders listening on" in out
    code, out, _ = cli("logs", "cli-box", "orders", "--until", "2000-01-01T00:00:00")
    assert code == 0 and out == ""
    code, out, _ = cli("rm", "cli-box")
    assert code == 0 and "removed cli-box" in out
    fork = created["forks"]["orders"]
    assert gone(fork["pid"], port_of(fork["url"]))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("rm", "ghost"), "error: no sandbox named 'ghost'"),
        (("logs", "ghost", "orders"), "error: no sandbox named 'ghost'"),
        (("logs", "baseline", "orders", "--since", "yesterday"), "error: --since 'yesterday': use an ISO time"),
        (("create", "x", "--fork", "orders=/no/such/dir"), "is not a directory"),
        (("create", "x", "--fork", "payments"), "error: cannot fork payments"),
    ],
)
def test_errors_are_one_line_with_exit_code_2(
    cli: Callable[..., tuple[int, str, str]], args: tuple[str, ...], message: str
) -> None:
    code, _, err = cli(*args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_baseline_up_status_down_leaves_nothing(
    cli: Callable[..., tuple[int, str, str]], shop: Path, tmp_path: Path
) -> None:
    state = tmp_path / "own-state"
    code, out, _ = cli("baseline", "up", state=state)
    assert code == 0 and "baseline started" in out
    assert "baseline already up" in cli("baseline", "up", state=state)[1]
    code, out, _ = cli("baseline", "status", "--json", state=state)
    status = json.loads(out)
    assert status["up"] is True and Path(status["worktree"]) != shop
    services = status["services"]
    assert set(services) == {"web", "orders", "inventory"} and all(s["alive"] for s in services.values())
    code, out, _ = cli("baseline", "down", state=state)
    assert code == 0
    assert all(gone(s["pid"], port_of(s["upstream"])) and gone(None, port_of(s["url"])) for s in services.values())
    assert gone(status["router_pid"], None) and not Path(status["worktree"]).exists()
    assert json.loads(cli("baseline", "status", "--json", state=state)[1]) == {"up": False}
