"""`<state>/baseline-results/<commit>/`: the cached full baseline runs, one folder per base commit.

Kept: the current base's (the head of `base_branch`: the next run reads it) and the newest
`retention.baseline_results` commits computed within the retention. A commit whose entry a validation is
computing right now (it holds the entry's lock) is left alone; the others are removed while gc holds
every lock of the commit, so no run reads an entry half-deleted.
"""

from __future__ import annotations

import fcntl
import json
import re
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from agentloop import git
from agentloop.cleanup import DAY, Collector, days
from agentloop.config import LoopConfig
from agentloop.errors import LoopError
from agentloop.paths import state_dir
from agentloop.validation.baseline_cache import CACHE_DIR

_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


class _Busy(Exception):
    """A lock of the entry is held: a validation is computing it."""


def collect_baseline_results(repo: Path, config: LoopConfig, out: Collector, *, now: float) -> None:
    root = state_dir(repo) / CACHE_DIR
    if not root.is_dir():
        return
    retention, keep = config.retention.days * DAY, config.retention.baseline_results
    try:
        current = git.resolve_base(git.open_repo(repo), config.base_branch)
    except LoopError:
        current = ""
    entries = sorted(((_computed(path), path) for path in root.iterdir()
                      if _COMMIT.fullmatch(path.name) and path.is_dir() and not path.is_symlink()), reverse=True)
    kept = 0
    for computed, path in entries:
        if path.name == current:
            kept += 1
            continue
        age = now - computed
        if age > retention:
            why = f"base commit {path.name[:12]} computed {days(age)} ago, older than the retention of {days(retention)}"
        elif kept >= keep:
            why = f"base commit {path.name[:12]} is beyond the newest {keep} kept by retention.baseline_results"
        else:
            kept += 1
            continue
        try:
            with _all_locks(path):
                if not out.dry_run:
                    shutil.rmtree(path)
        except _Busy:
            out.kept("baseline-results", str(path), "a validation is computing it now")
            continue
        except OSError as exc:
            out.kept("baseline-results", str(path), f"could not delete it: {exc.strerror or exc}")
            continue
        out.removed("baseline-results", str(path), why)


def _computed(path: Path) -> float:
    """When the entry's newest suite result was computed (the folder's time for one without any)."""
    times = [path.stat().st_mtime]
    for results in path.glob("*/results.json"):
        try:
            source = json.loads(results.read_text(encoding="utf-8")).get("source") or {}
            times.append(float(source.get("computed_at") or 0.0))
        except (OSError, ValueError, AttributeError, TypeError):
            continue
    return max(times) if len(times) == 1 else max(times[1:])


@contextmanager
def _all_locks(path: Path) -> Iterator[None]:
    """Every `<config hash>.lock` of the commit held (not waited for: a held one means busy)."""
    with ExitStack() as stack:
        for lock in sorted(path.glob("*.lock")):
            if lock.is_symlink():
                continue
            handle = stack.enter_context(open(lock, "a+b"))
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise _Busy(str(lock)) from None
            stack.callback(fcntl.flock, handle.fileno(), fcntl.LOCK_UN)
        yield
