"""The live terminal view of a run: one line per finished step, a spinner for the running one.

On a terminal the spinner shows the node, iteration, elapsed time, tokens and dollars as they grow;
in a plain log (CI, a pipe) only the finished-step lines are written, so the output stays readable.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.status import Status


def _money(value: float) -> str:
    return f"${value:.4f}" if value < 1 else f"${value:.2f}"


def _tokens(value: int) -> str:
    return f"{value / 1000:.1f}k tok" if value >= 1000 else f"{value} tok"


class LiveDisplay:
    """A progress callback (`RunContext.progress`) that renders events to a rich console."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True, highlight=False)
        self.started = time.time()
        self.cost = 0.0
        self.tokens = 0
        self._status: Status | None = None
        self._node = ""
        self._iteration = 0
        self._link: str | None = None

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("kind")
        if kind == "node":
            self._on_node(event)
        elif kind == "usage":
            self.cost, self.tokens = float(event["cost_usd"]), int(event["tokens"])
            self._refresh()
        elif kind == "sandbox" and event.get("link") and event["link"] != self._link:
            self._link = event["link"]
            self._line(f"[dim]sandbox {event['sandbox']}  preview: {event['link']}[/dim]")
        elif kind == "verdict":
            colour = "green" if event["passed"] else "red"
            for reason in event.get("reasons") or []:
                self._line(f"[{colour}]  · {reason}[/{colour}]")
        elif kind == "done":
            self._stop_spinner()

    def _elapsed(self) -> str:
        seconds = int(time.time() - self.started)
        return f"{seconds // 60:02d}:{seconds % 60:02d}"

    def _line(self, text: str) -> None:
        self.console.print(text)

    def _on_node(self, event: dict[str, Any]) -> None:
        self._node, self._iteration = event["node"], int(event.get("iteration") or 0)
        if event["event"] == "start":
            self._refresh()
            return
        outcome = str(event.get("outcome", "ok"))
        colour = "red" if outcome in ("failed", "budget spent") or outcome.startswith("error") else "green"
        step = f"it {self._iteration}" if self._iteration else "    "
        self._line(
            f"[dim]{self._elapsed()}[/dim]  {step}  [bold]{self._node:<14}[/bold] [{colour}]{outcome:<12}[/{colour}]"
            f" {event.get('duration', 0):6.1f}s   {_money(self.cost)}  {_tokens(self.tokens)}"
        )

    def _refresh(self) -> None:
        if not self.console.is_terminal:
            return
        text = (
            f"{self._elapsed()}  it {self._iteration}  {self._node} …  {_money(self.cost)}  {_tokens(self.tokens)}"
        )
        if self._status is None:
            self._status = self.console.status(text)
            self._status.start()
        else:
            self._status.update(text)

    def _stop_spinner(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
