"""Fork Deployments get the readiness loop.yaml describes (an httpGet on `health`, else a tcpSocket on the
container's port), and `{services.NAME.host}` / `.port` are the fully qualified Service host and its port."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from agentloop.config import parse_config
from agentloop.sandbox.kubernetes import manifests as mf
from agentloop.sandbox.kubernetes.backend import KubernetesSandboxBackend


def _container(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    deployment = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == name)
    return dict(deployment["spec"]["template"]["spec"]["containers"][0])


def test_forks_are_ready_by_tcp_without_health_and_by_http_with_it(repo: Path, tmp_path: Path) -> None:
    config = parse_config({
        "services": {
            "reviews": {"path": "services/reviews", "run": "python app.py --port {port}",
                        "env": {"RATINGS_HOST": "{services.ratings.host}", "RATINGS_PORT": "{services.ratings.port}",
                                "RATINGS_URL": "{services.ratings.url}"}},
            "ratings": {"path": "services/ratings", "run": "python app.py --port {port}", "health": "/health"},
        },
        "sandbox": {"backend": "kubernetes", "kubernetes": {
            "namespace": "shop", "manifests": ["k8s/bookinfo.yaml"], "kubeconfig": str(tmp_path / "missing"),
            "service_map": {"reviews": {"service": "reviews"}}}},
    }, Path("loop.yaml"))
    objects = KubernetesSandboxBackend(repo, config, tmp_path / "state").plan("fix-1", {"reviews": repo, "ratings": repo})

    reviews = _container(objects, "reviews-v1-loop-fix-1")
    assert reviews["readinessProbe"] == {"tcpSocket": {"port": 9080}}
    assert _container(objects, "ratings-v1-loop-fix-1")["readinessProbe"] == {"httpGet": {"path": "/health", "port": 9080}}
    env = {e["name"]: e["value"] for e in reviews["env"]}
    assert env["RATINGS_HOST"] == "ratings.shop.svc.cluster.local" and env["RATINGS_PORT"] == "9080"
    assert env["RATINGS_URL"] == f"http://{env['RATINGS_HOST']}:{env['RATINGS_PORT']}"


BASE: dict[str, Any] = {
    "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "api", "labels": {"app": "api"}},
    "spec": {"selector": {"matchLabels": {"app": "api"}}, "template": {
        "metadata": {"labels": {"app": "api"}},
        "spec": {"containers": [{"name": "api", "image": "api:1", "ports": [{"containerPort": 8000}],
                                 "readinessProbe": {"exec": {"command": ["check"]}, "periodSeconds": 7}}]}}},
}


def _fork(base: dict[str, Any], health: str | None) -> dict[str, Any]:
    spec = mf.ForkSpec(sandbox="s", service="api", route_key="k", image="api:2", code_hash="h", env={},
                       created_at=0, expires_at=1, namespace="default", health=health)
    return dict(mf.fork_deployment(copy.deepcopy(base), spec, selectors=[])["spec"]["template"]["spec"]["containers"][0])


@pytest.mark.parametrize(("health", "probe"), [
    (None, {"exec": {"command": ["check"]}, "periodSeconds": 7}),  # the baseline's own probe is kept
    ("/ready", {"httpGet": {"path": "/ready", "port": 8000}, "periodSeconds": 7}),  # health given: it decides
])
def test_the_baselines_probe_and_its_timings(health: str | None, probe: dict[str, Any]) -> None:
    assert _fork(BASE, health)["readinessProbe"] == probe


def test_no_probe_is_guessed_for_a_container_without_a_declared_port() -> None:
    bare = copy.deepcopy(BASE)
    container = bare["spec"]["template"]["spec"]["containers"][0]
    del container["ports"], container["readinessProbe"]
    assert "readinessProbe" not in _fork(bare, None) and "readinessProbe" not in _fork(bare, "/ready")
