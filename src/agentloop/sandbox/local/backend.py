"""The local sandbox backend: a shared baseline of processes on loopback, per-run forks, one router.

Layout under `<state_dir>/local/`:
  registry.json            the records (see registry.py); also the router's routing table
  baseline/worktree        detached worktree of `base_branch` the baseline runs from (never your checkout)
  baseline/logs/*.log      baseline service logs and router.log
  baseline/data/<service>  the baseline's own copy of each service's SQLite database
  sandboxes/<name>/        a sandbox's database branches (and its logs when no log_dir is given)
  requests/<key>.jsonl     the router's request log per route key (`_baseline.jsonl` without a key)

Ownership: records remember the `loop` process that made them (`owner_pid`, default this process) and
the run it worked for (`owner_run`, see `agentloop.owned`), written before any process starts; every fork
is recorded (under `starting` until it is healthy, then under `forks`, which the router routes to) as
soon as it is spawned. `remove` and `baseline_down` also stop processes tagged with the sandbox's name
(or, for the baseline, any tag of this registry) that a `loop` killed between spawn and record left.
A baseline whose owner died is taken over by the next `baseline_up` (a resumed run), which then stops it
when done. `gc` removes a sandbox (or a baseline with no sandboxes left) whose owner died, e.g. a
SIGKILLed `loop fix` never resumed. `detach()` (owner_pid None) for things meant to outlive the command
(`loop sandbox create`); those live until `rm`, `baseline down` or their TTL.

`create` is all-or-nothing: when a fork fails, the sandbox is removed and DeployError raised.
`update` keeps the sandbox: a fork that fails is stopped and dropped (its service falls back to the
baseline) and DeployError is raised; healthy forks of the same call are swapped in.
`baseline_down` also removes every sandbox, since none can be reached without the router.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from agentloop import git, owned, processes
from agentloop.config import LoopConfig
from agentloop.confine import project_confinement
from agentloop.errors import LoopError
from agentloop.processes import ProcessRecord
from agentloop.results import ForkInfo, SandboxInfo
from agentloop.sandbox.client import routing_headers
from agentloop.sandbox.local import baseline as local_baseline
from agentloop.sandbox.local import process, services
from agentloop.sandbox.local.plan import local_plan
from agentloop.sandbox.local.registry import (
    BaselineRecord,
    Registry,
    SandboxRecord,
    ServiceProcess,
)
from agentloop.sandbox.local.stamp import slice_log
from agentloop.sandbox.router import BASELINE_LOG

log = logging.getLogger(__name__)

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
BASELINE_NAME = "baseline"


class LocalSandboxBackend:
    name = "local"

    def __init__(self, repo: Path, config: LoopConfig, state_dir: Path) -> None:
        self.repo = repo
        self.config = config
        self.root = state_dir / "local"
        self.registry = Registry(self.root)
        self.owner_pid: int | None = os.getpid()
        self.confinement = project_confinement(config)

    # ---- baseline -------------------------------------------------------------------------------

    def baseline_up(self) -> bool:
        with self.registry.locked():
            data = self.registry.read()
            if data.baseline is not None and data.baseline.ready and self._baseline_alive(data.baseline):
                if not self._orphaned(data.baseline.owner):
                    return False
                # its owner was killed (a resumed run finds its own): this caller stops it when done
                log.info("taking over the baseline %s left (its process is gone)", data.baseline.owner_run or "a loop")
                data.baseline.owner, data.baseline.owner_run = self._owner(), owned.current_run()
                self.registry.write(data)
                return True
            if data.baseline is not None:
                log.warning("baseline is partly down; restarting it")
                local_baseline.stop_everything(self.registry, data)
            local_baseline.start(self, data, owner=self._owner())
            return True

    def baseline_down(self) -> None:
        with self.registry.locked():
            data = self.registry.read()
            if data.sandboxes:
                log.warning("baseline down also removes sandboxes: %s", ", ".join(sorted(data.sandboxes)))
            local_baseline.stop_everything(self.registry, data)
        worktree = self._baseline_dir / "worktree"
        if worktree.exists():
            git.remove_worktree(git.open_repo(self.repo), worktree)
        shutil.rmtree(self._baseline_dir / "data", ignore_errors=True)

    def baseline_status(self) -> dict[str, object]:
        baseline = self.registry.read().baseline
        if baseline is None:
            return {"up": False}
        urls = self._router_urls(baseline)
        described = services.describe(baseline.services)
        for name, entry in described.items():
            entry["url"] = urls.get(name, "")
        return {
            "up": baseline.ready and self._baseline_alive(baseline),
            "commit": baseline.commit,
            "worktree": baseline.worktree,
            "started_at": baseline.started_at,
            "owner_pid": baseline.owner.pid if baseline.owner else None,
            "router_pid": baseline.router.pid if baseline.router else None,
            "services": described,
            "sandboxes": sorted(self.registry.read().sandboxes),
        }

    def detach(self) -> None:
        self.owner_pid = None

    def extend(self, name: str, until: float) -> SandboxInfo | None:
        with self.registry.edit() as data:
            record = data.sandboxes.get(name)
            if record is not None:  # no owner: it outlives the run's process (gc's "owner gone" skips it)
                record.expires_at, record.owner = until, None
            baseline = data.baseline
        return None if record is None else self._info(record, baseline)

    # ---- sandboxes ------------------------------------------------------------------------------

    def plan(self, name: str, forks: dict[str, Path]) -> builtins.list[dict[str, Any]]:
        return [local_plan(self.config, name, forks, baseline_up=bool(self.baseline_status().get("up")))]

    def create(self, name: str, forks: dict[str, Path], *, log_dir: Path | None = None) -> SandboxInfo:
        self._check(name, forks)
        baseline = self._require_baseline()
        now = time.time()
        with self.registry.edit() as data:
            if name in data.sandboxes:
                raise LoopError(f"sandbox {name!r} already exists; use `loop sandbox rm {name}` or update it")
            data.sandboxes[name] = SandboxRecord(
                name=name, route_key=secrets.token_hex(8), created_at=now, expires_at=now + self.config.sandbox.ttl,
                # The creating process owns it until it is ready, so a create killed half-way is gc'd.
                owner=processes.record_of(os.getpid()), log_dir=str(log_dir or self._sandbox_dir(name) / "logs"),
                owner_run=owned.current_run(),
            )
        try:
            self._deploy(name, forks, baseline)
        except BaseException:
            self.remove(name)
            raise
        return self._mark_ready(name)

    def update(self, name: str, forks: dict[str, Path]) -> SandboxInfo:
        record = self._require(name)
        self._check(name, forks)
        changed = {
            service: source for service, source in forks.items()
            if not self._unchanged(record.forks.get(service), service, source)
        }
        self._claim(name)
        if changed:
            self._deploy(name, changed, self._require_baseline())
        return self._mark_ready(name)

    def get(self, name: str) -> SandboxInfo | None:
        data = self.registry.read()
        record = data.sandboxes.get(name)
        return None if record is None else self._info(record, data.baseline)

    def list(self) -> builtins.list[SandboxInfo]:
        data = self.registry.read()
        records = sorted(data.sandboxes.values(), key=lambda r: r.created_at)
        return [self._info(record, data.baseline) for record in records]

    def logs(self, name: str, service: str, *, since: float | None = None, until: float | None = None) -> str:
        data = self.registry.read()
        if name != BASELINE_NAME and name not in data.sandboxes:
            raise LoopError(f"no sandbox named {name!r}; see `loop sandbox ls`")
        if service == "router":
            return slice_log(self._baseline_dir / "logs" / "router.log", since, until)
        if service not in self.config.services:
            raise LoopError(f"unknown service {service!r}; loop.yaml has {', '.join(self.config.services)}")
        fork = data.sandboxes[name].forks.get(service) if name in data.sandboxes else None
        if fork is not None:
            return slice_log(Path(fork.log_path), since, until)
        return slice_log(self._baseline_dir / "logs" / f"{service}.log", since, until)

    def requests(self, name: str) -> builtins.list[dict[str, Any]]:
        """The router's records of requests that carried this sandbox's route key (or none, for
        `baseline`): time, sandbox, service, method, path, target, url, status, latency_ms."""
        if name == BASELINE_NAME:
            path = self.root / "requests" / f"{BASELINE_LOG}.jsonl"
        else:
            path = self.root / "requests" / f"{self._require(name).route_key}.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def remove(self, name: str) -> None:
        with self.registry.edit() as data:
            record = data.sandboxes.pop(name, None)
        if record is None:
            return
        for fork in [*record.forks.values(), *record.starting.values()]:
            processes.stop(fork)
        local_baseline.stop_tagged(self.registry, {name})
        shutil.rmtree(self._sandbox_dir(name), ignore_errors=True)
        (self.root / "requests" / f"{record.route_key}.jsonl").unlink(missing_ok=True)

    def gc(self, *, now: float | None = None) -> builtins.list[str]:
        now = time.time() if now is None else now
        removed: builtins.list[str] = []
        for name, record in self.registry.read().sandboxes.items():
            reason = "expired" if now > record.expires_at else ("owner gone" if self._orphaned(record.owner) else "")
            if reason:
                self.remove(name)
                removed.append(f"sandbox {name} ({reason})")
        data = self.registry.read()
        if data.baseline is not None and not data.sandboxes and self._orphaned(data.baseline.owner):
            self.baseline_down()
            removed.append("baseline (owner gone)")
        removed += local_baseline.kill_untracked(self.registry)
        return removed

    # ---- internals ------------------------------------------------------------------------------

    @property
    def _baseline_dir(self) -> Path:
        return self.root / "baseline"

    def _sandbox_dir(self, name: str) -> Path:
        return self.root / "sandboxes" / name

    def _owner(self) -> ProcessRecord | None:
        return processes.record_of(self.owner_pid) if self.owner_pid is not None else None

    def _orphaned(self, owner: ProcessRecord | None) -> bool:
        return owner is not None and not processes.alive(owner)

    def _check(self, name: str, forks: dict[str, Path]) -> None:
        if not _NAME.fullmatch(name) or name == BASELINE_NAME:
            raise LoopError(
                f"sandbox name {name!r} is not allowed; use lowercase letters, digits, '.', '_', '-' "
                f"(up to 63, not {BASELINE_NAME!r})"
            )
        unknown = sorted(set(forks) - set(self.config.services))
        if unknown:
            raise LoopError(f"cannot fork {', '.join(unknown)}: loop.yaml has {', '.join(self.config.services)}")

    def _claim(self, name: str) -> None:
        """This process deploys the sandbox now (a resumed run the killed one's): it owns it until ready, and
        forks a killed deploy left starting (recorded or not yet) are stopped."""
        with self.registry.edit() as data:
            record = data.sandboxes.get(name)
            if record is None:
                return
            leftovers, record.starting = list(record.starting.values()), {}
            record.owner, record.owner_run = processes.record_of(os.getpid()), owned.current_run() or record.owner_run
        for fork in leftovers:
            processes.stop(fork)
        local_baseline.stop_tagged(self.registry, {name}, keep={fork.pid for fork in record.forks.values()})

    def _starting(self, name: str, service: str, fork: ServiceProcess | None) -> None:
        """Record a fork as spawned (None: forget it); before it is healthy, so a kill leaves its record."""
        with self.registry.edit() as data:
            record = data.sandboxes.get(name)
            if record is not None and fork is not None:
                record.starting[service] = fork
            elif record is not None:
                record.starting.pop(service, None)

    def _require(self, name: str) -> SandboxRecord:
        record = self.registry.read().sandboxes.get(name)
        if record is None:
            raise LoopError(f"no sandbox named {name!r}; see `loop sandbox ls`")
        return record

    def _require_baseline(self) -> BaselineRecord:
        baseline = self.registry.read().baseline
        if baseline is None or not baseline.ready or not self._baseline_alive(baseline):
            raise LoopError("the baseline is not up; run `loop sandbox baseline up`")
        return baseline

    def _baseline_alive(self, baseline: BaselineRecord) -> bool:
        return processes.alive(baseline.router) and all(processes.alive(s) for s in baseline.services.values())

    def _unchanged(self, fork: ServiceProcess | None, service: str, source: Path) -> bool:
        if fork is None or Path(fork.source) != source.resolve() or not processes.alive(fork):
            return False
        return fork.code_hash == process.code_hash(source.resolve(), self.config.services[service].path)

    def _router_urls(self, baseline: BaselineRecord | None) -> dict[str, str]:
        return local_baseline.router_urls(baseline)

    def _deploy(self, name: str, forks: dict[str, Path], baseline: BaselineRecord) -> None:
        """Start the forks in `depends_on` waves. Each wave's healthy forks are routed before the next
        starts, so a fork that calls its dependency with the route key at start reaches that one's fork;
        after a failed wave no later one starts (those services keep what they had)."""
        record = self._require(name)
        log_dir = Path(record.log_dir)
        for wave in services.waves(self.config.services, forks):
            launched: dict[str, process.Started] = {}
            fresh: dict[str, ServiceProcess] = {}
            try:
                for service in wave:
                    launched[service], fresh[service] = self._start_fork(
                        name, service, forks[service].resolve(), record, baseline, log_dir)
                    self._starting(name, service, fresh[service])
                    owned.kill_point("fork")
                healthy, failure = services.wait_all(launched, self.config.services)
            except BaseException:
                for service, started in launched.items():
                    processes.stop(started.record)
                    self._starting(name, service, None)
                raise
            with self.registry.edit() as data:
                current = data.sandboxes.get(name)
                if current is not None:
                    for service in wave:
                        current.starting.pop(service, None)
                    superseded = [current.forks.pop(s) for s in wave if s in current.forks]
                    current.forks.update({service: fresh[service] for service in healthy})
            if current is None:
                for started in launched.values():
                    processes.stop(started.record)
                raise LoopError(f"sandbox {name!r} was removed while it was being deployed")
            for old in superseded:
                processes.stop(old)
            if failure is not None:
                raise failure

    def _start_fork(
        self, name: str, service: str, source: Path, record: SandboxRecord, baseline: BaselineRecord, log_dir: Path,
    ) -> tuple[process.Started, ServiceProcess]:
        config = self.config.services[service]
        db_path: Path | None = None
        if config.database is not None:
            previous = record.forks.get(service)
            if previous is not None and previous.db_path:
                db_path = Path(previous.db_path)  # a restarted fork keeps the sandbox's branch
            else:
                parent = baseline.services[service].db_path if service in baseline.services else None
                db_path = services.branch_database(
                    self._sandbox_dir(name) / "data" / service / Path(config.database.path).name,
                    parent=Path(parent) if parent else None, seed=source / config.database.path,
                )
        return services.start(
            service, config, source=source, log_path=log_dir / f"{service}.log", db_path=db_path,
            router_urls=self._router_urls(baseline), tag=(str(self.registry.path), name),
            confinement=self.confinement, home=self._sandbox_dir(name) / "home" / service,
            fork_of=(name, record.route_key),
        )

    def _mark_ready(self, name: str) -> SandboxInfo:
        with self.registry.edit() as data:
            record = data.sandboxes[name]
            record.ready = True
            record.owner = self._owner()  # whoever deploys last owns it (e.g. `loop resume`)
            baseline = data.baseline
        return self._info(record, baseline)

    def _info(self, record: SandboxRecord, baseline: BaselineRecord | None) -> SandboxInfo:
        urls = self._router_urls(baseline)
        entry = next(iter(urls.values()), "")
        key = record.route_key
        return SandboxInfo(
            name=record.name, backend=self.name, route_key=key, router_url=entry, service_urls=urls,
            routing_headers=routing_headers(key, self.config.sandbox.route_header),
            link=f"{entry}/__loop/preview?key={key}" if entry else None,
            created_at=record.created_at, expires_at=record.expires_at,
            forks={
                service: ForkInfo(
                    service=service, url=fork.url, pid=fork.pid, source=fork.source,
                    code_hash=fork.code_hash, log_path=fork.log_path,
                )
                for service, fork in record.forks.items()
            },
        )
