"""`loop init`: write a commented loop.yaml guessed from the repository's files, then say what to check."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from agentloop.init import init_repo
from agentloop.paths import repo_root

_SHOWN = 25  # guesses listed; the file has every one


def init(
    repo: Annotated[Path, typer.Option("--repo", help="The target repository (default: the current directory).")]
    = Path("."),
    force: Annotated[bool, typer.Option("--force", help="Replace an existing loop.yaml.")] = False,
    stdout: Annotated[bool, typer.Option("--stdout", "--dry-run",
                                         help="Print the loop.yaml instead of writing it.")] = False,
) -> None:
    """Write a loop.yaml for this repository from its compose file, Procfile, pyproject/package.json and
    tests; every guess is marked `# guessed:`. Reads files only: runs nothing of the repository's."""
    err = Console(stderr=True, highlight=False)
    result = init_repo(repo_root(repo), force=force, write=not stdout)
    if stdout:
        sys.stdout.write(result.text)
        sys.stdout.flush()
    else:
        err.print(Text(f"wrote {result.path}"), soft_wrap=True)
    err.print("guesses to check (each is marked `# guessed:` in the file):")
    for line in result.guesses[:_SHOWN]:
        err.print(Text(f"  · {line}"), soft_wrap=True)
    if len(result.guesses) > _SHOWN:
        err.print(f"  … and {len(result.guesses) - _SHOWN} more in the file")
    err.print("next: `loop doctor` checks that a run could succeed, then `loop fix ISSUE`")
