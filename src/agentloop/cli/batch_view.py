"""The batch's live table: a rich table redrawn on a terminal, one line per change in a plain log."""

from __future__ import annotations

import time

from rich.console import Console
from rich.live import Live
from rich.table import Table

from agentloop.batch.run import BatchRecord


def table(record: BatchRecord) -> Table:
    grid = Table("issue", "run", "node", "iter", "elapsed", "tokens", "dollars", "status", title=f"batch {record.id}")
    for item in record.items:
        elapsed = item.duration if item.started_at else 0.0
        grid.add_row(item.issue, item.run_id, item.node or "-", str(item.iteration), f"{elapsed:.0f}s",
                     str(item.tokens), f"${item.cost_usd:.4f}", item.status)
    return grid


class BatchView:
    def __init__(self, console: Console):
        self.console = console
        self._live: Live | None = None
        self._seen: dict[str, tuple[str, str, int]] = {}
        self.started = time.time()

    def __call__(self, record: BatchRecord) -> None:
        if self.console.is_terminal:
            if self._live is None:
                self._live = Live(table(record), console=self.console, refresh_per_second=4)
                self._live.start()
            self._live.update(table(record))
            if record.ended_at is not None:
                self._live.stop()
            return
        for item in record.items:
            state = (item.status, item.node, item.iteration)
            if self._seen.get(item.run_id) != state:
                self._seen[item.run_id] = state
                self.console.print(
                    f"{time.time() - self.started:7.1f}s  issue {item.issue:<8} {item.run_id}  {item.status:<11} "
                    f"{item.node or '-':<14} it {item.iteration}  ${item.cost_usd:.4f}", soft_wrap=True
                )

    def summary(self, record: BatchRecord) -> None:
        totals = record.totals()
        self.console.print(
            f"batch {record.id}: {totals['resolved']} resolved, {totals['failed']} failed, "
            f"{totals['interrupted']} left; cost ${totals['cost_usd']:.4f}; wall {totals['wall_seconds']:.1f}s, "
            f"runs {totals['run_seconds']:.1f}s (speed-up x{totals['speedup']})", soft_wrap=True
        )
        for pull in totals["pull_requests"]:
            self.console.print(f"  pull request: {pull}", soft_wrap=True)
