"""Fixtures: a loopback Kubernetes API server holding a bookinfo-shaped baseline, a git repository with
the services' sources, and a backend wired to both through the real `kubernetes` client."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from agentloop.config import LoopConfig, parse_config
from agentloop.sandbox.kubernetes.backend import KubernetesSandboxBackend

from .fake_apiserver import FakeApiServer, running

BOOKINFO = Path(__file__).with_name("bookinfo.yaml")


def _git(repo: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "PATH": "/usr/bin:/bin:/usr/local/bin", "HOME": str(repo)}
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True, env=env).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for service in ("reviews", "ratings"):
        (root / "services" / service).mkdir(parents=True)
        (root / "services" / service / "app.py").write_text(f"print('{service}')\n")
    (root / "k8s").mkdir()
    (root / "k8s" / "bookinfo.yaml").write_text(BOOKINFO.read_text())
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "base")
    return root


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., LoopConfig]:
    def make(**kubernetes: Any) -> LoopConfig:
        settings: dict[str, Any] = {
            "namespace": "default", "image": "registry.local/{service}:{commit}",
            "build": f"echo {{service}} {{image}} >> {tmp_path / 'built.txt'}",
            "preview_host": "{sandbox}.preview.example.com", "rollout_timeout": 5, "poll_interval": 0.02,
            "service_map": {"reviews": {"service": "reviews"}},
        }
        settings.update(kubernetes)
        ttl = settings.pop("ttl", 3600)
        data = {
            "services": {
                "reviews": {"path": "services/reviews", "run": "python app.py --port {port}",
                            "env": {"RATINGS_URL": "{services.ratings.url}", "PORT": "{port}"}},
                "ratings": {"path": "services/ratings", "run": "python app.py --port {port}"},
            },
            "sandbox": {"backend": "kubernetes", "ttl": ttl, "kubernetes": settings},
        }
        return parse_config(data, Path("loop.yaml"))
    return make


@pytest.fixture
def apiserver() -> Iterator[FakeApiServer]:
    server = FakeApiServer()
    for document in yaml.safe_load_all(BOOKINFO.read_text()):
        server.put(document)
    yield from running(server)


@pytest.fixture
def api_client(apiserver: FakeApiServer) -> Iterator[k8s.ApiClient]:
    api = k8s.ApiClient(k8s.Configuration(host=apiserver.url))
    yield api
    api.close()


@pytest.fixture
def backend(repo: Path, tmp_path: Path, make_config: Callable[..., LoopConfig],
            api_client: k8s.ApiClient) -> Callable[..., KubernetesSandboxBackend]:
    def make(**kubernetes: Any) -> KubernetesSandboxBackend:
        return KubernetesSandboxBackend(repo, make_config(**kubernetes), tmp_path / "state", api_client=api_client)
    return make
