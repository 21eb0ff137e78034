"""The same create -> route -> logs -> rm cycle against a real cluster. Skipped unless
`LOOP_E2E_KUBECONFIG` names a kubeconfig; the cluster needs Istio's CRDs (routing: istio) and must be
able to pull `LOOP_E2E_IMAGE` (default nginxinc/nginx-unprivileged:1.27-alpine).

    LOOP_E2E_KUBECONFIG=~/.kube/config [LOOP_E2E_CONTEXT=kind-kind] [LOOP_E2E_NAMESPACE=loop-e2e] \
        pytest tests/sandbox_kubernetes/test_e2e_cluster.py
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from agentloop.config import parse_config
from agentloop.sandbox.kubernetes.backend import KubernetesSandboxBackend

KUBECONFIG = os.environ.get("LOOP_E2E_KUBECONFIG")
pytestmark = pytest.mark.skipif(not KUBECONFIG, reason="set LOOP_E2E_KUBECONFIG to run against a real cluster")
NAMESPACE = os.environ.get("LOOP_E2E_NAMESPACE", "loop-e2e")
IMAGE = os.environ.get("LOOP_E2E_IMAGE", "nginxinc/nginx-unprivileged:1.27-alpine")


@pytest.fixture
def cluster_baseline() -> Iterator[k8s.ApiClient]:
    api = k8s_config.new_client_from_config(config_file=KUBECONFIG, context=os.environ.get("LOOP_E2E_CONTEXT"))
    core, apps = k8s.CoreV1Api(api), k8s.AppsV1Api(api)
    try:
        core.create_namespace({"metadata": {"name": NAMESPACE}})
    except k8s.ApiException as exc:
        if exc.status != 409:
            raise
    labels = {"app": "echo"}
    apps.create_namespaced_deployment(NAMESPACE, {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "echo"},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {"metadata": {"labels": labels},
                 "spec": {"containers": [{"name": "echo", "image": IMAGE, "ports": [{"containerPort": 8080}]}]}}}})
    core.create_namespaced_service(NAMESPACE, {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo"},
        "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080, "name": "http"}]}})
    try:
        yield api
    finally:
        apps.delete_namespaced_deployment("echo", NAMESPACE)
        core.delete_namespaced_service("echo", NAMESPACE)
        api.close()


def test_sandbox_lifecycle_on_a_real_cluster(cluster_baseline: k8s.ApiClient, tmp_path: Path) -> None:
    (tmp_path / "echo").mkdir()
    (tmp_path / "echo" / "index.html").write_text("fork\n")
    config = parse_config({
        "services": {"echo": {"path": "echo", "run": "nginx"}},
        "sandbox": {"backend": "kubernetes", "kubernetes": {
            "namespace": NAMESPACE, "image": IMAGE, "build": "true", "rollout_timeout": 180, "poll_interval": 2}},
    }, Path("loop.yaml"))
    backend = KubernetesSandboxBackend(tmp_path, config, tmp_path / "state", api_client=cluster_baseline)
    try:
        info = backend.create("e2e", {"echo": tmp_path})
        assert info.forks["echo"].source == IMAGE
        assert [s.name for s in backend.list()] == ["e2e"]
        vs = k8s.CustomObjectsApi(cluster_baseline).get_namespaced_custom_object(
            "networking.istio.io", "v1beta1", NAMESPACE, "virtualservices", "loop-echo")
        assert vs["spec"]["http"][0]["name"] == "loop-e2e"  # type: ignore[index]
        assert isinstance(backend.logs("e2e", "echo"), str)
    finally:
        backend.remove("e2e")
    assert backend.get("e2e") is None
