"""`loop plan run FILE --sandbox NAME`: one plan by hand against a running sandbox.

Exit codes: 0 every step passed, 1 a step failed, 2 the plan could not run (bad file, no sandbox).
Each step's request and response are recorded under `<state dir>/plan-runs/`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from agentloop import paths
from agentloop.config import load_config
from agentloop.errors import LoopError
from agentloop.plan_file import load_plan
from agentloop.results import SuiteResult
from agentloop.sandbox.factory import open_backend
from agentloop.validation.plans import run_plan
from agentloop.validation.suites import safe_name

app = typer.Typer(help="Plans: governed HTTP steps run against a sandbox.", no_args_is_help=True)


@app.command("run")
def run(
    file: Annotated[Path, typer.Argument(help="The plan (YAML).")],
    sandbox: Annotated[str, typer.Option("--sandbox", help="The sandbox to run it against (`loop sandbox ls`).")],
    repo: Annotated[Path, typer.Option("--repo", help="The target repository (default: the current directory).")] = Path("."),
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Run a plan's steps against a sandbox, with its routing headers on every request."""
    out, err = Console(), Console(stderr=True)
    try:
        result, records = _run(file, sandbox, repo)
    except LoopError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    if as_json:
        out.print_json(json.dumps({**result.model_dump(mode="json"), "records": str(records)}))
    else:
        for test in result.tests:
            mark = {"passed": "[green]✓[/green]", "skipped": "[yellow]–[/yellow]"}.get(test.outcome, "[red]✗[/red]")
            detail = f": {escape(test.message)}" if test.message else ""
            out.print(f"{mark} {escape(test.name)} ({test.duration:.2f}s){detail}")
        out.print(f"requests and responses: {records}")
    raise typer.Exit(0 if not result.failed else 1)


def _run(file: Path, sandbox_name: str, repo: Path) -> tuple[SuiteResult, Path]:
    plan = load_plan(file)  # a bad file is reported before anything else is touched
    root = paths.repo_root(repo)
    config = load_config(root)
    backend = open_backend(root, config)
    sandbox = backend.get(sandbox_name)
    if sandbox is None:
        raise LoopError(f"no sandbox named {sandbox_name!r}; `loop sandbox ls` lists them, `loop sandbox create` makes one")
    records = paths.state_dir(root) / "plan-runs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{safe_name(sandbox_name)}"
    health = {name: service.health for name, service in config.services.items()}
    result = run_plan(file.resolve(), sandbox=sandbox, backend=backend, out_dir=records, health_paths=health)
    return result, records / safe_name(plan.name)
