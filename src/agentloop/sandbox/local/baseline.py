"""The local baseline's processes (part of `LocalSandboxBackend`, backend.py): starting it -- its worktree,
the router, the services in `depends_on` waves -- stopping everything, and stopping the processes a
killed `loop` spawned but had not recorded yet (they carry the registry and sandbox as a tag, see stamp.py).

The baseline is recorded (its owner, the run it works for) before its worktree is made or any process
starts, and each process right after it is spawned, so whatever a kill leaves has a record.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

from agentloop import git, owned, processes, project_env
from agentloop.errors import DeployError
from agentloop.processes import ProcessRecord
from agentloop.sandbox.local import process, services
from agentloop.sandbox.local.registry import BASELINE, BaselineRecord, Registry, RegistryData

if TYPE_CHECKING:
    from agentloop.sandbox.local.backend import LocalSandboxBackend

log = logging.getLogger(__name__)


def router_urls(baseline: BaselineRecord | None) -> dict[str, str]:
    """Each service's stable address on the router."""
    ports = baseline.router_ports if baseline is not None else {}
    return {service: f"http://127.0.0.1:{port}" for service, port in ports.items()}


def start(backend: LocalSandboxBackend, data: RegistryData, *, owner: ProcessRecord | None) -> None:
    """Start the baseline; called under the registry lock with `data` freshly read. `owner` owns it once
    it is ready (this process, and the run it works for, until then)."""
    registry = backend.registry
    repo = git.open_repo(backend.repo)
    commit = git.resolve_base(repo, backend.config.base_branch)
    worktree = backend.root / "baseline" / "worktree"
    # recorded before anything is made or started: whatever a kill from here on leaves has a record
    baseline = BaselineRecord(
        commit=commit, worktree=str(worktree), started_at=time.time(),
        owner=processes.record_of(os.getpid()), owner_run=owned.current_run(),  # the starter, until ready
    )
    data.baseline = baseline
    registry.write(data)
    try:
        if worktree.exists():
            git.remove_worktree(repo, worktree)
        worktree.parent.mkdir(parents=True, exist_ok=True)
        git.add_worktree(repo, worktree, branch=None, commit=commit)
        project_env.prepare(worktree, repo=backend.repo, confinement=backend.confinement, share=True)
    except BaseException:
        data.baseline = None  # nothing runs yet; the worktree goes with `baseline_down`, as before
        registry.write(data)
        raise
    sockets = {name: process.listening_socket() for name in backend.config.services}
    baseline.router_ports = {name: sock.getsockname()[1] for name, sock in sockets.items()}
    try:
        baseline.router = process.spawn_router(
            registry=registry.path, requests_dir=backend.root / "requests",
            route_header=backend.config.sandbox.route_header, sockets=sockets,
            log_path=backend.root / "baseline" / "logs" / "router.log",
        )
    finally:
        for sock in sockets.values():
            sock.close()
    registry.write(data)
    failure: DeployError | None = None
    try:
        # In `depends_on` waves, each ready before the next starts (compose's order).
        for wave in services.waves(backend.config.services, backend.config.services):
            launched = {name: _start_service(backend, name, worktree, baseline, data) for name in wave}
            _, failure = services.wait_all(launched, backend.config.services)
            if failure is not None:
                break
    except BaseException:
        stop_everything(registry, data)
        raise
    if failure is not None:
        stop_everything(registry, data)
        raise DeployError(
            f"baseline: {failure}", service=failure.service, exit_code=failure.process_exit_code,
            log_tail=failure.log_tail,
        )
    baseline.owner = owner
    baseline.ready = True
    registry.write(data)


def _start_service(backend: LocalSandboxBackend, name: str, worktree: Path, baseline: BaselineRecord,
                   data: RegistryData) -> process.Started:
    registry = backend.registry
    config = backend.config.services[name]
    db_path = None
    if config.database is not None:
        db_path = services.branch_database(
            backend.root / "baseline" / "data" / name / Path(config.database.path).name,
            parent=None, seed=worktree / config.database.path,
        )
    started, baseline.services[name] = services.start(
        name, config, source=worktree, log_path=backend.root / "baseline" / "logs" / f"{name}.log",
        db_path=db_path, router_urls=router_urls(baseline), tag=(str(registry.path), BASELINE),
        confinement=backend.confinement, home=backend.root / "baseline" / "home" / name,
    )
    registry.write(data)
    owned.kill_point("baseline")
    return started


def stop_everything(registry: Registry, data: RegistryData) -> None:
    """Stop the baseline and every sandbox in `data`, then record that (caller holds the lock)."""
    for record in data.sandboxes.values():
        for fork in [*record.forks.values(), *record.starting.values()]:
            processes.stop(fork)
    if data.baseline is not None:
        for service in data.baseline.services.values():
            processes.stop(service)
        processes.stop(data.baseline.router)
    data.baseline = None
    data.sandboxes = {}
    registry.write(data)
    stop_tagged(registry, None)


def stop_tagged(registry: Registry, names: set[str] | None, *, keep: Collection[int] = ()) -> None:
    """Stop processes tagged with this registry and one of `names` (None: any tag, the router's too),
    but not those in `keep`: what a `loop` killed between spawning and recording them left."""
    for pid, tag in process.tagged_processes(registry.path):
        if (names is None or tag in names) and pid not in keep:
            log.info("stopping process %s (%s) that has no record", pid, tag.strip("_"))
            processes.stop(processes.record_of(pid))


def kill_untracked(registry: Registry) -> list[str]:
    """Stop tagged processes whose record is gone (their `loop` died between start and record)."""
    with registry.locked():
        data = registry.read()
        removed = []
        for pid, tag in process.tagged_processes(registry.path):
            if tag == "__router__":
                router = data.baseline.router if data.baseline is not None else None
                keep = router is not None and router.pid == pid
            else:
                keep = data.baseline is not None if tag == BASELINE else tag in data.sandboxes
            if not keep:
                processes.stop(processes.record_of(pid))
                removed.append(f"process {pid} ({tag.strip('_')}: record gone)")
        return removed

