"""The `loop` command line.

Exit codes: 0 success (published, or a listing); 1 the run failed (budget spent, validation never
passed) or `verify` found differences; 2 bad input (config, issue, repo, run id) -- one line on
stderr saying what is wrong and what to do; 3 the run errored (see its record); 130 interrupted.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from agentloop.config import DEFAULT_MODEL
from agentloop.errors import ConfigError, LoopError
from agentloop.paths import repo_root, runs_dir
from agentloop.runs.folder import list_runs, open_run

if TYPE_CHECKING:
    from agentloop.loop.runner import RunOutcome

app = typer.Typer(
    name="loop",
    help="Drive a coding agent through edit -> sandbox deploy -> test -> logs -> fix, then open a pull request.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

RepoOption = Annotated[Path, typer.Option("--repo", help="The target repository (default: the current directory).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
UnconfinedOption = Annotated[bool, typer.Option(
    "--allow-unconfined",
    help="Where bubblewrap is not usable, run agent-written code without a jail (the evidence says so).",
)]


def _allow_unconfined(allowed: bool) -> None:
    """The opt-in reaches this process and every process it starts (batch runs, services)."""
    if allowed:
        os.environ["LOOP_ALLOW_UNCONFINED"] = "1"
EXIT_FOR_STATUS = {"published": 0, "failed": 1, "error": 3, "interrupted": 130, "running": 0}


def print_error(message: str) -> None:
    """One line, however long the message or narrow the terminal (scripts read the first line)."""
    line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    err.print(Text("error: ", style="red") + Text(line), soft_wrap=True)


def _model_flag(value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise ConfigError(f"--model is empty; give a Claude model id (e.g. {DEFAULT_MODEL}) or replay:FILE, "
                          "or leave --model out to use loop.yaml's agent.model")
    return value


def fail(message: str, code: int = 2) -> NoReturn:
    print_error(message)
    raise typer.Exit(code)


def _finish(outcome: RunOutcome) -> NoReturn:
    colour = {"published": "green", "failed": "yellow"}.get(outcome.status, "red")
    err.print(f"[{colour}]{outcome.status}[/{colour}]  run {outcome.run_id}  record: {outcome.run_dir}")
    if outcome.pull_request:
        kind = "draft pull request" if outcome.pull_request.draft else "pull request"
        err.print(f"{kind}: {outcome.pull_request.url}  (branch {outcome.pull_request.branch})")
    if outcome.message:  # one line, however long, and never read as markup (paths, `[REDACTED]`)
        err.print(Text(outcome.message), soft_wrap=True)
    raise typer.Exit(EXIT_FOR_STATUS[outcome.status])


@app.command()
def fix(
    issue: Annotated[str | None, typer.Argument(help="issue-123, #123, 123 or an issue URL.")] = None,
    issue_file: Annotated[Path | None, typer.Option("--issue-file", help="Read the issue from a text file.")] = None,
    model: Annotated[str | None, typer.Option(help="Claude model id, or replay:FILE to replay a cassette.",
                                              callback=_model_flag)] = None,
    record: Annotated[Path | None, typer.Option("--record", help="Write a cassette of the model's answers.")] = None,
    max_iterations: Annotated[int | None, typer.Option(min=1, help="Override agent.max_iterations.")] = None,
    review: Annotated[bool, typer.Option(help="Pause before publishing until `loop resume`.")] = False,
    keep_sandbox: Annotated[bool, typer.Option(help="Leave the sandbox up (until its TTL) after the run.")] = False,
    repo: RepoOption = Path("."),
    run_id: Annotated[str | None, typer.Option("--run-id", hidden=True, help="Use this run id (batch).")] = None,
    allow_unconfined: UnconfinedOption = False,
) -> None:
    """Resolve one issue: a run from the issue to a validated pull request."""
    from agentloop.cli.display import LiveDisplay
    from agentloop.loop.runner import fix as run_fix

    _allow_unconfined(allow_unconfined)

    outcome = run_fix(
        repo, issue, issue_file=issue_file, model=model, record_cassette=record, max_iterations=max_iterations,
        review=review, keep_sandbox=keep_sandbox, progress=LiveDisplay(err), run_id=run_id,
    )
    _finish(outcome)


@app.command()
def resume(
    run: Annotated[str, typer.Argument(help="The run id (see `loop runs`).")],
    review: Annotated[bool, typer.Option(help="Pause again before publishing.")] = False,
    repo: RepoOption = Path("."),
    allow_unconfined: UnconfinedOption = False,
) -> None:
    """Continue a killed or interrupted run from its last checkpoint."""
    from agentloop.cli.display import LiveDisplay
    from agentloop.loop.runner import resume as run_resume

    _allow_unconfined(allow_unconfined)

    _finish(run_resume(repo, run, review=review, progress=LiveDisplay(err)))


def _duration(seconds: float) -> str:
    return f"{int(seconds) // 60}m{int(seconds) % 60:02d}s"


def _short_pull(url: str | None) -> str:
    """GitHub URLs as they are; a local pull request (its body file) as `local #N`."""
    if not url:
        return "-"
    if url.startswith("file://") and "/pulls/" in url:
        return f"local #{url.rsplit('/', 1)[-1].removesuffix('.md')}"
    return url


@app.command("runs")
def list_command(
    fields: Annotated[str | None, typer.Argument(
        metavar="FIELDS", help="With --json: only these fields, comma-separated (as `gh --json number,title`).",
        show_default=False)] = None,
    as_json: JsonOption = False,
    repo: RepoOption = Path("."),
) -> None:
    """List runs: id, issue, status, iterations, pull request, started, duration, cost."""
    from agentloop.runs.folder import json_fields

    if fields is not None and not as_json:
        fail(f"{fields!r}: fields are chosen with --json, e.g. `loop runs --json id,branch,status`")
    chosen = json_fields(fields) if fields is not None else None  # checked before any record is read
    summaries = list_runs(runs_dir(repo_root(repo)), strict=True)
    if as_json:
        rows = [s.public() for s in summaries]
        if chosen is not None:
            rows = [{name: row[name] for name in chosen} for row in rows]
        out.print_json(json.dumps(rows))
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), collapse_padding=True)
    for name in ("run", "issue", "status", "iter", "started", "duration", "cost"):
        table.add_column(name, no_wrap=True)
    table.add_column("PR", no_wrap=True)
    for s in summaries:
        same_day = time.localtime(s.started_at)[:3] == time.localtime()[:3]
        started = time.strftime("%H:%M" if same_day else "%m-%d", time.localtime(s.started_at))
        table.add_row(s.id, f"#{s.issue}", s.status, str(s.iterations), started, _duration(s.duration),
                      f"${s.cost_usd:.2f}", _short_pull(s.pull_request))
    out.print(table if summaries else "no runs yet: `loop fix ISSUE` starts one")


@app.command()
def show(
    run: Annotated[str, typer.Argument(help="The run id.")], as_json: JsonOption = False, repo: RepoOption = Path(".")
) -> None:
    """Show one run, iteration by iteration."""
    from agentloop.cli.show import run_details

    details = run_details(open_run(runs_dir(repo_root(repo)), run))
    if as_json:
        out.print_json(json.dumps(details, default=str))
        return
    from agentloop.cli.show import render_details

    render_details(details, out)


@app.command()
def verify(
    run: Annotated[str, typer.Argument(help="The run id.")],
    rerun: Annotated[bool, typer.Option(help="Validate the head commit again in a fresh sandbox.")] = False,
    repo: RepoOption = Path("."),
) -> None:
    """Check a run's artifacts against their hashes, report.md's numbers against them, the head commit
    against the diff."""
    from agentloop.evidence.verify import rerun as do_rerun
    from agentloop.evidence.verify import verify_run

    root = repo_root(repo)
    record = open_run(runs_dir(root), run)
    differences = verify_run(record.dir, root)
    for line in differences:
        out.print(f"[red]✗[/red] {line}")
    if not differences:
        out.print(f"[green]✓[/green] every artifact of {run} matches its hash, every number in its report.md "
                  "matches the artifacts and evidence, and the head commit matches the diff")
    code = 1 if differences else 0
    if rerun:
        verdict = do_rerun(record.dir, root)
        out.print(("[green]✓ passed[/green]" if verdict.passed else "[red]✗ failed[/red]") + " on a fresh sandbox")
        for reason in verdict.reasons:
            out.print(f"  · {reason}")
        code = code or (0 if verdict.passed else 1)
    raise typer.Exit(code)


@app.command()
def batch(
    issues: Annotated[list[str] | None, typer.Argument(help="Issue references.")] = None,
    label: Annotated[str | None, typer.Option(help="Every open issue with this label.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many issues.")] = None,
    from_file: Annotated[Path | None, typer.Option("--from", help="A file with one issue reference per line.")] = None,
    parallel: Annotated[int, typer.Option(min=1, help="Runs at once.")] = 4,
    model: Annotated[str | None, typer.Option(help="Model for every run; `{issue}` is replaced by the number.",
                                              callback=_model_flag)] = None,
    resume_id: Annotated[str | None, typer.Option("--resume", help="Finish what is left of batch ID.")] = None,
    executor: Annotated[str, typer.Option(help="local (default): a process per run; kubernetes: a Job per run.")] = "local",
    image: Annotated[str | None, typer.Option(help="kubernetes: the loop image (default $LOOP_IMAGE).")] = None,
    repository: Annotated[str | None, typer.Option(help="kubernetes: the URL the Jobs clone (default: origin).")] = None,
    namespace: Annotated[str, typer.Option(help="kubernetes: the namespace of the Jobs.")] = "default",
    secret: Annotated[str, typer.Option(help="kubernetes: the Secret with the keys and LOOP_DATABASE_URL.")] = "loop-keys",
    repo: RepoOption = Path("."),
    allow_unconfined: UnconfinedOption = False,
) -> None:
    """Run many issues in parallel on one shared baseline."""
    _allow_unconfined(allow_unconfined)
    from agentloop.batch import run as batches
    from agentloop.batch.executors.base import Executor
    from agentloop.cli.batch_view import BatchView
    from agentloop.config import load_config
    from agentloop.errors import ConfigError, NotSupportedYet
    from agentloop.sandbox.base import baseline_held

    if executor not in ("local", "kubernetes"):
        raise ConfigError(f"--executor {executor}: use local (the default) or kubernetes")
    root = repo_root(repo)
    config = load_config(root)
    root_runs = runs_dir(root)
    if resume_id:
        record = batches.load(root_runs, resume_id)
        record.status, record.ended_at = "running", None
    else:
        refs = list(issues or [])
        if from_file is not None:
            refs += batches.read_issue_list(from_file)
        if label is not None:
            from agentloop.forge.base import ListsIssues
            from agentloop.forge.factory import open_forge

            forge = open_forge(root, config)
            if not isinstance(forge, ListsIssues):
                raise NotSupportedYet(f"--label with the {forge.kind} forge is not supported yet; list the issues")
            refs += [str(issue.number) for issue in forge.list_issues(label)]
        record = batches.new_batch(root, refs[:limit] if limit else refs, model=model, parallel=parallel)
    runner: Executor
    backend = None
    if executor == "kubernetes":
        from agentloop.batch.executors.kubernetes import (
            JobSettings,
            KubernetesExecutor,
            origin_url,
            require_database,
        )
        from agentloop.runs.store import RunStore

        url = require_database()
        chosen_image = image or os.environ.get("LOOP_IMAGE")
        if not chosen_image:
            raise ConfigError("--executor kubernetes: give the loop image with --image or LOOP_IMAGE "
                              "(built from the repository's Dockerfile and pushed where the cluster pulls)")
        settings = JobSettings(image=chosen_image, repository=repository or origin_url(root), namespace=namespace,
                               secret=secret, model=record.model)
        runner = KubernetesExecutor(settings, record.id, RunStore(url))
    else:
        from agentloop.batch.executors.local import LocalExecutor

        runner = LocalExecutor(root, root_runs, record.id, record.model)
        if config.services:  # one baseline for every run: each finds it up and leaves it alone
            from agentloop.sandbox.factory import open_backend

            backend = open_backend(root, config)
    view = BatchView(err)
    with baseline_held(backend):  # stopped at the end only if the batch started it
        err.print(f"batch {record.id}: {len(record.items)} runs, {record.parallel} at once ({executor}); "
                  f"record {batches.batch_path(root_runs, record.id)}", soft_wrap=True)
        try:
            finished = batches.BatchExecutor(record, root_runs, runner, render=view,
                                             poll=1.0 if executor == "kubernetes" else 0.3).run()
        finally:
            if backend is not None:
                # runs killed by a second Ctrl-C (or crashed) leave forks behind: collect them now
                backend.gc()
    view.summary(finished)
    if finished.status == "interrupted":
        # everything is stopped and recorded: a Ctrl-C pressed again now must not turn exit 130 into a crash
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        err.print(f"interrupted: `loop batch --resume {finished.id}` finishes what is left", soft_wrap=True)
        raise typer.Exit(130)
    raise typer.Exit(0 if all(item.status == "published" for item in finished.items) else 1)


@app.command()
def demo(
    model: Annotated[str | None, typer.Option(help="A Claude model id to use a real model (needs ANTHROPIC_API_KEY).",
                                              callback=_model_flag)] = None,
    directory: Annotated[Path | None, typer.Option("--dir", help="Where to create the demo repository.")] = None,
    allow_unconfined: UnconfinedOption = False,
) -> None:
    """The whole loop on the bundled example system, to a published local pull request."""
    from agentloop.cli.demo import run_demo

    _allow_unconfined(allow_unconfined)

    _finish(run_demo(model=model, directory=directory, console=err))


def _mount_subcommands() -> None:
    from agentloop.cli.app import app as app_app
    from agentloop.cli.doctor import doctor
    from agentloop.cli.init import init
    from agentloop.cli.plan import app as plan_app
    from agentloop.cli.review import iterate
    from agentloop.cli.sandbox import app as sandbox_app
    from agentloop.cli.serve import serve
    from agentloop.cli.ui import ui

    app.add_typer(sandbox_app, name="sandbox", help="Baseline and sandboxes: up, create, ls, logs, rm, gc.")
    app.add_typer(plan_app, name="plan", help="Run a plan of governed steps against a sandbox.")
    app.add_typer(app_app, name="app", help="Set the GitHub App up: `loop app manifest`.")
    app.command("serve", help="The GitHub App: webhooks in, runs out.")(serve)
    app.command("iterate", help="Another iteration of a published run on review feedback, to its pull request.")(
        iterate)
    app.command("ui", help="Browse this repository's runs in a web page on 127.0.0.1.")(ui)
    app.command("doctor", help="Check that `loop fix` can run here, one line per check with what to do.")(doctor)
    app.command("init", help="Write a commented loop.yaml guessed from this repository's files.")(init)


_mount_subcommands()


def _stop_on_sigterm() -> None:
    """SIGTERM (systemd, a Kubernetes pod, `kill`) stops a run as cleanly as Ctrl-C does."""

    def _interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)


def _split_json_value(argv: list[str]) -> list[str]:
    """`--json=id,status` as `--json id,status` (gh accepts both); typer's flags take no `=value`."""
    split: list[str] = []
    for index, arg in enumerate(argv):
        if arg == "--":
            return split + argv[index:]
        split += ["--json", arg.removeprefix("--json=")] if arg.startswith("--json=") else [arg]
    return split


def main(argv: list[str] | None = None) -> Any:
    _stop_on_sigterm()
    logging.basicConfig(level=os.environ.get("LOOP_LOG_LEVEL", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    try:
        return app(args=_split_json_value(sys.argv[1:] if argv is None else argv), standalone_mode=True)
    except LoopError as exc:
        print_error(str(exc))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
