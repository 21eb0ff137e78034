"""Plain-dict access to the few kinds a Kubernetes sandbox touches, through the real `kubernetes` client.

Objects go in and come out as the API's own JSON (camelCase dicts), so the builders in
`manifests` work the same on manifests read from files and on objects read from a cluster.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import urllib3
from kubernetes import client as k8s
from tenacity import Retrying, retry_if_exception, stop_after_attempt

from agentloop.errors import LoopError
from agentloop.redact import redact
from agentloop.sandbox.kubernetes.manifests import ISTIO_GROUP, ISTIO_VERSION

Obj = dict[str, Any]
_log = logging.getLogger(__name__)


def _typed(model: Any, obj: Obj) -> Any:
    """The client's model of `obj` (its methods take models; the objects here are API-shaped dicts)."""
    return model.from_dict(obj)


class ClusterError(LoopError):
    """The Kubernetes API refused a request or could not be reached."""


def _is_conflict(exc: BaseException) -> bool:
    return isinstance(exc, k8s.ApiException) and exc.status == 409


@contextmanager
def _api_errors(action: str, host: str, passthrough: tuple[int, ...] = (404, 409)) -> Iterator[None]:
    try:
        yield
    except k8s.ApiException as exc:
        if exc.status in passthrough:
            raise
        detail = exc.reason or ""
        try:
            detail = json.loads(exc.body or "{}").get("message", detail)
        except (TypeError, ValueError):
            pass
        raise ClusterError(redact(f"Kubernetes API at {host}: {action} failed ({exc.status}): {detail}; check the "
                                  "context's permissions for this namespace (loop.yaml: sandbox.kubernetes)")) from None
    except (OSError, urllib3.exceptions.HTTPError) as exc:  # refused, DNS, TLS: MaxRetryError after retries
        raise ClusterError(f"Kubernetes API at {host} unreachable while trying to {action} ({type(exc).__name__}); "
                           "check loop.yaml: sandbox.kubernetes.context and that the cluster is up") from None


class Cluster:
    """Deployments, Services, Pods, Events and Istio VirtualServices of one namespace."""

    def __init__(self, api_client: k8s.ApiClient, namespace: str) -> None:
        self.namespace = namespace
        self.host = str(api_client.configuration.host)
        self.apps = k8s.AppsV1Api(api_client)
        self.core = k8s.CoreV1Api(api_client)
        self.custom = k8s.CustomObjectsApi(api_client)

    def _json(self, action: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Obj:
        with _api_errors(action, self.host):
            response = call(*args, _preload_content=False, **kwargs)
        return dict(json.loads(response.data))

    def list(self, kind: str, selector: str = "", field_selector: str = "") -> list[Obj]:
        ns = self.namespace
        calls: dict[str, Callable[..., Any]] = {
            "Deployment": self.apps.list_namespaced_deployment, "Service": self.core.list_namespaced_service,
            "Pod": self.core.list_namespaced_pod, "Event": self.core.list_namespaced_event,
        }
        if kind == "VirtualService":
            try:
                with _api_errors("list VirtualServices", self.host):
                    data: Obj = self.custom.list_namespaced_custom_object(  # type: ignore[assignment]
                        ISTIO_GROUP, ISTIO_VERSION, ns, "virtualservices", label_selector=selector or None)
            except k8s.ApiException as exc:
                if exc.status == 404:
                    raise ClusterError(f"Kubernetes API at {self.host}: no Istio VirtualService kind; install Istio "
                                       "or set loop.yaml: sandbox.kubernetes.routing: proxy") from None
                raise
            return list(data.get("items", []))
        kwargs: dict[str, str] = {}
        if selector:
            kwargs["label_selector"] = selector
        if field_selector:
            kwargs["field_selector"] = field_selector
        items = self._json(f"list {kind}s", calls[kind], ns, **kwargs).get("items", [])
        for item in items:
            item.setdefault("kind", kind)
        return list(items)

    def read(self, kind: str, name: str) -> Obj | None:
        try:
            if kind == "VirtualService":
                with _api_errors(f"read VirtualService {name}", self.host):
                    found: Obj = self.custom.get_namespaced_custom_object(  # type: ignore[assignment]
                        ISTIO_GROUP, ISTIO_VERSION, self.namespace, "virtualservices", name)
                    return found
            call = {"Deployment": self.apps.read_namespaced_deployment,
                    "DeploymentStatus": self.apps.read_namespaced_deployment_status,
                    "Service": self.core.read_namespaced_service}[kind]
            return self._json(f"read {kind} {name}", call, name, self.namespace)
        except k8s.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def apply(self, obj: Obj) -> None:
        """Create `obj`, or replace the live one of that name (retrying when someone else wrote it first)."""
        for attempt in Retrying(retry=retry_if_exception(_is_conflict), stop=stop_after_attempt(5), reraise=True):
            with attempt:
                self._apply_once(obj)

    def _apply_once(self, obj: Obj) -> None:
        kind, name, ns = obj["kind"], obj["metadata"]["name"], self.namespace
        live = self.read(kind, name)
        with _api_errors(f"apply {kind} {name}", self.host):
            if live is None:
                _log.info("creating %s %s/%s", kind, ns, name)
                if kind == "Deployment":
                    self.apps.create_namespaced_deployment(ns, _typed(k8s.V1Deployment, obj))
                elif kind == "Service":
                    self.core.create_namespaced_service(ns, _typed(k8s.V1Service, obj))
                else:
                    self.custom.create_namespaced_custom_object(ISTIO_GROUP, ISTIO_VERSION, ns, "virtualservices", obj)
                return
            body = {**obj, "metadata": {**obj["metadata"], "resourceVersion": live["metadata"]["resourceVersion"]}}
            _log.info("replacing %s %s/%s", kind, ns, name)
            if kind == "Deployment":
                self.apps.replace_namespaced_deployment(name, ns, _typed(k8s.V1Deployment, body))
            elif kind == "Service":
                # A Service's cluster IP is immutable: keep the one the cluster gave it.
                spec = {**body["spec"], **{k: v for k, v in live["spec"].items() if k in ("clusterIP", "clusterIPs")}}
                self.core.replace_namespaced_service(name, ns, _typed(k8s.V1Service, {**body, "spec": spec}))
            else:
                self.custom.replace_namespaced_custom_object(
                    ISTIO_GROUP, ISTIO_VERSION, ns, "virtualservices", name, body)

    def delete(self, kind: str, name: str) -> None:
        ns = self.namespace
        try:
            with _api_errors(f"delete {kind} {name}", self.host):
                if kind == "Deployment":
                    self.apps.delete_namespaced_deployment(name, ns, propagation_policy="Background",
                                                         _preload_content=False)
                elif kind == "Service":
                    self.core.delete_namespaced_service(name, ns, _preload_content=False)
                else:
                    self.custom.delete_namespaced_custom_object(ISTIO_GROUP, ISTIO_VERSION, ns, "virtualservices", name)
        except k8s.ApiException as exc:
            if exc.status != 404:  # already gone is what we wanted
                raise

    def pod_log(self, pod: str, container: str | None = None, *, since_seconds: int | None = None,
                tail_lines: int | None = None, timestamps: bool = False) -> str:
        kwargs: dict[str, Any] = {"timestamps": timestamps}
        if container:
            kwargs["container"] = container
        if since_seconds is not None:
            kwargs["since_seconds"] = since_seconds
        if tail_lines is not None:
            kwargs["tail_lines"] = tail_lines
        try:
            with _api_errors(f"read the log of pod {pod}", self.host, (400, 404)):
                return str(self.core.read_namespaced_pod_log(pod, self.namespace, **kwargs))
        except k8s.ApiException as exc:
            if exc.status in (400, 404):  # container not started yet, or pod gone
                return ""
            raise
