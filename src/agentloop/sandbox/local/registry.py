"""On-disk records of the local baseline and sandboxes: processes (pid + start time), ports, owners, TTL.

One JSON file, `<state>/local/registry.json`, read by every `loop` command and by the router process
(which reloads it whenever it changes, so the routing table is always the registry). Writers take an
exclusive `flock` on `registry.lock` and replace the file atomically, so readers never see half a file.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import BaseModel, Field

from agentloop.processes import ProcessRecord

BASELINE = "__baseline__"


class ServiceProcess(ProcessRecord):
    service: str
    port: int
    url: str
    source: str
    code_hash: str = ""
    log_path: str
    db_path: str | None = None


class BaselineRecord(BaseModel):
    commit: str
    worktree: str
    started_at: float
    owner: ProcessRecord | None = Field(default=None, description="The `loop` process that started it.")
    owner_run: str | None = Field(default=None, description="The run that started (or took over) it.")
    router: ProcessRecord | None = None
    router_ports: dict[str, int] = Field(default_factory=dict)
    services: dict[str, ServiceProcess] = Field(default_factory=dict)
    ready: bool = False


class SandboxRecord(BaseModel):
    name: str
    route_key: str
    created_at: float
    expires_at: float
    owner: ProcessRecord | None = None
    owner_run: str | None = None
    log_dir: str
    forks: dict[str, ServiceProcess] = Field(default_factory=dict)
    # forks spawned and not yet healthy: recorded (so stopped with the sandbox) but not routed to
    starting: dict[str, ServiceProcess] = Field(default_factory=dict)
    ready: bool = False


class RegistryData(BaseModel):
    baseline: BaselineRecord | None = None
    sandboxes: dict[str, SandboxRecord] = Field(default_factory=dict)


class Registry:
    """Locked read-modify-write access to the registry file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / "registry.json"
        self._lock_path = root / "registry.lock"
        root.mkdir(parents=True, exist_ok=True)

    def read(self) -> RegistryData:
        """The current records (no lock needed: the file is only ever replaced whole)."""
        try:
            return RegistryData.model_validate_json(self.path.read_bytes())
        except FileNotFoundError:
            return RegistryData()

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive across processes. Not re-entrant: inside it use `read`/`write`, not `edit`."""
        with self._lock_path.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextmanager
    def edit(self) -> Iterator[RegistryData]:
        """Yield the current data under the lock; whatever the block leaves in it is written back."""
        with self.locked():
            data = self.read()
            yield data
            self.write(data)

    def write(self, data: RegistryData) -> None:
        payload = json.dumps(data.model_dump(mode="json"), indent=1).encode()
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".registry.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(payload)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
