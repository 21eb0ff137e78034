"""Routing by route key on Kubernetes without a mesh (`routing: proxy`).

The local backend's router runs as a Deployment in front of the service: the baseline Service's
selector is pointed at the router's pods (its original selector is kept in an annotation and on a
`<service>-loop-baseline` Service, which is where the router sends requests without a route key),
and the router's environment maps each sandbox's route key to its fork's Service. The container runs
`router_command` (default `python -m agentloop.sandbox.router`), which with no `--registry` reads that
environment (see router.py, "Environment mode").
"""

from __future__ import annotations

import copy
import json
from typing import Any

from agentloop.sandbox.kubernetes.manifests import (
    MANAGED_BY,
    ROUTE_KEY_ENTRY,
    _clean_metadata,
    dns_name,
    fqdn,
)

Obj = dict[str, Any]

ORIGINAL_SELECTOR_ANNOTATION = "loop.dev/original-selector"
ORIGINAL_PORTS_ANNOTATION = "loop.dev/original-ports"
ROUTER_LABEL = "loop.dev/router"
ROUTES_ENV = "LOOP_ROUTER_ROUTES"
DEFAULT_ENV = "LOOP_ROUTER_DEFAULT"
HEADER_ENV = "LOOP_ROUTE_HEADER"
ENTRY_ENV = "LOOP_ROUTE_KEY_ENTRY"
SERVICE_ENV = "LOOP_ROUTER_SERVICE"
ROUTER_PORT = 8080


def router_name(service: str) -> str:
    return dns_name("loop-router", service)


def baseline_alias_name(service: str) -> str:
    return dns_name(service, "loop-baseline")


def original_selector(service: Obj) -> dict[str, str]:
    """The baseline Service's own selector, also when the router already stands in front of it."""
    annotations = service["metadata"].get("annotations") or {}
    if ORIGINAL_SELECTOR_ANNOTATION in annotations:
        return dict(json.loads(annotations[ORIGINAL_SELECTOR_ANNOTATION]))
    return dict(service["spec"].get("selector") or {})


def original_ports(service: Obj) -> list[Obj]:
    annotations = service["metadata"].get("annotations") or {}
    if ORIGINAL_PORTS_ANNOTATION in annotations:
        return list(json.loads(annotations[ORIGINAL_PORTS_ANNOTATION]))
    return [{k: v for k, v in p.items() if k != "nodePort"} for p in service["spec"].get("ports", [])]


def routes_of(router: Obj | None) -> dict[str, str]:
    """Route key -> upstream URL, as configured on an existing router Deployment."""
    if router is None:
        return {}
    for item in router["spec"]["template"]["spec"]["containers"][0].get("env") or []:
        if item.get("name") == ROUTES_ENV:
            return dict(json.loads(item.get("value") or "{}"))
    return {}


def proxy_objects(*, base_service: Obj, namespace: str, router_image: str, router_command: list[str],
                  route_header: str, routes: dict[str, str]) -> list[Obj]:
    """The router Deployment, the alias Service for the baseline pods, and the baseline Service
    re-pointed at the router; `routes` maps every live route key to its fork's URL."""
    name = base_service["metadata"]["name"]
    router = router_name(name)
    selector = original_selector(base_service)
    ports = original_ports(base_service)
    port = ports[0]["port"] if ports else 80
    alias = baseline_alias_name(name)
    pod_labels = {ROUTER_LABEL: router, **MANAGED_BY}
    env = {DEFAULT_ENV: f"http://{fqdn(alias, namespace)}:{port}",
           ROUTES_ENV: json.dumps(routes, sort_keys=True), HEADER_ENV: route_header, ENTRY_ENV: ROUTE_KEY_ENTRY,
           SERVICE_ENV: name, "PORT": str(ROUTER_PORT)}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": router, "namespace": namespace, "labels": dict(pod_labels)},
        "spec": {"replicas": 1, "selector": {"matchLabels": {ROUTER_LABEL: router}},
                 "template": {"metadata": {"labels": pod_labels}, "spec": {"containers": [{
                     "name": "router", "image": router_image, "command": router_command,
                     "ports": [{"containerPort": ROUTER_PORT}],
                     # Ready only once it listens, so the re-pointed Service never sends to a starting pod.
                     "readinessProbe": {"httpGet": {"path": "/__loop/health", "port": ROUTER_PORT},
                                        "periodSeconds": 2},
                     "env": [{"name": k, "value": v} for k, v in env.items()]}]}}},
    }
    alias_service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": alias, "namespace": namespace, "labels": dict(MANAGED_BY)},
        "spec": {"selector": selector, "ports": ports},
    }
    fronted = copy.deepcopy(base_service)
    fronted.pop("status", None)
    fronted["metadata"] = _clean_metadata(
        base_service["metadata"], name=name, labels={},
        annotations={ORIGINAL_SELECTOR_ANNOTATION: json.dumps(selector, sort_keys=True),
                     ORIGINAL_PORTS_ANNOTATION: json.dumps(ports, sort_keys=True)})
    fronted["metadata"]["namespace"] = namespace
    fronted["spec"]["selector"] = {ROUTER_LABEL: router}
    fronted["spec"]["ports"] = [{**p, "targetPort": ROUTER_PORT} for p in ports]
    return [deployment, alias_service, fronted]


def restored_service(fronted: Obj) -> Obj:
    """The baseline Service as it was before the router stood in front of it."""
    service = copy.deepcopy(fronted)
    service.pop("status", None)
    annotations = dict(service["metadata"].get("annotations") or {})
    service["spec"]["selector"] = original_selector(fronted)
    service["spec"]["ports"] = original_ports(fronted)
    annotations.pop(ORIGINAL_SELECTOR_ANNOTATION, None)
    annotations.pop(ORIGINAL_PORTS_ANNOTATION, None)
    service["metadata"]["annotations"] = annotations
    return service
