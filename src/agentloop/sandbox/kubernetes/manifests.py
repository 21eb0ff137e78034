"""Pure builders for the objects a Kubernetes sandbox applies: fork Deployments and Services, and
Istio VirtualService routes. No cluster is touched here, so `loop sandbox create --dry-run` works offline.
"""

from __future__ import annotations

import copy
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agentloop.errors import ConfigError
from agentloop.sandbox import route_key as rk

Obj = dict[str, Any]

SANDBOX_LABEL = "loop.dev/sandbox"
SERVICE_LABEL = "loop.dev/service"
FORK_LABEL = "loop.dev/fork"
FORK_OF_LABEL = "loop.dev/fork-of"
MANAGED_BY = {"app.kubernetes.io/managed-by": "loop"}
ROUTE_KEY_ANNOTATION = "loop.dev/route-key"
EXPIRES_ANNOTATION = "loop.dev/expires-at"
CREATED_ANNOTATION = "loop.dev/created-at"
CODE_HASH_ANNOTATION = "loop.dev/code-hash"
FORKED_FROM_ANNOTATION = "loop.dev/forked-from"
ROUTE_KEY_ENTRY = rk.ENTRY
ISTIO_GROUP = "networking.istio.io"
ISTIO_VERSION = "v1beta1"
# Server-owned fields that must not be copied from a live baseline object into a new one.
_SERVER_METADATA = ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields", "selfLink",
                    "ownerReferences", "deletionTimestamp")
_SERVER_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration", "deployment.kubernetes.io/revision")


@dataclass
class Baseline:
    """The baseline's Deployments, Services and VirtualServices: read from the cluster or from manifests."""

    deployments: list[Obj] = field(default_factory=list)
    services: list[Obj] = field(default_factory=list)
    virtual_services: list[Obj] = field(default_factory=list)

    @classmethod
    def from_manifests(cls, paths: list[Path]) -> Baseline:
        baseline = cls()
        for path in paths:
            if not path.is_file():
                raise ConfigError(f"loop.yaml: sandbox.kubernetes.manifests: {path} not found; list existing "
                                  "YAML files holding the baseline's Deployments, Services and VirtualServices")
            try:
                documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
            except yaml.YAMLError as exc:
                raise ConfigError(f"{path}: not valid YAML ({getattr(exc, 'problem', exc)}); "
                                  "fix the file named in loop.yaml: sandbox.kubernetes.manifests") from None
            for document in documents:
                for obj in document.get("items", [document]) if isinstance(document, dict) else []:
                    baseline.add(obj)
        return baseline

    def add(self, obj: Obj) -> None:
        kind = obj.get("kind")
        target = {"Deployment": self.deployments, "Service": self.services,
                  "VirtualService": self.virtual_services}.get(str(kind))
        if target is not None:
            target.append(obj)

    def service(self, name: str) -> Obj | None:
        return next((s for s in self.services if s["metadata"]["name"] == name), None)

    def deployment(self, name: str) -> Obj | None:
        return next((d for d in self.deployments if d["metadata"]["name"] == name), None)

    def deployments_selected_by(self, service: Obj) -> list[Obj]:
        selector = service.get("spec", {}).get("selector") or {}
        if not selector:
            return []
        return sorted(
            (d for d in self.deployments
             if selector.items() <= _pod_labels(d).items()),
            key=lambda d: str(d["metadata"]["name"]),
        )

    def mesh_virtual_service(self, host: str, namespace: str) -> Obj | None:
        """The VirtualService that routes in-mesh traffic for `host`, if any (gateway-only ones don't)."""
        names = {host, f"{host}.{namespace}", f"{host}.{namespace}.svc", f"{host}.{namespace}.svc.cluster.local"}
        for vs in self.virtual_services:
            spec = vs.get("spec", {})
            gateways = spec.get("gateways") or ["mesh"]
            if "mesh" in gateways and names & set(spec.get("hosts", [])):
                return vs
        return None


@dataclass
class ForkSpec:
    """Everything that distinguishes one fork from the baseline Deployment it copies."""

    sandbox: str
    service: str
    route_key: str
    image: str
    code_hash: str
    env: dict[str, str]
    created_at: float
    expires_at: float
    namespace: str
    container: str | None = None
    health: str | None = None  # loop.yaml's `health`: None means ready = accepts TCP connections


def dns_name(*parts: str) -> str:
    """A DNS-1123 label (what Kubernetes names need): lowercase, dashes, at most 63 characters."""
    raw = re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")
    if len(raw) <= 63:
        return raw
    digest = hashlib.sha256(raw.encode()).hexdigest()[:8]
    return f"{raw[:54].rstrip('-')}-{digest}"


def _pod_labels(deployment: Obj) -> dict[str, str]:
    return dict(deployment.get("spec", {}).get("template", {}).get("metadata", {}).get("labels") or {})


def _clean_metadata(metadata: Obj, *, name: str, labels: dict[str, str], annotations: dict[str, str]) -> Obj:
    meta = {k: v for k, v in copy.deepcopy(metadata).items() if k not in _SERVER_METADATA}
    kept = {k: v for k, v in (meta.get("annotations") or {}).items() if k not in _SERVER_ANNOTATIONS}
    meta.update(name=name, labels={**(meta.get("labels") or {}), **labels}, annotations={**kept, **annotations})
    return meta


def fork_labels(spec: ForkSpec, fork: str) -> dict[str, str]:
    return {SANDBOX_LABEL: spec.sandbox, SERVICE_LABEL: spec.service, FORK_LABEL: fork, **MANAGED_BY}


def fqdn(service: str, namespace: str) -> str:
    return f"{service}.{namespace}.svc.cluster.local"


def _label_value(text: str) -> str:
    return text if len(text) <= 63 else dns_name(text)


def _own_labels(labels: dict[str, str], dropped: set[str], spec: ForkSpec, fork: str,
                base_name: str) -> dict[str, str]:
    """`labels` (the baseline's) made the fork's own: without the `dropped` keys (those by which the
    baseline's selectors pick its pods). `app` and `version`, if dropped, come back with values of the
    fork's own: Istio's telemetry and Kiali group by them, and the fork is then shown as what it is, never
    mixed into the baseline's numbers."""
    own = {k: v for k, v in labels.items() if k not in dropped}
    if "app" in dropped:
        own["app"] = fork
    if "version" in dropped:
        own["version"] = _label_value(f"loop-{spec.sandbox}")
    return {**own, **fork_labels(spec, fork), FORK_OF_LABEL: _label_value(base_name)}


def fork_deployment(base: Obj, spec: ForkSpec, *, selectors: list[dict[str, str]]) -> Obj:
    """Copy `base` under a name of its own in `spec.namespace`. Every label key by which one of `selectors`
    (every baseline Service's, and `base`'s own) picks `base`'s pods is dropped from the fork and its pods,
    so no baseline Service, Deployment or `kubectl get -l` query on those labels selects the fork."""
    base_name = str(base["metadata"]["name"])
    fork = dns_name(base_name, "loop", spec.sandbox)
    pods = _pod_labels(base)
    selectors = [*selectors, dict(base["spec"].get("selector", {}).get("matchLabels") or {})]
    dropped = {key for selector in selectors if selector and selector.items() <= pods.items() for key in selector}
    annotations = {ROUTE_KEY_ANNOTATION: spec.route_key, EXPIRES_ANNOTATION: f"{spec.expires_at:.3f}",
                   CREATED_ANNOTATION: f"{spec.created_at:.3f}", CODE_HASH_ANNOTATION: spec.code_hash,
                   FORKED_FROM_ANNOTATION: base_name}
    obj = copy.deepcopy(base)
    obj.pop("status", None)
    obj["apiVersion"], obj["kind"] = "apps/v1", "Deployment"
    obj["metadata"] = _clean_metadata(base["metadata"], name=fork, labels={}, annotations=annotations)
    obj["metadata"]["labels"] = _own_labels(dict(obj["metadata"]["labels"]), dropped, spec, fork, base_name)
    obj["metadata"]["namespace"] = spec.namespace
    template = obj["spec"]["template"]
    template.setdefault("metadata", {})
    template["metadata"]["labels"] = _own_labels(pods, dropped, spec, fork, base_name)
    # The hash makes every code change a new pod template, so the rollout restarts even on a reused tag.
    template["metadata"]["annotations"] = {**(template["metadata"].get("annotations") or {}),
                                           CODE_HASH_ANNOTATION: spec.code_hash}
    obj["spec"]["selector"] = {"matchLabels": {SANDBOX_LABEL: spec.sandbox, FORK_LABEL: fork}}
    obj["spec"]["replicas"] = 1
    container = _container(template["spec"]["containers"], spec.container, base_name)
    container["image"] = spec.image
    env = [e for e in container.get("env") or [] if e.get("name") not in spec.env]
    container["env"] = env + [{"name": key, "value": value} for key, value in sorted(spec.env.items())]
    _set_readiness(container, spec.health)
    return obj


_PROBE_HANDLERS = ("httpGet", "tcpSocket", "exec", "grpc")


def _set_readiness(container: Obj, health: str | None) -> None:
    """The fork's readinessProbe, which its rollout waits for: `health` as an httpGet, or without it the
    baseline's own probe when it has one, else a tcpSocket on the container's port (what "ready" means to
    loop when no `health` is given). The baseline's timings (delays, periods, thresholds) are kept."""
    existing = dict(container.get("readinessProbe") or {})
    ports = [p["containerPort"] for p in container.get("ports") or [] if "containerPort" in p]
    if (health is None and existing) or not ports:
        return  # no declared port: a probe on a guessed one would keep the fork from ever being ready
    timings = {k: v for k, v in existing.items() if k not in _PROBE_HANDLERS}
    handler: Obj = {"tcpSocket": {"port": ports[0]}}
    if health is not None:
        handler = {"httpGet": {"path": health, "port": ports[0]}}
    container["readinessProbe"] = {**handler, **timings}


def _container(containers: list[Obj], wanted: str | None, deployment: str) -> Obj:
    if wanted is None:
        return containers[0]
    for container in containers:
        if container.get("name") == wanted:
            return container
    names = ", ".join(str(c.get("name")) for c in containers)
    raise ConfigError(f"loop.yaml: sandbox.kubernetes.service_map: container {wanted!r} is not in Deployment "
                      f"{deployment!r} (it has: {names}); name one of those")


def fork_service(base_service: Obj | None, deployment: Obj, spec: ForkSpec) -> Obj:
    """A Service of the fork's own that selects only the fork's pods, on the baseline Service's ports."""
    fork = deployment["metadata"]["name"]
    if base_service is not None:
        ports = [{k: v for k, v in p.items() if k != "nodePort"} for p in base_service["spec"].get("ports", [])]
    else:
        container_ports = deployment["spec"]["template"]["spec"]["containers"][0].get("ports") or []
        ports = [{"name": p.get("name") or f"port-{p['containerPort']}", "port": p["containerPort"],
                  "targetPort": p["containerPort"]} for p in container_ports]
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": fork, "namespace": spec.namespace, "labels": fork_labels(spec, fork),
                     "annotations": {EXPIRES_ANNOTATION: f"{spec.expires_at:.3f}"}},
        "spec": {"selector": deployment["spec"]["selector"]["matchLabels"], "ports": ports},
    }


def route_matches(route_key: str, route_header: str) -> list[Obj]:
    """Istio matches (ORed) that take exactly the requests the router reads `route_key` from (route_key.py)."""
    return rk.istio_matches(route_key, route_header, ROUTE_KEY_ENTRY)


def route_name(sandbox: str) -> str:
    return f"loop-{sandbox}"


def with_route(existing: Obj | None, *, host: str, namespace: str, sandbox: str, route_key: str,
               route_header: str, fork_service_obj: Obj) -> Obj:
    """`existing` with this sandbox's route first (replacing an older one of the same sandbox); a new
    VirtualService with the route and a default route to `host` when there is none. Other routes stay."""
    if existing is None:
        # Fully qualified: a short name is resolved in the VirtualService's namespace, which is right only
        # as long as the object is applied where it was meant to be.
        full = fqdn(host, namespace)
        vs: Obj = {"apiVersion": f"{ISTIO_GROUP}/{ISTIO_VERSION}", "kind": "VirtualService",
                   "metadata": {"name": dns_name("loop", host), "labels": dict(MANAGED_BY)},
                   "spec": {"hosts": [full], "http": [{"name": "default", "route": [{"destination": {"host": full}}]}]}}
    else:
        vs = copy.deepcopy(existing)
        vs["metadata"] = {k: v for k, v in vs["metadata"].items() if k not in _SERVER_METADATA or k == "resourceVersion"}
        vs.pop("status", None)
    vs["metadata"]["namespace"] = namespace
    destination: Obj = {"host": fqdn(fork_service_obj["metadata"]["name"], namespace)}
    ports = fork_service_obj["spec"].get("ports", [])
    if len(ports) > 1:
        destination["port"] = {"number": ports[0]["port"]}
    route = {"name": route_name(sandbox), "match": route_matches(route_key, route_header),
             "route": [{"destination": destination}]}
    others = [r for r in vs["spec"].get("http", []) if r.get("name") != route_name(sandbox)]
    vs["spec"]["http"] = [route, *others]
    return vs


def without_route(vs: Obj, sandbox: str) -> Obj:
    stripped = copy.deepcopy(vs)
    stripped["spec"]["http"] = [r for r in vs["spec"].get("http", []) if r.get("name") != route_name(sandbox)]
    return stripped


def sandbox_routes(vs: Obj) -> list[str]:
    """Names of the sandboxes with a route in `vs`."""
    return [str(r["name"])[len("loop-"):] for r in vs.get("spec", {}).get("http", [])
            if str(r.get("name", "")).startswith("loop-")]


def created_by_loop(vs: Obj) -> bool:
    return (vs["metadata"].get("labels") or {}).get("app.kubernetes.io/managed-by") == "loop"


def plan_yaml(objects: list[Obj]) -> str:
    """The objects as one multi-document YAML stream, as `kubectl apply -f` takes it."""
    return yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False)
