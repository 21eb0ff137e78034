"""`routing: proxy` (clusters without a mesh): the router Deployment stands in front of the service and
steps aside again when its last sandbox is removed. Against the loopback API server."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from agentloop.sandbox.kubernetes.backend import KubernetesSandboxBackend

from .fake_apiserver import FakeApiServer

PROXY = {"routing": "proxy", "router_image": "registry.local/agentloop:1"}


def test_router_fronts_the_service_and_is_removed_with_the_last_sandbox(
        backend: Callable[..., KubernetesSandboxBackend], apiserver: FakeApiServer, repo: Path) -> None:
    sandboxes = backend(**PROXY)
    one = sandboxes.create("fix-1", {"reviews": repo})
    two = sandboxes.create("fix-2", {"reviews": repo})

    service = apiserver.get("services", "reviews")
    assert service is not None and service["spec"]["selector"] == {"loop.dev/router": "loop-router-reviews"}
    alias = apiserver.get("services", "reviews-loop-baseline")
    assert alias is not None and alias["spec"]["selector"] == {"app": "reviews"}, "baseline pods still reachable"
    router = apiserver.get("deployments", "loop-router-reviews")
    assert router is not None
    env = {e["name"]: e["value"] for e in router["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert set(json.loads(env["LOOP_ROUTER_ROUTES"])) == {one.route_key, two.route_key}
    assert env["LOOP_ROUTER_DEFAULT"] == "http://reviews-loop-baseline.default.svc.cluster.local:9080"

    sandboxes.remove("fix-1")
    router = apiserver.get("deployments", "loop-router-reviews")
    assert router is not None
    env = {e["name"]: e["value"] for e in router["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert set(json.loads(env["LOOP_ROUTER_ROUTES"])) == {two.route_key}

    sandboxes.remove("fix-2")
    service = apiserver.get("services", "reviews")
    assert service is not None and service["spec"]["selector"] == {"app": "reviews"}
    assert service["spec"]["ports"][0].get("targetPort") in (None, 9080)
    assert apiserver.get("deployments", "loop-router-reviews") is None
    assert apiserver.get("services", "reviews-loop-baseline") is None
