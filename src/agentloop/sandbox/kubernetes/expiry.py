"""A sandbox's expiry on the cluster: the annotation on its Deployments that `gc` reads, set anew when a
published run's sandbox is kept for its review (`Extendable`)."""

from __future__ import annotations

from agentloop.sandbox.kubernetes import manifests as mf
from agentloop.sandbox.kubernetes.cluster import Cluster


def extend(cluster: Cluster, name: str, until: float) -> bool:
    """Set every Deployment of sandbox `name` to expire at `until`; False when it has none. Only the
    Deployment's own annotations change, never its pod template: nothing rolls out again."""
    found = False
    for deployment in cluster.list("Deployment", f"{mf.SANDBOX_LABEL}={name}"):
        meta = deployment["metadata"]
        meta["annotations"] = {**(meta.get("annotations") or {}), mf.EXPIRES_ANNOTATION: f"{until:.3f}"}
        cluster.apply({**deployment, "kind": "Deployment", "apiVersion": "apps/v1"})
        found = True
    return found
