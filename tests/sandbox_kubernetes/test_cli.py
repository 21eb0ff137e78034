"""`loop sandbox ...` with the kubernetes backend, through the CLI: a dry run from bookinfo-shaped
manifests with no cluster at all, and create/ls/logs/rm/gc against the loopback API server
(fake_apiserver.py, spoken to by the real `kubernetes` client through a kubeconfig file)."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from agentloop.cli.sandbox import app

from .fake_apiserver import FakeApiServer

Cli = Callable[..., tuple[int, str, str]]
SECRET = "s3cr3t-value-4711"
FORK = "reviews-v1-loop-fix-1"


def _loop_yaml(repo: Path, *, backend: str, ttl: float = 3600, **kubernetes: Any) -> None:
    settings = {"namespace": "default", "image": "registry.local/{service}:{commit}", "rollout_timeout": 5,
                "poll_interval": 0.02, "service_map": {"reviews": {"service": "reviews"}}, **kubernetes}
    data = {
        "services": {
            "reviews": {"path": "services/reviews", "run": "python app.py --port {port}",
                        "env": {"RATINGS_URL": "{services.ratings.url}", "API_TOKEN": SECRET}},
            "ratings": {"path": "services/ratings", "run": "python app.py --port {port}"},
        },
        "sandbox": {"backend": backend, "ttl": ttl, "kubernetes": settings},
    }
    (repo / "loop.yaml").write_text(yaml.safe_dump(data))


def _kubeconfig(path: Path, server: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "loopback",
        "clusters": [{"name": "loopback", "cluster": {"server": server}}],
        "users": [{"name": "tester", "user": {}}],
        "contexts": [{"name": "loopback", "context": {"cluster": "loopback", "user": "tester", "namespace": "default"}}],
    }))
    return path


@pytest.fixture
def cli(repo: Path, tmp_path: Path) -> Cli:
    runner = CliRunner()

    def run(*args: str) -> tuple[int, str, str]:
        result = runner.invoke(app, [*args, "--repo", str(repo)], env={"LOOP_STATE_DIR": str(tmp_path / "state")})
        return result.exit_code, result.stdout, result.stderr

    return run


@pytest.fixture
def on_cluster(repo: Path, tmp_path: Path, apiserver: FakeApiServer) -> Callable[..., None]:
    """Point the repository's loop.yaml at the loopback API server."""
    kubeconfig = _kubeconfig(tmp_path / "kubeconfig", apiserver.url)

    def configure(**options: Any) -> None:
        _loop_yaml(repo, backend="kubernetes", kubeconfig=str(kubeconfig), context="loopback", **options)

    return configure


def test_dry_run_prints_every_object_with_no_cluster(cli: Cli, repo: Path, tmp_path: Path) -> None:
    # loop.yaml says local; --backend overrides it. The kubeconfig does not exist: any cluster call would fail.
    _loop_yaml(repo, backend="local", manifests=["k8s/bookinfo.yaml"], kubeconfig=str(tmp_path / "missing"))
    code, out, err = cli("create", "fix-1", "--fork", f"reviews={repo}", "--fork", "ratings",
                         "--backend", "kubernetes", "--dry-run", "-o", "yaml")
    assert code == 0, err
    objects = list(yaml.safe_load_all(out))
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [
        ("Deployment", "ratings-v1-loop-fix-1"), ("Service", "ratings-v1-loop-fix-1"),
        ("Deployment", FORK), ("Service", FORK),
        ("VirtualService", "loop-ratings"), ("VirtualService", "reviews")]
    assert SECRET not in out, "secret-looking env values are masked in a dry run"
    env = {e["name"]: e["value"] for e in objects[2]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["RATINGS_URL"] == "http://ratings.default.svc.cluster.local:9080"
    assert env["LOOP_ROUTE_KEY"] == objects[2]["metadata"]["annotations"]["loop.dev/route-key"]
    # no `health` in loop.yaml: the fork is ready when its port accepts connections
    assert objects[2]["spec"]["template"]["spec"]["containers"][0]["readinessProbe"] == {"tcpSocket": {"port": 9080}}

    code, out, _ = cli("create", "fix-1", "--fork", "reviews", "--backend", "kubernetes", "--dry-run", "-o", "json")
    assert code == 0 and [o["kind"] for o in json.loads(out)] == ["Deployment", "Service", "VirtualService"]


def test_local_dry_run_says_what_it_would_start_and_starts_nothing(cli: Cli, repo: Path, tmp_path: Path) -> None:
    _loop_yaml(repo, backend="kubernetes", kubeconfig=str(tmp_path / "missing"))
    code, out, err = cli("create", "fix-1", "--fork", "reviews", "--backend", "local", "--dry-run")
    assert code == 0, err
    plan = yaml.safe_load(out)
    assert plan["backend"] == "local" and plan["baseline"].startswith("not up")
    assert [(s["service"], s["run"]) for s in plan["starts"]] == [("reviews", "python app.py --port {port}")]
    assert "free loopback port" in plan["starts"][0]["port"] and SECRET not in out
    assert plan["starts"][0]["health"].startswith("tcp"), "no `health`: ready when the port accepts connections"
    assert plan["served_by_baseline"] == ["ratings"]
    code, out, _ = cli("ls", "--backend", "local", "--json")
    assert code == 0 and json.loads(out) == []


@pytest.mark.parametrize(("args", "message"), [
    (("create", "x", "--fork", "reviews", "--backend", "nomad", "--dry-run"), "error: --backend 'nomad': use one of"),
    (("create", "x", "--fork", "reviews", "--dry-run", "-o", "toml"), "error: -o 'toml': use one of yaml, json"),
    (("create", "x", "--fork", "payments", "--dry-run"), "error: --fork payments: not a service"),
])
def test_bad_options_are_one_line_errors(cli: Cli, repo: Path, args: tuple[str, ...], message: str) -> None:
    _loop_yaml(repo, backend="local")
    code, _, err = cli(*args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_create_and_ls_json(cli: Cli, on_cluster: Callable[..., None], repo: Path) -> None:
    on_cluster()
    code, out, err = cli("create", "fix-1", "--fork", f"reviews={repo}", "--json")
    assert code == 0, err
    created = json.loads(out)[0]
    code, out, _ = cli("ls", "--json")
    assert code == 0
    [listed] = json.loads(out)
    assert listed["name"] == "fix-1" and listed["backend"] == "kubernetes"
    assert listed["route_key"] == created["route_key"]
    assert listed["forks"]["reviews"]["url"] == f"http://{FORK}.default.svc.cluster.local:9080"


def test_logs_of_a_fork_and_of_the_baseline(cli: Cli, on_cluster: Callable[..., None], repo: Path) -> None:
    on_cluster()
    assert cli("create", "fix-1", "--fork", f"reviews={repo}")[0] == 0
    code, out, err = cli("logs", "fix-1", "reviews")
    assert code == 0 and "listening" in out, err
    code, out, _ = cli("logs", "fix-1", "reviews", "--until", "2000-01-01T00:00:00")
    assert code == 0 and "listening" not in out


def test_rm_deletes_the_fork_and_its_route(cli: Cli, on_cluster: Callable[..., None], repo: Path,
                                           apiserver: FakeApiServer) -> None:
    on_cluster()
    assert cli("create", "fix-1", "--fork", f"reviews={repo}")[0] == 0
    assert apiserver.get("deployments", FORK) is not None
    code, out, _ = cli("rm", "fix-1")
    assert code == 0 and "removed fix-1" in out
    assert apiserver.get("deployments", FORK) is None and apiserver.get("services", FORK) is None
    reviews = apiserver.get("virtualservices", "reviews")
    assert reviews is not None and [r.get("name") for r in reviews["spec"]["http"]] == [None]
    code, _, err = cli("rm", "fix-1")
    assert code == 2 and "no sandbox named 'fix-1'" in err


def test_gc_removes_an_expired_sandbox(cli: Cli, on_cluster: Callable[..., None], repo: Path,
                                       apiserver: FakeApiServer) -> None:
    on_cluster(ttl=0.001)  # expired by the time `create` has waited for its rollout
    assert cli("create", "old", "--fork", f"reviews={repo}")[0] == 0
    code, out, _ = cli("gc", "--json")
    assert code == 0 and [(i["action"], i["kind"], i["what"]) for i in json.loads(out)] == [("removed", "sandbox", "old")]
    assert apiserver.get("deployments", "reviews-v1-loop-old") is None
    assert json.loads(cli("ls", "--json")[1]) == []


def test_an_unreachable_cluster_is_one_line_naming_the_server(cli: Cli, repo: Path, tmp_path: Path) -> None:
    with socket.socket() as probe:  # a loopback port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = f"http://127.0.0.1:{port}"
    _loop_yaml(repo, backend="kubernetes", kubeconfig=str(_kubeconfig(tmp_path / "kubeconfig", server)),
               context="loopback")
    code, _, err = cli("ls")
    assert code == 2 and f"Kubernetes API at {server} unreachable" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("create", "fix-1", "--fork", "reviews", "--dry-run")
    assert code == 2 and "sandbox.kubernetes.manifests" in err and "Traceback" not in err


def test_baseline_commands_describe_the_shared_namespace_and_change_nothing(
        cli: Cli, on_cluster: Callable[..., None], apiserver: FakeApiServer) -> None:
    on_cluster()
    code, out, _ = cli("baseline", "status", "--json")
    status = json.loads(out)
    assert code == 0 and status["namespace"] == "default"
    assert status["services"]["reviews"]["deployment"] == "reviews-v1" and status["services"]["reviews"]["available"]
    code, out, _ = cli("baseline", "status")
    assert code == 0 and "baseline: up in namespace default" in out and "reviews-v1" in out
    before = apiserver.items("deployments")
    code, out, _ = cli("baseline", "down")
    assert code == 0 and "nothing was changed" in out
    assert apiserver.items("deployments") == before
