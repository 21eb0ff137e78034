"""`plan` and settings: what a dry run shows, computed from bookinfo-shaped manifests with no cluster."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentloop.config import LoopConfig
from agentloop.errors import ConfigError
from agentloop.sandbox.kubernetes.backend import KubernetesSandboxBackend, plan_yaml


def _offline(repo: Path, tmp_path: Path, config: LoopConfig) -> KubernetesSandboxBackend:
    # No api_client and a kubeconfig that does not exist: any cluster access would raise.
    return KubernetesSandboxBackend(repo, config, tmp_path / "state")


def _by(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def test_dry_run_plan_forks_one_version_of_a_multi_version_service(
        repo: Path, tmp_path: Path, make_config: Callable[..., LoopConfig]) -> None:
    config = make_config(manifests=["k8s/bookinfo.yaml"], kubeconfig=str(tmp_path / "missing"))
    objects = _offline(repo, tmp_path, config).plan("fix-1", {"reviews": repo})

    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [
        ("Deployment", "reviews-v1-loop-fix-1"), ("Service", "reviews-v1-loop-fix-1"), ("VirtualService", "reviews")]
    fork = _by(objects, "Deployment", "reviews-v1-loop-fix-1")
    pod_labels = fork["spec"]["template"]["metadata"]["labels"]
    assert pod_labels.get("app") != "reviews", "the baseline Service (selector app=reviews) must not select the fork"
    assert fork["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert fork["spec"]["replicas"] == 1
    assert float(fork["metadata"]["annotations"]["loop.dev/expires-at"]) > 0
    container = fork["spec"]["template"]["spec"]["containers"][0]
    head = re.fullmatch(r"registry\.local/reviews:([0-9a-f]{12})", container["image"])
    assert head, container["image"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["RATINGS_URL"] == "http://ratings.default.svc.cluster.local:9080"
    assert env["PORT"] == "9080" and env["LOG_DIR"] == "/tmp/logs"  # baseline env kept, overrides added

    service = _by(objects, "Service", "reviews-v1-loop-fix-1")
    assert service["spec"]["selector"] == fork["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["port"] == 9080


def test_dry_run_merges_the_route_into_the_existing_virtual_service(
        repo: Path, tmp_path: Path, make_config: Callable[..., LoopConfig]) -> None:
    config = make_config(manifests=["k8s/bookinfo.yaml"], kubeconfig=str(tmp_path / "missing"))
    objects = _offline(repo, tmp_path, config).plan("fix-1", {"reviews": repo, "ratings": repo})

    reviews = _by(objects, "VirtualService", "reviews")
    first, default = reviews["spec"]["http"]
    assert default == {"route": [{"destination": {"host": "reviews", "subset": "v1"}}]}, "default route untouched"
    assert first["route"][0]["destination"]["host"] == "reviews-v1-loop-fix-1.default.svc.cluster.local"
    route_key = _by(objects, "Deployment", "reviews-v1-loop-fix-1")["metadata"]["annotations"]["loop.dev/route-key"]
    baggage = first["match"][0]["headers"]["baggage"]["regex"]
    assert re.fullmatch(baggage, f"foo=bar,sd-routing-key={route_key}")
    assert re.fullmatch(baggage, f"sd-routing-key={route_key};p=1")
    assert re.fullmatch(baggage, f"sd-routing-key = {route_key}\t;p=1"), "OWS around = and ; (W3C baggage)"
    assert not re.fullmatch(baggage, f"sd-routing-key={route_key}0"), "another key with this one as prefix"
    assert not re.fullmatch(baggage, f"a=1;sd-routing-key={route_key}"), "a property of another member"
    assert "tracestate" in first["match"][1]["headers"]
    assert re.fullmatch(first["match"][2]["headers"]["x-loop-route"]["regex"], route_key)

    # ratings has no VirtualService: one is made, with a default route to the service itself.
    created = _by(objects, "VirtualService", "loop-ratings")
    assert created["spec"]["hosts"] == ["ratings.default.svc.cluster.local"]
    assert created["spec"]["http"][-1]["route"] == [{"destination": {"host": "ratings.default.svc.cluster.local"}}]
    assert all(o["metadata"]["name"] != "bookinfo" for o in objects), "gateway-only VirtualService left alone"


def test_plan_yaml_is_a_stream_kubectl_can_apply(
        repo: Path, tmp_path: Path, make_config: Callable[..., LoopConfig]) -> None:
    config = make_config(manifests=["k8s/bookinfo.yaml"], kubeconfig=str(tmp_path / "missing"))
    objects = _offline(repo, tmp_path, config).plan("fix-1", {"reviews": repo})
    assert list(yaml.safe_load_all(plan_yaml(objects))) == objects


def test_uncommitted_changes_get_an_image_tag_of_their_own(
        repo: Path, tmp_path: Path, make_config: Callable[..., LoopConfig]) -> None:
    backend = _offline(repo, tmp_path, make_config(manifests=["k8s/bookinfo.yaml"]))
    clean = backend.plan("a", {"reviews": repo})[0]["spec"]["template"]["spec"]["containers"][0]["image"]
    (repo / "services" / "reviews" / "app.py").write_text("print('fixed')\n")
    dirty = backend.plan("a", {"reviews": repo})[0]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert dirty != clean and dirty.startswith(clean)


@pytest.mark.parametrize(("settings", "field"), [
    ({"routing": "linkerd"}, "sandbox.kubernetes.routing"),
    ({"rollout_timeout": 0}, "sandbox.kubernetes.rollout_timeout"),
    ({"colour": "blue"}, "sandbox.kubernetes.colour"),
    ({"service_map": {"payments": "payments-v1"}}, "sandbox.kubernetes.service_map.payments"),
    ({"image": "registry.local/{team}:{commit}"}, "sandbox.kubernetes.image"),
    ({"routing": "proxy"}, "sandbox.kubernetes.router_image"),
])
def test_bad_settings_name_the_field(make_config: Callable[..., LoopConfig], repo: Path, tmp_path: Path,
                                     settings: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"loop.yaml: {field}")):
        KubernetesSandboxBackend(repo, make_config(**settings), tmp_path)


def test_missing_manifest_and_unknown_service_are_clear_errors(
        repo: Path, tmp_path: Path, make_config: Callable[..., LoopConfig]) -> None:
    backend = _offline(repo, tmp_path, make_config(manifests=["k8s/nope.yaml"]))
    with pytest.raises(ConfigError, match="sandbox.kubernetes.manifests.*nope.yaml"):
        backend.plan("a", {"reviews": repo})
    backend = _offline(repo, tmp_path, make_config(manifests=["k8s/bookinfo.yaml"]))
    with pytest.raises(ConfigError, match="--fork payments"):
        backend.plan("a", {"payments": repo})
    with pytest.raises(ConfigError, match="sandbox.kubernetes.service_map.ratings.*ratings-v9"):
        _offline(repo, tmp_path, make_config(manifests=["k8s/bookinfo.yaml"],
                                             service_map={"ratings": "ratings-v9"})).plan("a", {"ratings": repo})
