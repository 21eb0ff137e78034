"""Services from Procfiles (`web: gunicorn app:app --bind 0.0.0.0:$PORT`), at the top or in a service's
directory. A process that listens on $PORT (or is called `web`) is a service, its `$PORT` written as
`{port}`; `release:`, `worker:` and other processes that do not listen are written as comments.
"""

from __future__ import annotations

import posixpath
import re
import shlex

from agentloop.init.draft import Noted, ServiceDraft, loop_name, stray_placeholder
from agentloop.init.reading import RepoReader

_LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.+)$")  # Heroku's own rule for a Procfile line
_PORT = re.compile(r"\$\{PORT\}|\$PORT\b")
_MAX_PROCESSES = 50
_COMMAND_CHARS = 4000


def find_procfiles(reader: RepoReader) -> list[str]:
    """`Procfile` at the top, then those one or two directories down (one per service)."""
    found = ["Procfile"] if reader.exists("Procfile") else []
    for rel in reader.walk(".", depth=2):
        if posixpath.basename(rel) == "Procfile" and rel != "Procfile":
            found.append(rel)
    return found[:20]


def read_procfile(reader: RepoReader, rel: str, taken: set[str]) -> list[ServiceDraft]:
    text = reader.text(rel, "Procfile")
    if text is None:
        return []
    directory = posixpath.dirname(rel) or "."
    drafts: list[ServiceDraft] = []
    for number, line in enumerate(text.splitlines(), start=1):
        match = _LINE.match(line.strip())
        if match is None or line.lstrip().startswith("#"):
            continue
        if len(drafts) >= _MAX_PROCESSES:
            reader.skip(rel, f"more than {_MAX_PROCESSES} processes; only the first were read")
            break
        process, command = match.group(1), match.group(2).strip()
        wanted = process if directory == "." else (
            posixpath.basename(directory) if process == "web" else f"{posixpath.basename(directory)}-{process}")
        name = loop_name(wanted, taken)
        note = f"Procfile process {process!r} ({rel} line {number})"
        if name != process:
            note += f", named {name!r}"
        draft = ServiceDraft(name=name, note=note)
        drafts.append(draft)
        if directory != ".":
            draft.path = Noted(directory, f"the directory of {rel}")
            command = f"cd {shlex.quote(directory)} && {command}"
        listens = bool(_PORT.search(command))
        run = _PORT.sub("{port}", command)
        draft.run = Noted(run, f"{rel}: `{process}:`" + (", $PORT -> {port}" if listens else ""))
        stray = stray_placeholder(run, {"port"})
        if len(run) > _COMMAND_CHARS or "\0" in run:
            draft.disabled = f"its command is over {_COMMAND_CHARS} characters"
        elif stray is not None:
            draft.disabled = f"its command has {stray}, which loop would read as a placeholder; write its `run`"
        elif not listens and process != "web":
            draft.disabled = (f"Procfile `{process}:` is not an HTTP service (it does not listen on $PORT); "
                              "loop runs services that listen on a port")
        elif not listens:
            draft.comments.append("its command does not mention $PORT: it must listen on PORT from its environment")
    return drafts
