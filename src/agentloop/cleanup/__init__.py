"""`loop sandbox gc` beyond the sandboxes: what finished runs leave behind, kept for `retention.days`.

- **Runs** (`cleanup.runs`): the worktree and the branch of every failed, errored, killed, interrupted
  and published run -- never of a running one -- and, past the retention, the run's record. A branch
  whose pull request is open is kept (the local forge's pull request *is* the branch; a GitHub one is
  kept until the retention has passed).
- **The App's checkouts** (`cleanup.clones`): under `<workdir>/repos/<owner>/<name>/`, job and run
  worktrees whose job is done, run records past the retention, and the whole repository once no job
  of it is queued or running and it has been idle for the retention.
- **Base results** (`cleanup.base_results`): the cached base runs, `<state>/base-results/<commit>/` for
  base commits computed before the retention, or beyond the newest `retention.base_results`; never the
  current base's, never one a validation is computing. All of `<state>/baseline-results/`, the same cache
  as older versions of loop named it.

Every decision is an `Item` (what, why, and whether it went): printed by the CLI and logged here. gc only
ever deletes paths under loop's own directories and git branches under loop's branch prefix, whatever a
record says.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

log = logging.getLogger(__name__)

Action = Literal["removed", "would remove", "kept"]
DAY = 86400.0


@dataclass(frozen=True)
class Item:
    """One thing gc removed (or, with --dry-run, would remove), or kept on purpose, and why."""

    action: Action
    kind: str  # sandbox, worktree, branch, record, clone, base-results
    what: str
    why: str

    def line(self) -> str:
        return f"{self.action} {self.kind} {self.what}" + (f" ({self.why})" if self.why else "")

    def as_json(self) -> dict[str, Any]:
        return {"action": self.action, "kind": self.kind, "what": self.what, "why": self.why}


class Collector:
    """Gathers the items of one gc and logs each as it is decided."""

    def __init__(self, *, dry_run: bool) -> None:
        self.dry_run = dry_run
        self.items: list[Item] = []

    def removed(self, kind: str, what: str, why: str) -> None:
        item = Item("would remove" if self.dry_run else "removed", kind, what, why)
        log.info("gc: %s", item.line())
        self.items.append(item)

    def kept(self, kind: str, what: str, why: str) -> None:
        item = Item("kept", kind, what, why)
        log.info("gc: %s", item.line())
        self.items.append(item)


def days(seconds: float) -> str:
    """`14 days`, `1 day`, `0.5 days`: a retention or an age, as the user set it."""
    count = seconds / DAY
    text = f"{count:g}" if count >= 1 or count == 0 else f"{count:.2g}"
    return f"{text} day" + ("" if text == "1" else "s")
