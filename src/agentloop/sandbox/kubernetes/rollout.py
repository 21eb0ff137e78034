"""Waiting for a fork's rollout, reporting why it failed, and reading pods' logs by time window."""

from __future__ import annotations

import logging
import math
import re
import time
from datetime import datetime
from typing import Any

from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_fixed

from agentloop.errors import DeployError
from agentloop.redact import redact
from agentloop.sandbox.kubernetes.cluster import Cluster

_log = logging.getLogger(__name__)
# Waiting reasons after which the rollout cannot succeed without a new image or spec.
_HOPELESS = {"CrashLoopBackOff", "ErrImagePull", "ImagePullBackOff", "InvalidImageName",
             "CreateContainerConfigError", "CreateContainerError", "RunContainerError"}
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d) ?(.*)$")
_TAIL_LINES = 40


def wait_for_rollout(cluster: Cluster, deployment: str, service: str, *, timeout: float, interval: float) -> None:
    """Return once the Deployment has an available replica of its current spec; raise DeployError with
    the pods' status, events and last log lines when it crash-loops, cannot pull, or times out."""
    def state() -> str:
        obj = cluster.read("DeploymentStatus", deployment)
        if obj is None:
            return "gone"
        status, generation = obj.get("status") or {}, obj["metadata"].get("generation", 0)
        if (status.get("observedGeneration", 0) >= generation and status.get("availableReplicas", 0) >= 1
                and status.get("updatedReplicas", 0) >= 1):
            return "ready"
        if any(c.get("reason") == "ProgressDeadlineExceeded" for c in status.get("conditions") or []):
            return "failed"
        selector = ",".join(f"{k}={v}" for k, v in obj["spec"]["selector"].get("matchLabels", {}).items())
        for pod in cluster.list("Pod", selector):
            for container in (pod.get("status") or {}).get("containerStatuses") or []:
                if ((container.get("state") or {}).get("waiting") or {}).get("reason") in _HOPELESS:
                    return "failed"
        return "pending"

    try:
        outcome = Retrying(retry=retry_if_result(lambda s: s == "pending"), stop=stop_after_delay(timeout),
                           wait=wait_fixed(interval))(state)
    except RetryError:
        outcome = "timeout"
    if outcome == "ready":
        _log.info("rollout of %s complete", deployment)
        return
    why = {"gone": "was deleted while rolling out", "failed": "cannot become available",
           "timeout": f"has no available replica after {timeout:.0f}s (sandbox.kubernetes.rollout_timeout)"}
    raise DeployError(f"fork Deployment {deployment} of {service} {why.get(outcome, outcome)}",
                      service=service, log_tail=failure_report(cluster, deployment))


def failure_report(cluster: Cluster, deployment: str) -> str:
    """Each pod's phase and container states, its events, and its last log lines (secrets masked)."""
    obj = cluster.read("Deployment", deployment)
    if obj is None:
        return f"Deployment {deployment} not found"
    selector = ",".join(f"{k}={v}" for k, v in obj["spec"]["selector"].get("matchLabels", {}).items())
    lines: list[str] = []
    pods = cluster.list("Pod", selector)
    if not pods:
        lines.append(f"Deployment {deployment}: no pods (status: {obj.get('status')})")
    for pod in pods:
        name, status = pod["metadata"]["name"], pod.get("status") or {}
        lines.append(f"pod {name}: phase {status.get('phase', 'Unknown')}")
        for container in status.get("containerStatuses") or []:
            lines.append(f"  container {container.get('name')}: {_describe(container)} "
                         f"restarts={container.get('restartCount', 0)}")
        for event in cluster.list("Event", field_selector=f"involvedObject.name={name}"):
            lines.append(f"  event {event.get('type')} {event.get('reason')}: {event.get('message')}")
        log = cluster.pod_log(name, tail_lines=_TAIL_LINES)
        if log.strip():
            lines.append("  last log lines:")
            lines += [f"    {line}" for line in log.splitlines()[-_TAIL_LINES:]]
    return redact("\n".join(lines))


def _describe(container: dict[str, Any]) -> str:
    state = container.get("state") or {}
    for key in ("waiting", "terminated"):
        if state.get(key):
            detail = state[key]
            return f"{key} {detail.get('reason', '')} {detail.get('message', '') or ''}".rstrip()
    last = (container.get("lastState") or {}).get("terminated")
    if last:
        return f"running (last exit {last.get('exitCode')} {last.get('reason', '')})"
    return "running" if "running" in state else "unknown"


def _parse_stamp(line: str) -> tuple[float | None, str]:
    match = _STAMP.match(line)
    if not match:
        return None, line
    fraction = (match.group(2) or ".0")[:7]  # the API gives nanoseconds; datetime takes microseconds
    zone = "+00:00" if match.group(3) == "Z" else match.group(3)
    return datetime.fromisoformat(match.group(1) + fraction + zone).timestamp(), match.group(4)


def slice_log(cluster: Cluster, pods: list[dict[str, Any]], *, since: float | None, until: float | None) -> str:
    """The pods' log lines within [since, until] (by the API's timestamps), oldest first; a line from one
    of several pods is prefixed with the pod's name."""
    since_seconds = max(1, math.ceil(time.time() - since) + 1) if since is not None else None
    collected: list[tuple[float, str]] = []
    for pod in pods:
        name = pod["metadata"]["name"]
        for raw in cluster.pod_log(name, since_seconds=since_seconds, timestamps=True).splitlines():
            stamp, text = _parse_stamp(raw)
            at = stamp if stamp is not None else 0.0
            if (since is not None and stamp is not None and at < since) or (until is not None and at > until):
                continue
            collected.append((at, f"[{name}] {text}" if len(pods) > 1 else text))
    collected.sort(key=lambda item: item[0])
    return "".join(line + "\n" for _, line in collected)
