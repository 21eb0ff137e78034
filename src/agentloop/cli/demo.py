"""`loop demo`: the whole loop on the bundled example system, in a fresh git repository."""

from __future__ import annotations

import json
import os
from pathlib import Path

from rich.console import Console
from rich.panel import Panel

from agentloop.cli.display import LiveDisplay
from agentloop.config import PolicyConfig
from agentloop.confine import ALLOW_UNCONFINED_ENV, Confinement
from agentloop.examples import examples_dir, make_demo_repo
from agentloop.loop.runner import RunOutcome, fix
from agentloop.paths import state_dir

SCRIPTED_NOTE = (
    "The agent's edits are [bold]scripted[/bold] (a recorded transcript replayed, no API key needed);\n"
    "the sandbox, the services, the tests, the logs and the pull request are [bold]real[/bold].\n"
    "With ANTHROPIC_API_KEY set, `loop demo --model <claude model>` runs the same with a real model."
)


def run_demo(*, model: str | None, directory: Path | None, console: Console) -> RunOutcome:
    repo = make_demo_repo(directory)
    cassette = examples_dir() / "cassettes" / "shop-issue-1.json"
    chosen = model or f"replay:{cassette}"
    console.print(Panel.fit(
        (SCRIPTED_NOTE if chosen.startswith("replay:") else f"A real model: {chosen}.")
        + f"\n\nrepository: {repo}\nissue #1: {(repo / '.loop/issues/1.md').read_text().splitlines()[0].lstrip('# ')}",
        title="loop demo",
    ))
    if chosen.startswith("replay:") and not Confinement(PolicyConfig()).confined:
        # The bundled example and its scripted agent are ours; a real model's code would not be.
        os.environ[ALLOW_UNCONFINED_ENV] = "1"
        console.print("[yellow]warning:[/yellow] bubblewrap is not usable here, so the demo's services and tests "
                      "run unconfined (the scripted example is trusted; a real run refuses without "
                      "--allow-unconfined). Install bubblewrap: `make system-deps`.")
    outcome = fix(repo, "1", model=chosen, progress=LiveDisplay(console))
    report = outcome.run_dir / "report.md"
    if report.exists():
        head = "\n".join(report.read_text(encoding="utf-8").splitlines()[:12])
        console.print(Panel(head, title="pull request body (first lines)", expand=False))
    _show_home(outcome, repo, console)
    console.print(f"Look closer: `loop show {outcome.run_id} --repo {repo}`, `loop verify {outcome.run_id} --repo {repo}`,"
                  f" `git -C {repo} log --oneline --all`")
    return outcome


def _show_home(outcome: RunOutcome, repo: Path, console: Console) -> None:
    """The run's pull request (a draft until proven) and its check runs, as the local forge keeps them."""
    if outcome.pull_request is not None:
        state = "a draft" if outcome.pull_request.draft else "ready for review"
        console.print(f"pull request ({state}): {outcome.pull_request.url}")
    for path in sorted((state_dir(repo) / "checks").glob(f"{outcome.run_id}-*.json")):
        check = json.loads(path.read_text(encoding="utf-8"))
        console.print(f"check run `{check['name']}` on {str(check['head_sha'])[:12]}: {check['status']}, "
                      f"{check.get('conclusion')} ({path})")
