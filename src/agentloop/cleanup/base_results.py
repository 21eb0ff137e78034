"""`<state>/base-results/<commit>/`: the cached base runs (every suite in full at a base commit), one
folder per base commit.

Kept: the current base's (the head of `base_branch`: the next run reads it) and the newest
`retention.base_results` commits computed within the retention. A commit whose entry a validation is
computing right now (it holds the entry's lock) is left alone; the others are removed while gc holds
every lock of the commit, so no run reads an entry half-deleted. `<state>/baseline-results/`, where older
versions of loop kept the same cache, is never read again: every entry of it goes (a busy one on a later gc).
"""

from __future__ import annotations

import fcntl
import json
import re
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

from agentloop import git
from agentloop.cleanup import DAY, Collector, days
from agentloop.config import LoopConfig
from agentloop.errors import LoopError
from agentloop.paths import state_dir
from agentloop.validation.base_results import CACHE_DIR, OLD_CACHE_DIR

KIND = "base-results"
_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


class _Busy(Exception):
    """A lock of the entry is held: a validation is computing it."""


def collect_base_results(repo: Path, config: LoopConfig, out: Collector, *, now: float) -> None:
    _collect_current(state_dir(repo) / CACHE_DIR, repo, config, out, now=now)
    _collect_old(state_dir(repo) / OLD_CACHE_DIR, out)


def _collect_current(root: Path, repo: Path, config: LoopConfig, out: Collector, *, now: float) -> None:
    if not root.is_dir():
        return
    retention, keep = config.retention.days * DAY, config.retention.base_results
    try:
        current = git.resolve_base(git.open_repo(repo), config.base_branch)
    except LoopError:
        current = ""
    entries = sorted(((_computed(path), path) for path in _entries(root)), reverse=True)
    kept = 0
    for computed, path in entries:
        if path.name == current:
            kept += 1
            continue
        age = now - computed
        if age > retention:
            why = f"base commit {path.name[:12]} computed {days(age)} ago, older than the retention of {days(retention)}"
        elif kept >= keep:
            why = f"base commit {path.name[:12]} is beyond the newest {keep} kept by retention.base_results"
        else:
            kept += 1
            continue
        _remove(path, out, why)


def _collect_old(root: Path, out: Collector) -> None:
    """The cache as older versions of loop named it: nothing reads it any more."""
    if not root.is_dir() or root.is_symlink():
        return
    for path in _entries(root):
        _remove(path, out, f"base commit {path.name[:12]} in {OLD_CACHE_DIR}/, the cache of an older version "
                           f"of loop (now {CACHE_DIR}/)")
    if not out.dry_run and not any(root.iterdir()):
        with suppress(OSError):  # an older loop still running may have just made an entry
            root.rmdir()


def _entries(root: Path) -> list[Path]:
    return [path for path in root.iterdir()
            if _COMMIT.fullmatch(path.name) and path.is_dir() and not path.is_symlink()]


def _remove(path: Path, out: Collector, why: str) -> None:
    try:
        with _all_locks(path):
            if not out.dry_run:
                shutil.rmtree(path)
    except _Busy:
        out.kept(KIND, str(path), "a validation is computing it now")
        return
    except OSError as exc:
        out.kept(KIND, str(path), f"could not delete it: {exc.strerror or exc}")
        return
    out.removed(KIND, str(path), why)


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
