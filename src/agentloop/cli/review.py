"""`loop iterate RUN`: another iteration of a published run on review feedback, pushed to its pull request
(what a member's `/loop fix` on the pull request does on the App). The feedback is `--note` text, or, on
GitHub with no note, the members' review comments on the run's pull request since its last pass."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from agentloop.errors import LoopError
from agentloop.forge.base import ReviewNote


def iterate(
    run: Annotated[str, typer.Argument(help="The published run (see `loop runs`).")],
    note: Annotated[list[str] | None, typer.Option(
        "--note", help="What to change (repeat for several); `FILE:LINE: text` points at a line.")] = None,
    repo: Annotated[Path, typer.Option("--repo", help="The target repository (default: the current directory).")
                    ] = Path("."),
    allow_unconfined: Annotated[bool, typer.Option(
        "--allow-unconfined", help="Where bubblewrap is not usable, run agent-written code without a jail.")] = False,
) -> None:
    """Run the next iteration of a published run on review feedback and push it to the same pull request."""
    # main's helpers, imported when called: main mounts this command while it is being imported
    from agentloop.cli.display import LiveDisplay
    from agentloop.cli.main import _allow_unconfined, _finish, err
    from agentloop.loop.review import iterate_on_review

    _allow_unconfined(allow_unconfined)
    notes = [_parse(text) for text in note or []] or _from_pull_request(repo, run)
    if not notes:
        raise LoopError(f"no review feedback for run {run}: pass --note TEXT (no member commented since its last pass)")
    _finish(iterate_on_review(repo, run, notes, progress=LiveDisplay(err)))


def _parse(text: str) -> ReviewNote:
    """`web/app.py:12: rename x` -> a note at that line; anything else -> a note on the pull request."""
    where, _, body = text.partition(": ")
    path, _, line = where.rpartition(":")
    if body and path and line.isdigit():
        return ReviewNote(author="you", body=body, path=path, line=int(line))
    return ReviewNote(author="you", body=text)


def _from_pull_request(repo: Path, run: str) -> list[ReviewNote]:
    from agentloop.config import load_config
    from agentloop.forge.factory import open_forge
    from agentloop.forge.github import GitHubForge
    from agentloop.forge.github_reviews import review_notes
    from agentloop.paths import repo_root, runs_dir
    from agentloop.runs.folder import open_run

    root = repo_root(repo)
    summary = open_run(runs_dir(root), run).summary()
    forge = open_forge(root, load_config(root))
    pull = forge.find_pull_request(summary.branch) if summary.branch else None
    if not isinstance(forge, GitHubForge) or pull is None or pull.number is None:
        return []
    return review_notes(forge, pull.number, since=summary.ended_at)
