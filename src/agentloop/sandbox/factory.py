"""Choosing the sandbox backend named by `loop.yaml`, and which services a change forks."""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from agentloop import paths
from agentloop.config import LoopConfig
from agentloop.errors import NotSupportedYet
from agentloop.sandbox.base import SandboxBackend
from agentloop.sandbox.local.backend import LocalSandboxBackend


def open_backend(repo: Path, config: LoopConfig, *, state_dir: Path | None = None) -> SandboxBackend:
    """The backend of `config.sandbox.backend` for `repo`; state lives in `paths.state_dir(repo)`."""
    state = state_dir if state_dir is not None else paths.state_dir(repo)
    if config.sandbox.backend == "local":
        return LocalSandboxBackend(repo, config, state)
    if config.sandbox.backend == "kubernetes":
        # Imported lazily: the kubernetes client is an optional extra and slow to import.
        try:
            module = importlib.import_module("agentloop.sandbox.kubernetes.backend")
        except ImportError as exc:
            raise NotSupportedYet(
                f"loop.yaml: field `sandbox.backend`: the kubernetes backend is not available ({exc}); "
                "install `agentloop[kubernetes]` or use `backend: local`"
            ) from None
        backend: SandboxBackend = module.KubernetesSandboxBackend(repo, config, state)
        return backend
    raise NotSupportedYet(f"loop.yaml: field `sandbox.backend`: unknown backend {config.sandbox.backend!r}")


def services_for_changes(config: LoopConfig, changed_files: Iterable[str]) -> list[str]:
    """Services whose `path` holds a changed file, plus (transitively) those their `fork_with` names --
    the services a sandbox must fork, in loop.yaml order. `depends_on` (start order) forks nothing."""
    changed = [PurePosixPath(name) for name in changed_files]
    chosen = {
        name for name, service in config.services.items()
        if any(_under(path, PurePosixPath(service.path)) for path in changed)
    }
    grew = True
    while grew:
        companions = {other for name in chosen for other in config.services[name].fork_with}
        grew = not companions <= chosen
        chosen |= companions
    return [name for name in config.services if name in chosen]


def _under(path: PurePosixPath, root: PurePosixPath) -> bool:
    return str(root) in ("", ".") or path == root or root in path.parents
