"""Where a Kubernetes sandbox lands and what selects it: every object names its namespace (so a dry run
applied from a context with another default namespace still lands in the configured one), hosts are fully
qualified from it, and the forks carry none of the labels the baseline is selected by."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes import utils as k8s_utils
from typer.testing import CliRunner

from agentloop.cli.sandbox import app
from agentloop.config import LoopConfig
from agentloop.sandbox.kubernetes.backend import KubernetesSandboxBackend
from agentloop.sandbox.kubernetes.manifests import ISTIO_GROUP, ISTIO_VERSION

from .conftest import BOOKINFO
from .fake_apiserver import FakeApiServer, running

NS = "shop"
FORK = "reviews-v1-loop-fix-1"
PROXY = {"routing": "proxy", "router_image": "registry.local/agentloop:1"}
SUFFIX = f".{NS}.svc.cluster.local"


def _env(deployment: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


def _dry_run(repo: Path, tmp_path: Path, **kubernetes: Any) -> list[dict[str, Any]]:
    settings = {"namespace": NS, "image": "registry.local/{service}:{commit}", "manifests": ["k8s/bookinfo.yaml"],
                "kubeconfig": str(tmp_path / "missing"), "service_map": {"reviews": {"service": "reviews"}},
                **kubernetes}
    (repo / "loop.yaml").write_text(yaml.safe_dump({
        "services": {"reviews": {"path": "services/reviews", "run": "python app.py --port {port}",
                                 "env": {"RATINGS_URL": "{services.ratings.url}"}},
                     "ratings": {"path": "services/ratings", "run": "python app.py --port {port}"}},
        "sandbox": {"backend": "kubernetes", "kubernetes": settings}}))
    result = CliRunner().invoke(app, ["create", "fix-1", "--fork", f"reviews={repo}", "--fork", "ratings",
                                      "--dry-run", "-o", "yaml", "--repo", str(repo)],
                                env={"LOOP_STATE_DIR": str(tmp_path / "state")})
    assert result.exit_code == 0, result.stderr
    return list(yaml.safe_load_all(result.stdout))


@pytest.mark.parametrize("routing", [{}, PROXY], ids=["istio", "proxy"])
def test_a_dry_run_names_the_namespace_in_every_object_and_qualifies_every_host(
        repo: Path, tmp_path: Path, routing: dict[str, str]) -> None:
    objects = _dry_run(repo, tmp_path, **routing)

    assert [o["metadata"].get("namespace") for o in objects] == [NS] * len(objects)
    fork = next(o for o in objects if o["metadata"]["name"] == FORK)
    env = _env(fork)
    assert env["RATINGS_URL"] == f"http://ratings{SUFFIX}:9080"
    assert env["SIGNADOT_SANDBOX_NAME"] == env["LOOP_SANDBOX"] == "fix-1"
    route_key = fork["metadata"]["annotations"]["loop.dev/route-key"]
    assert env["SIGNADOT_SANDBOX_ROUTING_KEY"] == env["LOOP_ROUTE_KEY"] == route_key, "a route key is not masked"
    for vs in (o for o in objects if o["kind"] == "VirtualService"):
        loop_routes = [r for r in vs["spec"]["http"] if str(r.get("name", "")).startswith("loop-")]
        assert [r["route"][0]["destination"]["host"].endswith(SUFFIX) for r in loop_routes] == [True]
        if vs["metadata"]["name"].startswith("loop-"):  # made by loop: its hosts and default route too
            assert vs["spec"]["hosts"] == [f"ratings{SUFFIX}"]
            assert vs["spec"]["http"][-1]["route"] == [{"destination": {"host": f"ratings{SUFFIX}"}}]
    for router in (o for o in objects if o["metadata"]["name"].startswith("loop-router-")):
        router_env = _env(router)
        assert router_env["LOOP_ROUTER_DEFAULT"].endswith(f"-loop-baseline{SUFFIX}:9080")
        assert all(url.startswith("http://") and f"{SUFFIX}:" in url
                   for url in json.loads(router_env["LOOP_ROUTER_ROUTES"]).values())


def test_a_dry_run_applied_from_a_context_with_another_namespace_lands_in_the_configured_one(
        repo: Path, tmp_path: Path, apiserver: FakeApiServer, api_client: k8s.ApiClient) -> None:
    objects = _dry_run(repo, tmp_path)
    # What `kubectl apply -f -` does from a context whose namespace is "default": an object's own
    # metadata.namespace wins over the context's.
    custom = k8s.CustomObjectsApi(api_client)
    for obj in objects:
        if obj["kind"] == "VirtualService":
            custom.create_namespaced_custom_object(ISTIO_GROUP, ISTIO_VERSION, obj["metadata"].get("namespace", "default"),
                                                   "virtualservices", obj)
        else:
            k8s_utils.create_from_dict(api_client, obj, namespace="default")  # type: ignore[no-untyped-call]

    assert apiserver.get("deployments", FORK, NS) is not None and apiserver.get("services", FORK, NS) is not None
    assert apiserver.get("deployments", FORK, "default") is None
    reviews = apiserver.get("virtualservices", "reviews", NS)
    assert reviews is not None
    assert reviews["spec"]["http"][0]["route"][0]["destination"]["host"] == f"{FORK}{SUFFIX}"
    assert apiserver.get("services", FORK, NS) is not None, "the host the route names is where the route is"


@pytest.fixture
def shop_cluster() -> Iterator[FakeApiServer]:
    """The bookinfo baseline running in namespace `shop`, and nothing in `default`."""
    server = FakeApiServer()
    for document in yaml.safe_load_all(BOOKINFO.read_text()):
        server.put({**document, "metadata": {**document["metadata"], "namespace": NS}})
    yield from running(server)


@pytest.mark.parametrize("routing", [{}, PROXY], ids=["istio", "proxy"])
def test_the_baselines_label_selectors_list_only_the_baseline(
        repo: Path, tmp_path: Path, make_config: Callable[..., LoopConfig], shop_cluster: FakeApiServer,
        routing: dict[str, str]) -> None:
    api = k8s.ApiClient(k8s.Configuration(host=shop_cluster.url))
    try:
        sandboxes = KubernetesSandboxBackend(repo, make_config(namespace=NS, **routing), tmp_path / "state",
                                             api_client=api)
        info = sandboxes.create("fix-1", {"reviews": repo})
        apps, core = k8s.AppsV1Api(api), k8s.CoreV1Api(api)

        def deployments(selector: str) -> list[str]:
            found: Any = apps.list_namespaced_deployment(NS, label_selector=selector, _preload_content=False)
            return sorted(str(d["metadata"]["name"]) for d in json.loads(found.data)["items"])

        def pods(selector: str) -> list[str]:  # named by the Deployment that made them
            found: Any = core.list_namespaced_pod(NS, label_selector=selector, _preload_content=False)
            return sorted(str(p["metadata"]["labels"]["fake/owner"]) for p in json.loads(found.data)["items"])

        # `kubectl get deploy -l app=reviews`: the baseline's versions, no fork.
        assert deployments("app=reviews") == ["reviews-v1", "reviews-v2", "reviews-v3"]
        assert deployments("app=reviews,version=v1") == ["reviews-v1"]
        # The reviews Service's selector (app=reviews) picks no fork pod.
        assert FORK not in pods("app=reviews") and pods("app=reviews")
        assert deployments("loop.dev/fork-of=reviews-v1") == [FORK] == deployments("loop.dev/sandbox=fix-1")
        assert pods(f"app={FORK}") == [FORK], "the fork's pods are an app of their own"

        fork = shop_cluster.get("deployments", FORK, NS)
        assert fork is not None and fork["metadata"]["namespace"] == NS
        env = _env(fork)
        assert env["SIGNADOT_SANDBOX_ROUTING_KEY"] == info.route_key and env["SIGNADOT_SANDBOX_NAME"] == "fix-1"
        baseline_env = _env(shop_cluster.get("deployments", "reviews-v1", NS) or {})
        assert "SIGNADOT_SANDBOX_ROUTING_KEY" not in baseline_env and "LOOP_ROUTE_KEY" not in baseline_env
        assert [kind for kind in ("deployments", "services", "virtualservices")
                if shop_cluster.items(kind, "default")] == [], "nothing lands outside the namespace"

        sandboxes.remove("fix-1")
        assert deployments("loop.dev/sandbox=fix-1") == []
    finally:
        api.close()  # type: ignore[no-untyped-call]
