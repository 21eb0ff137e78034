"""The agent's prompts, rendered from the package's `prompts/*.md` templates (`$name` placeholders)."""

from __future__ import annotations

import re
from importlib import resources
from string import Template

from agentloop import git
from agentloop.agent.base import EditTask

_MAX_MAP_FILES = 300
_MAX_SECTION = 30_000
_CLOSING_TAG = re.compile(r"</\s*untrusted", re.IGNORECASE)


def load_prompt(name: str) -> str:
    """The text of `prompts/<name>.md` shipped with the package."""
    return (resources.files("agentloop") / "prompts" / f"{name}.md").read_text(encoding="utf-8")


def _untrusted(text: str, empty: str = "(none)") -> str:
    # Untrusted text must not be able to close its own <untrusted> block and speak as us.
    text = _CLOSING_TAG.sub("<\\/untrusted", text.strip())
    if len(text) > _MAX_SECTION:
        text = text[:_MAX_SECTION] + "\n[... cut ...]"
    return text or empty


def repo_map(worktree: git.Worktree) -> str:
    """Tracked and new (not ignored) files of the worktree, one per line, capped."""
    files = sorted(set(git.ls_files(worktree)))
    shown = "\n".join(files[:_MAX_MAP_FILES])
    return shown + (f"\n[... {len(files) - _MAX_MAP_FILES} more files]" if len(files) > _MAX_MAP_FILES else "")


def _services(task: EditTask) -> str:
    return "\n".join(f"- {name}: {path}" for name, path in sorted(task.services.items())) or "(none)"


def _checks(task: EditTask) -> str:
    return "\n".join(f"- {check}" for check in task.checks) or "(none)"


def render_task(task: EditTask) -> str:
    """The first user message of an edit: edit.md on iteration 1, fix.md afterwards."""
    values = {
        "iteration": str(task.iteration),
        "issue_number": str(task.issue.number),
        "issue_title": _untrusted(task.issue.title, ""),
        "issue_body": _untrusted("\n\n".join([task.issue.body, *task.issue.comments])),
        "services": _services(task),
        "checks": _checks(task),
    }
    if task.iteration <= 1:
        values["repo_map"] = repo_map(git.Worktree(task.repo, task.worktree))
        return Template(load_prompt("edit")).substitute(values)
    values.update(failures=_untrusted(task.failures), logs=_untrusted(task.logs),
                  diff=_untrusted(task.diff, "(no change yet)").replace("```", "` ` `"))
    return Template(load_prompt("fix")).substitute(values)
