"""`loop serve`'s worker processes: runs happen outside the process that answers webhooks.

The server spawns `count` processes (`python -m agentloop.app.pool`), each running one job at a time
through `Worker`. A run that is busy cannot take the answering process's interpreter lock, and one that
crashes (even SIGKILLs its process) takes down only its worker: the pool sees it exit, logs it and
starts another in the same slot, whose first act is to put the job it was running back in the queue
(or give up on it after the queue's `max_attempts`).

The server talks to its workers through their stdin, one word a line: `wake` (a job was queued) and
`cancel <repo> <issue>` (a `/loop stop`). End of input means the server is gone: the worker stops
its run as on shutdown (the job stays `running` under its name, and is resumed when a server starts
again) and exits, so that no worker outlives its server.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import queue as queues
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from agentloop.app.queue import JobQueue

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 30.0  # well inside the queue's 300 s, after which a silent job is taken back
_RESPAWN_MAX_DELAY = 30.0


class WorkerPool:
    """The server side: spawn, feed, watch and stop `count` worker processes."""

    def __init__(
        self,
        *,
        queue: str,
        workdir: Path,
        owner: str,
        count: int,
        env: Mapping[str, str],
        api_url: str,
        model: str | None = None,
        jobs: JobQueue | None = None,
    ):
        self.queue, self.workdir, self.owner, self.count = queue, workdir, owner, count
        self.env = dict(env)
        self.api_url, self.model = api_url, model
        self._jobs = jobs
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._started: dict[int, float] = {}
        self._restarts: dict[int, tuple[int, float]] = {}  # slot -> (crashes in a row, next start time)
        self._messages: queues.SimpleQueue[str] = queues.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def slot_owner(self, slot: int) -> str:
        return f"{self.owner}#w{slot}"

    def start(self) -> None:
        if self.count < 1:
            log.info("no worker processes (--workers 0): jobs wait for a server that has some")
            return
        if self._jobs is not None:  # the previous life's jobs, whatever slot count it had
            self._jobs.recover(self.owner)
        self._stop.clear()
        for slot in range(self.count):
            self._spawn(slot)
        self._thread = threading.Thread(target=self._supervise, name="loop-worker-pool", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        """Close every worker's input (it stops its run and exits), then make sure it did."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        procs = list(self._procs.values())
        for proc in procs:
            _close(proc.stdin)
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker %s did not stop within %.0fs; killing it", proc.pid, timeout)
                proc.kill()
                proc.wait(5)
        self._procs.clear()

    def notify(self) -> None:
        """A job was queued. Never blocks the request: the supervising thread passes it on."""
        self._wake.set()

    def cancel(self, repo: str, issue: int) -> bool:
        """Ask the workers to stop the run on `repo#issue`; True when one of ours is running it."""
        if not self._procs:
            return False
        self._messages.put(f"cancel {repo} {issue}")
        self._wake.set()
        job = self._jobs.active(repo, issue) if self._jobs is not None else None
        return bool(job and job.status == "running" and (job.owner or "").startswith(self.owner + "#"))

    # -- supervising thread ------------------------------------------------------------------------

    def _supervise(self) -> None:
        while not self._stop.is_set():
            woken = self._wake.wait(1.0)
            self._wake.clear()
            if self._stop.is_set():
                return
            lines = ["wake"] if woken else []
            while not self._messages.empty():
                lines.append(self._messages.get())
            for slot in range(self.count):
                self._check(slot)
                proc = self._procs.get(slot)
                if lines and proc is not None and proc.poll() is None:
                    _send(proc, lines)

    def _check(self, slot: int) -> None:
        proc = self._procs.get(slot)
        if proc is not None:
            code = proc.poll()
            if code is None:
                return
            # a worker that ran a while before dying starts over at the shortest delay
            lived = time.monotonic() - self._started.get(slot, 0.0)
            crashes = 1 if lived > 60 else self._restarts.get(slot, (0, 0.0))[0] + 1
            delay = min(_RESPAWN_MAX_DELAY, 0.5 * 2 ** (crashes - 1))
            how = f"signal {-code}" if code < 0 else f"exit code {code}"
            log.error("worker %s (pid %s) died (%s); starting another in %.1fs", slot, proc.pid, how, delay)
            del self._procs[slot]
            self._restarts[slot] = (crashes, time.monotonic() + delay)
        _, when = self._restarts.get(slot, (0, 0.0))
        if time.monotonic() >= when:
            self._spawn(slot)

    def _spawn(self, slot: int) -> None:
        argv = [sys.executable, "-m", "agentloop.app.pool", "--queue", self.queue, "--workdir", str(self.workdir),
                "--owner", self.slot_owner(slot), "--api-url", self.api_url]
        if self.model:
            argv += ["--model", self.model]
        # the key travels in the environment, never on a command line that `ps` shows
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, env=self.env)
        self._procs[slot] = proc
        self._started[slot] = time.monotonic()
        log.info("worker %s started (pid %s)", slot, proc.pid)


def _send(proc: subprocess.Popen[bytes], lines: list[str]) -> None:
    try:
        assert proc.stdin is not None
        proc.stdin.write("".join(line + "\n" for line in lines).encode())
        proc.stdin.flush()
    except (BrokenPipeError, OSError):
        pass  # it died; _check restarts it


def _close(stream: IO[bytes] | None) -> None:
    if stream is not None:
        try:
            stream.close()
        except OSError:
            pass


# -- the worker process -----------------------------------------------------------------------------


def _runs(module_name: str) -> dict[str, Any]:
    """LOOP_TEST_RUNS=module: take `fix` and `resume` from that module instead of agentloop.loop.runner
    (how tests and the benchmark give a worker a small, real run of their own)."""
    module = importlib.import_module(module_name)
    return {"run_fix": module.fix, "run_resume": module.resume}


def worker_main(argv: list[str] | None = None) -> int:
    from agentloop.app.auth import AppAuth, load_private_key
    from agentloop.app.worker import Worker

    parser = argparse.ArgumentParser(prog="python -m agentloop.app.pool")
    for name in ("--queue", "--workdir", "--owner", "--api-url"):
        parser.add_argument(name, required=True)
    parser.add_argument("--model")
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("LOOP_LOG_LEVEL", "WARNING"),
                        format="%(levelname)s %(name)s[worker %(process)d]: %(message)s")
    auth = AppAuth(os.environ.get("GITHUB_APP_ID", ""), load_private_key(os.environ.get("GITHUB_APP_PRIVATE_KEY", "")),
                   api_url=args.api_url)
    jobs = JobQueue.open(args.queue, pool_size=2)
    seams = _runs(os.environ["LOOP_TEST_RUNS"]) if os.environ.get("LOOP_TEST_RUNS") else {}
    worker = Worker(jobs, workdir=Path(args.workdir), api_url=args.api_url, tokens=auth.token_for,
                    model=args.model, concurrency=1, owner=args.owner, **seams)
    stop = threading.Event()
    # Ctrl-C reaches the whole process group: the server decides when its workers stop (by closing stdin).
    # A handler, not SIG_IGN, which the run's own processes would inherit across exec.
    signal.signal(signal.SIGINT, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=_read_commands, args=(worker, stop), name="loop-worker-input", daemon=True).start()
    worker.start()  # first puts back the job this slot's previous process left running
    while not stop.wait(HEARTBEAT_SECONDS):
        try:
            jobs.heartbeat(args.owner)  # also while a long run goes on, so no one takes its job back
        except Exception:  # a queue hiccup must not end the worker
            log.warning("heartbeat failed", exc_info=True)
    worker.stop()
    jobs.close()
    return 0


def _read_commands(worker: Any, stop: threading.Event) -> None:
    for raw in sys.stdin.buffer:
        words = raw.decode(errors="replace").split()
        if words == ["wake"]:
            worker.notify()
        elif len(words) == 3 and words[0] == "cancel" and words[2].isdigit():
            worker.cancel(words[1], int(words[2]))
    stop.set()  # end of input: the server is gone


if __name__ == "__main__":
    sys.exit(worker_main())
