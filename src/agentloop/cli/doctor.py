"""`loop doctor`: one line per check, in order, with what to do when it fails; exit 0 only when a
`loop fix` could succeed (every check passed or only warned), 1 when any check failed."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from agentloop.config import DEFAULT_MODEL
from agentloop.confine import ALLOW_UNCONFINED_ENV
from agentloop.doctor.checks import Check, passed, run_doctor
from agentloop.errors import ConfigError

_MARKS = {"ok": ("✓", "green"), "warn": ("!", "yellow"), "fail": ("✗", "red"), "skip": ("-", "dim")}
_NAME_WIDTH = 16


def doctor(
    repo: Annotated[Path, typer.Option("--repo", help="The target repository (default: the current directory).")]
    = Path("."),
    model: Annotated[str | None, typer.Option(help="Check this model instead of loop.yaml's agent.model.")] = None,
    skip_services: Annotated[bool, typer.Option("--skip-services",
                                                help="Do not start the services or run the suites.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="A JSON list of {check, status, detail, fix}.")] = False,
    allow_unconfined: Annotated[bool, typer.Option(
        "--allow-unconfined", help="Where bubblewrap is not usable, run services and suites without a jail.",
    )] = False,
) -> None:
    """Check that `loop fix` can run here: git, bubblewrap, loop.yaml, the model, services, suites, forge."""
    if allow_unconfined:  # reaches the services and suites doctor starts, as it does for `loop fix`
        os.environ[ALLOW_UNCONFINED_ENV] = "1"
    if model is not None and not model.strip():
        raise ConfigError(f"--model is empty; give a Claude model id (e.g. {DEFAULT_MODEL}) or replay:FILE, "
                          "or leave --model out to check loop.yaml's agent.model")
    out = Console(highlight=False)
    if as_json:
        checks = run_doctor(repo, model=model, skip_services=skip_services)
        typer.echo(json.dumps([check.model_dump() for check in checks], indent=2))
    else:
        checks = _rendered(out, repo, model=model, skip_services=skip_services)
        _summary(out, checks)
    raise typer.Exit(0 if passed(checks) else 1)


def _rendered(out: Console, repo: Path, *, model: str | None, skip_services: bool) -> list[Check]:
    if not out.is_terminal:
        return run_doctor(repo, model=model, skip_services=skip_services, report=lambda check: _line(out, check))
    with out.status("loop doctor: checking …") as spinner:
        def report(check: Check) -> None:
            _line(out, check)
            spinner.update(f"loop doctor: checked {check.check} …")

        return run_doctor(repo, model=model, skip_services=skip_services, report=report)


def _line(out: Console, check: Check) -> None:
    mark, colour = _MARKS[check.status]
    # Text, not markup: details hold paths, brackets and `[REDACTED]`
    out.print(Text(f"{mark} ", style=colour) + Text(f"{check.check:<{_NAME_WIDTH}} ", style="bold")
              + Text(check.detail, style="dim" if check.status == "skip" else ""), soft_wrap=True)
    if check.fix and check.status in ("fail", "warn"):
        out.print(Text(" " * (_NAME_WIDTH + 3) + "fix: ", style=colour) + Text(check.fix), soft_wrap=True)


def _summary(out: Console, checks: list[Check]) -> None:
    failed = [check.check for check in checks if check.status == "fail"]
    warned = sum(1 for check in checks if check.status == "warn")
    ok = sum(1 for check in checks if check.status == "ok")
    counts = f"{ok} ok, {warned} warning{'s' if warned != 1 else ''}, {len(failed)} failed"
    if failed:
        out.print(Text(f"\n{counts}: `loop fix` cannot succeed until {', '.join(failed)} "
                       f"{'is' if len(failed) == 1 else 'are'} fixed; then run `loop doctor` again", style="red"),
                  soft_wrap=True)
    else:
        out.print(Text(f"\n{counts}: ready for `loop fix ISSUE`", style="green"), soft_wrap=True)
