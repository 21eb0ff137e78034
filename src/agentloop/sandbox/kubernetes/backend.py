"""The Kubernetes sandbox backend: fork only the changed services into a shared namespace, route by header.

The baseline is whatever already runs in the namespace. A fork copies the service's Deployment under a
name and selector of its own with the image built from the run's worktree, gets a Service of its own,
and is reached by requests carrying the route key (Istio VirtualService routes, or the router as a
Deployment with `routing: proxy`). Everything a sandbox makes carries its `loop.dev/sandbox` label and
an expiry annotation, so `rm` and `gc` find it from the cluster alone.
"""

from __future__ import annotations

import builtins
import logging
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config

from agentloop.config import LoopConfig
from agentloop.errors import ConfigError, DeployError, LoopError
from agentloop.redact import redact
from agentloop.results import ForkInfo, SandboxInfo
from agentloop.sandbox.client import routing_headers, sandbox_env
from agentloop.sandbox.kubernetes import manifests as mf
from agentloop.sandbox.kubernetes import routing as proxy
from agentloop.sandbox.kubernetes.cluster import Cluster
from agentloop.sandbox.kubernetes.rollout import slice_log, wait_for_rollout
from agentloop.sandbox.kubernetes.settings import (
    FIELD as _FIELD,
)
from agentloop.sandbox.kubernetes.settings import (
    KubernetesSettings,
    ServiceTarget,
    check_name,
    code_hash,
    commit_of,
    fill_env,
    render,
)

__all__ = ["KubernetesSandboxBackend", "KubernetesSettings", "ServiceTarget", "plan_yaml"]

plan_yaml = mf.plan_yaml
_log = logging.getLogger(__name__)


class KubernetesSandboxBackend:
    """Sandboxes as forked Deployments in one namespace of a shared cluster (see the module docstring)."""

    name = "kubernetes"

    def __init__(self, repo: Path, config: LoopConfig, state_dir: Path, *,
                 api_client: k8s.ApiClient | None = None) -> None:
        self.repo = repo
        self.config = config
        self.state_dir = state_dir
        self.settings = KubernetesSettings.from_config(config)
        self._api_client = api_client
        self._cluster_: Cluster | None = None

    # -- the cluster, made on first use so `plan` from manifests needs none ----------------------
    @property
    def _cluster(self) -> Cluster:
        if self._cluster_ is None:
            self._cluster_ = Cluster(self._api_client or self._client_from_kubeconfig(), self.settings.namespace)
        return self._cluster_

    def _client_from_kubeconfig(self) -> k8s.ApiClient:
        try:
            api_client: k8s.ApiClient = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=self.settings.kubeconfig, context=self.settings.context)
            return api_client
        except (k8s_config.ConfigException, OSError) as exc:
            raise ConfigError(f"{_FIELD}.context: cannot load kubeconfig context {self.settings.context!r} "
                              f"({exc}); set `context` (and `kubeconfig`) to one `kubectl config get-contexts` "
                              "lists") from None

    # -- baseline: what already runs in the namespace ------------------------------------------
    def baseline_up(self) -> bool:
        status = self.baseline_status()
        missing = [name for name, s in status["services"].items() if not s["available"]]  # type: ignore[attr-defined]
        if missing:
            raise DeployError(f"baseline not running in namespace {self.settings.namespace!r}: "
                              f"{', '.join(missing)}; deploy it there first (loop does not deploy a Kubernetes "
                              f"baseline) or map names with {_FIELD}.service_map", service=missing[0])
        return False

    def baseline_down(self) -> None:
        _log.info("the Kubernetes baseline is shared; leaving namespace %s as it is", self.settings.namespace)

    def baseline_status(self) -> dict[str, object]:
        baseline = self._live_baseline(with_routes=False)
        services: dict[str, object] = {}
        for service in self.config.services:
            try:
                deployment, _, _ = self._target(baseline, service)
            except ConfigError:
                services[service] = {"deployment": None, "available": False}
                continue
            available = int(deployment.get("status", {}).get("availableReplicas") or 0)
            containers = deployment["spec"]["template"]["spec"]["containers"]
            services[service] = {"deployment": deployment["metadata"]["name"], "available": available > 0,
                                 "replicas": available, "image": containers[0].get("image")}
        return {"backend": self.name, "namespace": self.settings.namespace, "context": self.settings.context,
                "routing": self.settings.routing, "services": services}

    # -- plan / create / update -----------------------------------------------------------------
    def plan(self, name: str, forks: dict[str, Path]) -> builtins.list[dict[str, Any]]:
        """Every object `create` would apply; from `manifests` when given, else read from the cluster (an
        error then says how to plan with no cluster)."""
        now = time.time()
        if self.settings.manifests:
            baseline = mf.Baseline.from_manifests([self.repo / p for p in self.settings.manifests])
            return self._objects(name, forks, _new_route_key(), now, now + self.config.sandbox.ttl, baseline)
        try:
            baseline = self._live_baseline(with_routes=True)
            return self._objects(name, forks, _new_route_key(), now, now + self.config.sandbox.ttl, baseline)
        except LoopError as exc:
            raise LoopError(f"{exc}; or, to plan with no cluster, list the baseline's manifests under "
                            f"{_FIELD}.manifests") from None

    def create(self, name: str, forks: dict[str, Path], *, log_dir: Path | None = None) -> SandboxInfo:
        check_name(name)
        existing = self.get(name)
        route_key = existing.route_key if existing else _new_route_key()
        created = existing.created_at if existing else time.time()
        return self._deploy(name, forks, route_key, created)

    def update(self, name: str, forks: dict[str, Path]) -> SandboxInfo:
        existing = self.get(name)
        if existing is None:
            raise LoopError(f"no sandbox {name!r} in namespace {self.settings.namespace!r}; "
                            f"create it with `loop sandbox create {name} --backend kubernetes`")
        changed = {service: source for service, source in forks.items()
                   if service not in existing.forks
                   or existing.forks[service].code_hash != code_hash(self._service_dir(service, source))}
        if not changed:
            return existing
        return self._deploy(name, changed, existing.route_key, existing.created_at)

    def _deploy(self, name: str, forks: dict[str, Path], route_key: str, created: float) -> SandboxInfo:
        for service, source in forks.items():
            self._build(name, service, source)
        baseline = self._live_baseline(with_routes=True)
        objects = self._objects(name, forks, route_key, created, time.time() + self.config.sandbox.ttl, baseline)
        for obj in objects:
            self._cluster.apply(obj)
        for obj in objects:
            if obj["kind"] == "Deployment":
                labels = obj["metadata"].get("labels", {})
                wait_for_rollout(self._cluster, obj["metadata"]["name"],
                                 labels.get(mf.SERVICE_LABEL, obj["metadata"]["name"]),
                                 timeout=self.settings.rollout_timeout, interval=self.settings.poll_interval)
        info = self.get(name)
        if info is None:  # nothing forked: the sandbox is the baseline seen with a route key
            info = SandboxInfo(name=name, backend=self.name, route_key=route_key, created_at=created,
                               routing_headers=routing_headers(route_key, self.config.sandbox.route_header),
                               link=self._link(name))
        return info

    def _build(self, name: str, service: str, source: Path) -> None:
        if not self.settings.build:
            return
        path = self._service_dir(service, source)
        commit = commit_of(self.repo, source, path)
        image = self._image(service, commit)
        command = render(self.settings.build, "build", image=image, service=service, commit=commit,
                          path=str(path), sandbox=name, namespace=self.settings.namespace)
        _log.info("building %s for sandbox %s: %s", service, name, redact(command))
        try:
            done = subprocess.run(command, check=False, shell=True, cwd=source, capture_output=True, text=True,
                                  timeout=self.settings.build_timeout)
        except subprocess.TimeoutExpired:
            raise DeployError(f"building {service}'s image timed out after {self.settings.build_timeout:.0f}s "
                              f"({_FIELD}.build_timeout)", service=service) from None
        if done.returncode != 0:
            tail = redact("\n".join((done.stdout + done.stderr).splitlines()[-40:]))
            raise DeployError(f"building {service}'s image failed (exit {done.returncode}): {redact(command)}",
                              service=service, exit_code=done.returncode, log_tail=tail)

    def _objects(self, name: str, forks: dict[str, Path], route_key: str, created: float, expires: float,
                 baseline: mf.Baseline) -> list[dict[str, Any]]:
        check_name(name)
        objects: list[dict[str, Any]] = []
        routing: list[dict[str, Any]] = []
        # As each Service was before a proxy router (if any) stood in front of it.
        selectors = [dict(proxy.restored_service(s)["spec"].get("selector") or {}) for s in baseline.services]
        for service in sorted(forks):
            if service not in self.config.services:
                raise ConfigError(f"--fork {service}: not a service in loop.yaml `services:`; "
                                  f"use one of {', '.join(sorted(self.config.services))}")
            deployment, base_service, container = self._target(baseline, service)
            path = self._service_dir(service, forks[service])
            spec = mf.ForkSpec(sandbox=name, service=service, route_key=route_key,
                               image=self._image(service, commit_of(self.repo, forks[service], path)), code_hash=code_hash(path),
                               env=self._env(service, name, route_key, baseline, deployment), created_at=created,
                               expires_at=expires, namespace=self.settings.namespace, container=container,
                               health=self.config.services[service].health)
            plain = proxy.restored_service(base_service) if base_service is not None else None
            fork = mf.fork_deployment(deployment, spec, selectors=selectors)
            fork_svc = mf.fork_service(plain, fork, spec)
            objects += [fork, fork_svc]
            host = base_service["metadata"]["name"] if base_service else service
            routing += self._route(baseline, host, base_service, name, route_key, fork_svc)
        return objects + routing

    def _route(self, baseline: mf.Baseline, host: str, base_service: dict[str, Any] | None, name: str,
               route_key: str, fork_svc: dict[str, Any]) -> list[dict[str, Any]]:
        ns = self.settings.namespace
        if self.settings.routing == "istio":
            vs = mf.with_route(baseline.mesh_virtual_service(host, ns), host=host, namespace=ns, sandbox=name,
                               route_key=route_key, route_header=self.config.sandbox.route_header,
                               fork_service_obj=fork_svc)
            baseline.virtual_services = [v for v in baseline.virtual_services
                                         if v["metadata"]["name"] != vs["metadata"]["name"]] + [vs]
            return [vs]
        if base_service is None:
            raise ConfigError(f"{_FIELD}.service_map: no Service found for {host!r}; routing: proxy stands the "
                              "router in front of the service's Service, so name it under `service`")
        router = baseline.deployment(proxy.router_name(host))
        port = fork_svc["spec"]["ports"][0]["port"] if fork_svc["spec"].get("ports") else 80
        routes = {**proxy.routes_of(router),
                  route_key: f"http://{fork_svc['metadata']['name']}.{ns}.svc.cluster.local:{port}"}
        assert self.settings.router_image is not None  # checked in KubernetesSettings.from_config
        return proxy.proxy_objects(base_service=base_service, namespace=ns, router_image=self.settings.router_image,
                                   router_command=self.settings.router_command,
                                   route_header=self.config.sandbox.route_header, routes=routes)

    # -- reading what exists --------------------------------------------------------------------
    def _live_baseline(self, *, with_routes: bool) -> mf.Baseline:
        cluster = self._cluster
        baseline = mf.Baseline(
            deployments=[d for d in cluster.list("Deployment") if mf.SANDBOX_LABEL not in _labels(d)],
            services=[s for s in cluster.list("Service") if mf.SANDBOX_LABEL not in _labels(s)])
        if with_routes and self.settings.routing == "istio":
            baseline.virtual_services = cluster.list("VirtualService")
        return baseline

    def _target(self, baseline: mf.Baseline, service: str) -> tuple[dict[str, Any], dict[str, Any] | None, str | None]:
        target = self.settings.service_map.get(service, ServiceTarget())
        base_service = baseline.service(target.service or service)
        deployment = baseline.deployment(target.deployment or service)
        if deployment is None and target.deployment is None and base_service is not None:
            candidates = baseline.deployments_selected_by(proxy.restored_service(base_service))
            if candidates:
                deployment = candidates[0]
                if len(candidates) > 1:
                    _log.info("%s: forking %s of %s (set %s.service_map.%s.deployment to choose)", service,
                              deployment["metadata"]["name"], [c["metadata"]["name"] for c in candidates],
                              _FIELD, service)
        if deployment is None:
            raise ConfigError(f"{_FIELD}.service_map.{service}: no Deployment "
                              f"{target.deployment or service!r} in namespace {self.settings.namespace!r}; "
                              "name the baseline Deployment (and Service) this service runs as")
        return deployment, base_service, target.container

    def get(self, name: str) -> SandboxInfo | None:
        return next((info for info in self._sandboxes(mf.SANDBOX_LABEL + "=" + name)), None)

    def list(self) -> list[SandboxInfo]:
        return self._sandboxes(mf.SANDBOX_LABEL)

    def _sandboxes(self, selector: str) -> builtins.list[SandboxInfo]:
        ns = self.settings.namespace
        infos: dict[str, SandboxInfo] = {}
        for deployment in self._cluster.list("Deployment", selector):
            labels, notes = _labels(deployment), deployment["metadata"].get("annotations") or {}
            name, route_key = labels[mf.SANDBOX_LABEL], notes.get(mf.ROUTE_KEY_ANNOTATION, "")
            info = infos.setdefault(name, SandboxInfo(
                name=name, backend=self.name, route_key=route_key,
                routing_headers=routing_headers(route_key, self.config.sandbox.route_header),
                created_at=float(notes.get(mf.CREATED_ANNOTATION, 0)),
                expires_at=float(notes.get(mf.EXPIRES_ANNOTATION, 0)), link=self._link(name)))
            service = labels.get(mf.SERVICE_LABEL, deployment["metadata"]["name"])
            container = deployment["spec"]["template"]["spec"]["containers"][0]
            port = (container.get("ports") or [{}])[0].get("containerPort", 80)
            fork = deployment["metadata"]["name"]
            info.forks[service] = ForkInfo(service=service, url=f"http://{fork}.{ns}.svc.cluster.local:{port}",
                                           source=str(container.get("image", "")),
                                           code_hash=notes.get(mf.CODE_HASH_ANNOTATION, ""))
            info.expires_at = min(info.expires_at, float(notes.get(mf.EXPIRES_ANNOTATION, info.expires_at)))
        for info in infos.values():
            info.service_urls = {s: f"http://{(self.settings.service_map.get(s) or ServiceTarget()).service or s}"
                                    f".{ns}.svc.cluster.local" for s in self.config.services}
            info.router_url = info.link or ""
        return sorted(infos.values(), key=lambda i: i.name)

    def _link(self, name: str) -> str | None:
        if not self.settings.preview_host:
            return None
        return "https://" + render(self.settings.preview_host, "preview_host", sandbox=name,
                                    namespace=self.settings.namespace)

    def logs(self, name: str, service: str, *, since: float | None = None, until: float | None = None) -> str:
        info = self.get(name)
        if info is not None and service in info.forks:
            selector = f"{mf.SANDBOX_LABEL}={name},{mf.SERVICE_LABEL}={service}"
            pods = [p for p in self._cluster.list("Pod", selector)]
        else:
            deployment, _, _ = self._target(self._live_baseline(with_routes=False), service)
            labels = deployment["spec"]["selector"].get("matchLabels", {})
            pods = self._cluster.list("Pod", ",".join(f"{k}={v}" for k, v in labels.items()))
        return slice_log(self._cluster, pods, since=since, until=until)

    # -- removal ----------------------------------------------------------------------------------
    def extend(self, name: str, until: float) -> SandboxInfo | None:
        from agentloop.sandbox.kubernetes.expiry import extend
        return self.get(name) if extend(self._cluster, name, until) else None

    def remove(self, name: str) -> None:
        selector = f"{mf.SANDBOX_LABEL}={name}"
        for kind in ("Deployment", "Service"):
            for obj in self._cluster.list(kind, selector):
                self._cluster.delete(kind, obj["metadata"]["name"])
        self._unroute({name})
        _log.info("removed sandbox %s from namespace %s", name, self.settings.namespace)

    def _unroute(self, gone: set[str]) -> None:
        if self.settings.routing == "istio":
            for vs in self._cluster.list("VirtualService"):
                if not gone & set(mf.sandbox_routes(vs)):
                    continue
                for name in gone:
                    vs = mf.without_route(vs, name)
                if mf.created_by_loop(vs) and not mf.sandbox_routes(vs):
                    self._cluster.delete("VirtualService", vs["metadata"]["name"])
                else:
                    self._cluster.apply(vs)
            return
        live = {i.route_key for i in self.list()}
        for router in self._cluster.list("Deployment", proxy.ROUTER_LABEL):
            routes = {k: v for k, v in proxy.routes_of(router).items() if k in live}
            host = router["metadata"]["name"].removeprefix("loop-router-")
            fronted = self._cluster.read("Service", host)
            if fronted is None:
                continue
            if routes:
                objects = proxy.proxy_objects(
                    base_service=fronted, namespace=self.settings.namespace, router_image=str(self.settings.router_image),
                    router_command=self.settings.router_command, route_header=self.config.sandbox.route_header,
                    routes=routes)
                self._cluster.apply(objects[0])
                continue
            self._cluster.apply(proxy.restored_service(fronted))
            self._cluster.delete("Service", proxy.baseline_alias_name(host))
            self._cluster.delete("Deployment", router["metadata"]["name"])

    def gc(self) -> builtins.list[str]:
        """Remove sandboxes past their TTL, stray objects of sandboxes without a Deployment, and routes
        that lead to no sandbox."""
        now = time.time()
        live = {info.name: info for info in self.list()}
        removed = [name for name, info in live.items() if info.expires_at and info.expires_at <= now]
        for name in removed:
            self.remove(name)
        strays = {_labels(s)[mf.SANDBOX_LABEL] for s in self._cluster.list("Service", mf.SANDBOX_LABEL)} - set(live)
        for name in sorted(strays):
            self.remove(name)
        alive = set(live) - set(removed)
        if self.settings.routing == "istio":
            orphans = {r for vs in self._cluster.list("VirtualService") for r in mf.sandbox_routes(vs)} - alive
            if orphans:
                self._unroute(orphans)
        return sorted(set(removed) | strays)

    # -- helpers ---------------------------------------------------------------------------------
    def _service_dir(self, service: str, source: Path) -> Path:
        path = source / self.config.services[service].path
        return path if path.is_dir() else source

    def _image(self, service: str, commit: str) -> str:
        return render(self.settings.image, "image", service=service, commit=commit,
                       namespace=self.settings.namespace)

    def _env(self, service: str, name: str, route_key: str, baseline: mf.Baseline,
             deployment: dict[str, Any]) -> dict[str, str]:
        ns = self.settings.namespace
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        container_port = str((container.get("ports") or [{}])[0].get("containerPort", 80))
        urls: dict[str, str] = {}
        for other in self.config.services:
            target = self.settings.service_map.get(other) or ServiceTarget()
            svc = baseline.service(target.service or other)
            port = svc["spec"]["ports"][0]["port"] if svc and svc["spec"].get("ports") else 80
            urls[other] = f"http://{target.service or other}.{ns}.svc.cluster.local:{port}"
        env = {key: fill_env(template, urls, container_port, f"services.{service}.env.{key}")
               for key, template in self.config.services[service].env.items()}
        return {**env, **sandbox_env(name, route_key)}


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    return dict(obj.get("metadata", {}).get("labels") or {})


def _new_route_key() -> str:
    return secrets.token_hex(8)
