"""The Kubernetes executor: each run is a batch/v1 Job running the `loop` image (the repository's
Dockerfile), given the repository URL, the issue and the run id as arguments and its keys from a
Secret (envFrom). The Job's run writes its records and checkpoints to the Postgres database named by
LOOP_DATABASE_URL (which the Secret must also carry, as the pods see the database), and the batch
reads them back from there: `loop runs` / `loop show` anywhere see the same runs.

Ctrl-C deletes the Jobs; Kubernetes sends their pods SIGTERM, which the entry script turns into the
SIGINT that stops a run cleanly (sandbox removed, status interrupted), within the grace period.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from pydantic import BaseModel

from agentloop import git
from agentloop.batch.run import BatchItem
from agentloop.errors import ConfigError, LoopError
from agentloop.redact import redact
from agentloop.runs.folder import RunSummary, new_run_id
from agentloop.runs.store import DATABASE_ENV, RunStore

log = logging.getLogger(__name__)

# Runs in the image: clone, then `loop fix` in the background with job control on (so it keeps SIGINT,
# which a non-interactive shell would have it ignore), and turn the pod's SIGTERM into that SIGINT.
ENTRY_SCRIPT = """set -m
dir=$(mktemp -d) && git clone --quiet "$1" "$dir/repo" && cd "$dir/repo" || exit 3
loop fix "$2" --run-id "$3" ${4:+--model "$4"} &
child=$!
trap 'kill -INT "$child"' TERM
while :; do wait "$child"; code=$?; kill -0 "$child" 2>/dev/null || exit "$code"; done
"""


class JobSettings(BaseModel):
    image: str
    repository: str
    namespace: str = "default"
    secret: str = "loop-keys"
    model: str | None = None
    kubeconfig: str | None = None
    context: str | None = None
    grace_seconds: int = 60


def job_name(run_id: str) -> str:
    return "loop-" + re.sub(r"[^a-z0-9-]", "-", run_id.lower())[:56]


def job_manifest(item: BatchItem, settings: JobSettings, batch_id: str) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": "loop", "loop.dev/batch": batch_id, "loop.dev/run": job_name(item.run_id)}
    args = [settings.repository, item.issue, item.run_id] + ([settings.model] if settings.model else [])
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": job_name(item.run_id), "labels": labels},
        "spec": {
            "backoffLimit": 0,  # a failed run is reported, not retried behind the batch's back
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": settings.grace_seconds,
                    "containers": [{
                        "name": "loop", "image": settings.image,
                        "command": ["bash", "-c", ENTRY_SCRIPT, "loop-job"], "args": args,
                        "env": [{"name": "LOOP_BATCH", "value": batch_id}, {"name": "LOOP_RUN_ID", "value": item.run_id}],
                        "envFrom": [{"secretRef": {"name": settings.secret}}],
                    }],
                },
            },
        },
    }


class KubernetesRun:
    def __init__(self, api: k8s.BatchV1Api, name: str, namespace: str):
        self.api, self.name, self.namespace = api, name, namespace

    def poll(self) -> int | None:
        try:
            job = self.api.read_namespaced_job_status(self.name, self.namespace)
        except k8s.ApiException as exc:
            if exc.status == 404:  # deleted behind our back: it will not finish
                return 137
            raise _cluster_error(f"read Job {self.name}", exc) from None
        status = job.status
        if status is not None and (status.succeeded or 0) > 0:
            return 0
        if status is not None and (status.failed or 0) > 0:
            return 1
        return None

    def interrupt(self) -> None:
        self._delete(grace=None)

    def kill(self) -> None:
        self._delete(grace=0)

    def close(self) -> None:
        pass

    def _delete(self, grace: int | None) -> None:
        try:
            self.api.delete_namespaced_job(self.name, self.namespace, propagation_policy="Foreground",
                                           grace_period_seconds=grace)
        except k8s.ApiException as exc:
            if exc.status != 404:
                raise _cluster_error(f"delete Job {self.name}", exc) from None


class KubernetesExecutor:
    def __init__(self, settings: JobSettings, batch_id: str, store: RunStore, api_client: k8s.ApiClient | None = None):
        self.settings, self.batch_id, self.store = settings, batch_id, store
        self.api = k8s.BatchV1Api(api_client or _client(settings))

    def start(self, item: BatchItem) -> KubernetesRun:
        if self.store.summary(item.run_id) is not None:
            # the interrupted run's worktree went with its pod: `--resume` starts the issue again as a new run
            log.info("run %s of issue %s was interrupted in its Job; starting it again", item.run_id, item.issue)
            item.run_id = new_run_id()
        name = job_name(item.run_id)
        try:
            self.api.delete_namespaced_job(name, self.settings.namespace, propagation_policy="Foreground")
            log.info("replacing the finished Job %s to resume run %s", name, item.run_id)
        except k8s.ApiException as exc:
            if exc.status != 404:
                raise _cluster_error(f"delete Job {name}", exc) from None
        try:
            # the client serialises a plain dict body as it is: the manifest stays the API's own JSON
            self.api.create_namespaced_job(self.settings.namespace,
                                           job_manifest(item, self.settings, self.batch_id))  # type: ignore[arg-type]
        except k8s.ApiException as exc:
            raise _cluster_error(f"create Job {name}", exc) from None
        return KubernetesRun(self.api, name, self.settings.namespace)

    def summary(self, run_id: str) -> RunSummary | None:
        shared = self.store.summary(run_id)
        return RunSummary.model_validate(shared) if shared else None

    def last_node(self, run_id: str) -> str:
        events = self.store.events(run_id)
        return str(events[-1].get("node", "")) if events else ""


def _client(settings: JobSettings) -> k8s.ApiClient:
    try:
        api_client: k8s.ApiClient = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=settings.kubeconfig, context=settings.context)
        return api_client
    except (k8s_config.ConfigException, OSError) as exc:
        raise ConfigError(f"--executor kubernetes: cannot load the kubeconfig ({exc}); set KUBECONFIG or "
                          "`kubectl config use-context` to the cluster that should run the Jobs") from None


def _cluster_error(action: str, exc: k8s.ApiException) -> LoopError:
    return LoopError(redact(f"Kubernetes API: {action} failed ({exc.status} {exc.reason}); check the kubeconfig "
                            "context's permissions for batch/v1 Jobs in this namespace"))


def require_database() -> str:
    url = os.environ.get(DATABASE_ENV)
    if not url:
        raise ConfigError(f"--executor kubernetes: set {DATABASE_ENV} to the Postgres database the Jobs write their "
                          "runs to (the Secret given with --secret must carry it too, as the pods reach it)")
    return url


def origin_url(root: Path) -> str:
    """The URL the Jobs clone: the repository's `origin` remote."""
    try:
        return str(git.open_repo(root).remote("origin").url)
    except ValueError:
        raise ConfigError(f"{root}: no `origin` remote for the Jobs to clone; give --repository URL") from None
