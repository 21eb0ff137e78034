"""The local executor: each run is its own `loop fix --run-id ID` (or `loop resume ID`) process, in its
own session so a terminal's Ctrl-C reaches the batch only and the batch decides how each run stops."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO

from agentloop.batch.run import BatchItem
from agentloop.runs.folder import RunSummary


class LocalRun:
    def __init__(self, proc: subprocess.Popen[bytes], log: IO[bytes]):
        self.proc, self.log = proc, log

    def poll(self) -> int | None:
        return self.proc.poll()

    def interrupt(self) -> None:
        # SIGINT to the run's process only: it stops its own suites and services on the way out
        self._signal(lambda: os.kill(self.proc.pid, signal.SIGINT))

    def kill(self) -> None:
        self._signal(lambda: os.killpg(self.proc.pid, signal.SIGKILL))
        self.proc.wait()

    def close(self) -> None:
        self.log.close()

    @staticmethod
    def _signal(send: Callable[[], None]) -> None:
        try:
            send()
        except ProcessLookupError:
            pass


class LocalExecutor:
    def __init__(self, repo: Path, runs_root: Path, batch_id: str, model: str | None):
        self.repo, self.runs_root, self.batch_id, self.model = repo, runs_root, batch_id, model
        self.logs = runs_root / f"batch-{batch_id}"
        self.logs.mkdir(parents=True, exist_ok=True)

    def command(self, item: BatchItem) -> list[str]:
        base = [sys.executable, "-m", "agentloop.cli.main"]
        if (self.runs_root / item.run_id / "run.json").exists():
            return [*base, "resume", item.run_id, "--repo", str(self.repo)]
        command = [*base, "fix", item.issue, "--run-id", item.run_id, "--repo", str(self.repo)]
        return command + (["--model", self.model] if self.model else [])

    def start(self, item: BatchItem) -> LocalRun:
        log = (self.logs / f"{item.run_id}.log").open("ab")
        env = {**os.environ, "LOOP_RUNS_DIR": str(self.runs_root), "LOOP_BATCH": self.batch_id}
        proc = subprocess.Popen(self.command(item), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
        return LocalRun(proc, log)

    def summary(self, run_id: str) -> RunSummary | None:
        path = self.runs_root / run_id / "run.json"
        try:
            return RunSummary.model_validate_json(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # not written yet, or caught mid-replace
            return None

    def last_node(self, run_id: str) -> str:
        path = self.runs_root / run_id / "events.jsonl"
        if not path.exists():
            return ""
        lines = path.read_text(encoding="utf-8").splitlines()
        try:
            return str(json.loads(lines[-1])["node"]) if lines else ""
        except (ValueError, KeyError):
            return ""
