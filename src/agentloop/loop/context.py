"""What the nodes are given besides the state: the repository, its config, the run record and the
backends. Passed to the graph as LangGraph's runtime context, so it is never checkpointed; a resumed
run builds a fresh one from disk."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentloop.agent.base import Coder
from agentloop.config import LoopConfig
from agentloop.forge.base import Forge
from agentloop.redact import Redactor
from agentloop.runs.folder import RunFolder
from agentloop.sandbox.base import SandboxBackend

ProgressCallback = Callable[[dict[str, Any]], None]


@dataclass
class RunContext:
    repo: Path
    run_id: str
    config: LoopConfig
    record: RunFolder
    forge: Forge
    model: str
    # the run's known secrets and secret patterns, masked in all the model is sent and all that is recorded
    redactor: Redactor = field(default_factory=Redactor.from_environment)
    record_cassette: Path | None = None
    progress: ProgressCallback | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    keep_sandbox: bool = False
    _backend: SandboxBackend | None = None
    _coder: Coder | None = None

    @property
    def backend(self) -> SandboxBackend:
        if self._backend is None:
            from agentloop.sandbox.factory import open_backend

            self._backend = open_backend(self.repo, self.config)
        return self._backend

    @property
    def coder(self) -> Coder:
        if self._coder is None:
            from agentloop.agent.factory import make_coder

            self._coder = make_coder(
                self.model,
                config=self.config,
                transcript_path=self.record.transcript,
                record_path=self.record_cassette,
                redactor=self.redactor,
            )
        return self._coder

    @property
    def has_services(self) -> bool:
        return bool(self.config.services)

    def emit(self, **event: Any) -> None:
        """Tell the live display (and batch table) what is happening; never fails the run."""
        if self.progress is not None:
            try:
                self.progress({"run_id": self.run_id, "time": time.time(), **event})
            except Exception:  # noqa: BLE001, S110 -- a broken display must not break a run
                pass
