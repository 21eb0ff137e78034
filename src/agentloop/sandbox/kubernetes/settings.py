"""`sandbox.kubernetes` settings of `loop.yaml`, and what identifies a fork's source (commit, code hash)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentloop import git
from agentloop.config import LoopConfig
from agentloop.errors import ConfigError, LoopError, RepoError

FIELD = "loop.yaml: sandbox.kubernetes"
_FIELD = FIELD


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServiceTarget(_Strict):
    """Where a `loop.yaml` service lives in the cluster, when its names differ from the service's."""

    deployment: str | None = Field(default=None, description="The baseline Deployment a fork copies.")
    service: str | None = Field(default=None, description="The Kubernetes Service (and route host).")
    container: str | None = Field(default=None, description="The container whose image is replaced.")


class KubernetesSettings(_Strict):
    """`sandbox.kubernetes` in `loop.yaml`."""

    context: str | None = None
    kubeconfig: str | None = None
    namespace: str = "default"
    routing: Literal["istio", "proxy"] = "istio"
    build: str | None = Field(default=None, description="Shell command run in the worktree: {image} {service} "
                              "{commit} {path}, e.g. 'docker build -t {image} {path} && docker push {image}'.")
    image: str = "{service}:{commit}"
    preview_host: str | None = Field(default=None, description="e.g. '{sandbox}.preview.example.com'.")
    rollout_timeout: float = Field(default=180.0, gt=0)
    poll_interval: float = Field(default=2.0, gt=0)
    build_timeout: float = Field(default=1800.0, gt=0)
    service_map: dict[str, ServiceTarget] = Field(default_factory=dict)
    manifests: list[str] = Field(default_factory=list)
    router_image: str | None = None
    router_command: list[str] = Field(default_factory=lambda: ["python", "-m", "agentloop.sandbox.router"])

    @classmethod
    def from_config(cls, config: LoopConfig) -> KubernetesSettings:
        raw = dict(config.sandbox.kubernetes or {})
        for name, target in list(raw.get("service_map", {}).items()):
            if isinstance(target, str):  # `reviews: reviews-v1` names the Deployment and Service alike
                raw["service_map"][name] = {"deployment": target, "service": target}
        try:
            settings = cls.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"{_FIELD}.{where}: {first['msg']} (see README 'Kubernetes sandboxes')") from None
        for name in settings.service_map:
            if name not in config.services:
                raise ConfigError(f"{_FIELD}.service_map.{name}: not a service in loop.yaml `services:`; "
                                  f"use one of {', '.join(sorted(config.services))}")
        if settings.routing == "proxy" and not settings.router_image:
            raise ConfigError(f"{_FIELD}.router_image: required with routing: proxy; name an image that "
                              "holds agentloop (it runs the router in front of each forked service)")
        for field, template in (("image", settings.image), ("build", settings.build),
                                ("preview_host", settings.preview_host)):
            if template is not None:
                render(template, field, service="s", commit="c", image="i", path="p", sandbox="x", namespace="n")
        return settings


def render(template: str, field: str, **values: str) -> str:
    try:
        return template.format(**values)
    except (KeyError, IndexError, ValueError) as exc:
        known = ", ".join("{" + k + "}" for k in values)
        raise ConfigError(f"{_FIELD}.{field}: cannot fill {template!r} ({exc}); it may use {known}") from None


def fill_env(template: str, urls: dict[str, str], port: str, field: str) -> str:
    """`{port}` (the container's) and `{services.NAME.url}`, `.host`, `.port` of `urls`
    (`http://<fully-qualified host>:<port>`) filled into a service's env value."""
    def one(match: re.Match[str]) -> str:
        ref = match.group(1)
        parts = ref.split(".")
        if len(parts) == 3 and parts[0] == "services" and parts[1] in urls:
            split = urlsplit(urls[parts[1]])
            filled = {"url": urls[parts[1]], "host": split.hostname or "", "port": str(split.port or 80)}
            if parts[2] in filled:
                return filled[parts[2]]
        if ref == "port":
            return port
        raise ConfigError(f"loop.yaml: {field}: unknown placeholder {{{ref}}}; use {{port}} or "
                          "{services.NAME.url} (or .host, .port)")
    return re.sub(r"\{([^{}]+)\}", one, template)


def check_name(name: str) -> None:
    if not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?", name):
        raise LoopError(f"sandbox name {name!r}: use 1-40 lowercase letters, digits and dashes "
                        "(it becomes part of Kubernetes object names)")


def code_hash(path: Path) -> str:
    """A hash of the service's files as they are now, committed or not."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and ".git" not in p.parts
                       and "__pycache__" not in p.parts):
        digest.update(str(file.relative_to(path)).encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def commit_of(repo: Path, source: Path, path: Path) -> str:
    """The worktree's commit, plus the code hash when the service has uncommitted changes (a new tag
    for every iteration, since the agent's edits are committed only at publish). A source that is not a
    checkout of `repo` gets the code hash alone: loop runs no git in a directory it cannot vouch for."""
    worktree = git.find_worktree(repo, source)
    if worktree is None:
        return code_hash(path)[:12]
    try:  # a replaced `.git` (WorktreeTampered) is not caught: it stops the run
        head = git.head(worktree)[:12]
        dirty = git.run(worktree, "status", "--porcelain", "--ignore-submodules=dirty", "--", str(path)).stdout
    except RepoError:
        return code_hash(path)[:12]
    return f"{head}-{code_hash(path)[:8]}" if dirty.strip() else head

