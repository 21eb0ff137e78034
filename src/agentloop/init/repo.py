"""`loop init`: look at a repository, guess a loop.yaml, check that it loads, write it (never over one).

Where services come from, first that has any: a compose file, Procfiles, package.json's `start`,
pyproject's server-like `[project.scripts]`. Then the tests (pytest, npm test), the project's own
environment (a virtualenv, node_modules) and what git says (base branch, forge).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from agentloop import config_rules
from agentloop.config import CONFIG_FILE, ServiceConfig, parse_config
from agentloop.errors import LoopError
from agentloop.init.compose import find_compose, read_compose
from agentloop.init.draft import Draft, Noted, ServiceDraft, loop_name, one_line, stray_placeholder
from agentloop.init.gitinfo import fill_from_git
from agentloop.init.node import node_project, node_service, node_setup, node_suite
from agentloop.init.procfile import find_procfiles, read_procfile
from agentloop.init.python import pytest_suites, python_setup
from agentloop.init.reading import RepoReader
from agentloop.init.writer import guesses, render
from agentloop.inputs import parse_yaml

log = logging.getLogger(__name__)

_SERVER_SCRIPT = re.compile(r"(?:^|[-_])(serve|server|web|api|app|start|run)(?:$|[-_])")


class ConfigExists(LoopError):
    """There is a loop.yaml already and --force was not given."""


@dataclass(frozen=True)
class InitResult:
    text: str
    path: Path
    written: bool
    guesses: list[str]


def inspect(root: Path) -> Draft:
    """What loop.yaml the files of `root` suggest; reads files only, runs nothing of the repository's."""
    reader = RepoReader(root)
    draft = Draft()
    fill_from_git(root, draft)
    taken: set[str] = set()
    compose = find_compose(reader)
    services = read_compose(reader, compose) if compose else []
    taken.update(service.name for service in services)
    for procfile in find_procfiles(reader):
        if services and compose:
            reader.skip(procfile, f"not used: {compose} describes the services")
        else:
            services += read_procfile(reader, procfile, taken)
    top_node = node_project(reader, ".")
    if not services and top_node is not None:
        started = node_service(top_node, taken)
        services += [started] if started is not None else []
    if not services:
        services += _script_services(reader, taken)
    draft.services = services
    if not services:
        draft.todo.append("no services found (compose file, Procfile, package.json `start`): add the services "
                          "this repository runs under `services:`")
    service_dirs = sorted({str(s.path.value) for s in draft.active_services() if s.path.value != "."})
    draft.suites = pytest_suites(reader, service_dirs, draft.todo)
    python = python_setup(reader, service_dirs, needs_pytest=bool(draft.suites), notes=draft.todo)
    path_entries: list[tuple[str, str]] = []
    if python is not None:
        draft.setup.append(python[0])
        path_entries += [(entry, python[1].note or "") for entry in _names(python[1])]
    if top_node is not None:
        draft.setup.append(node_setup(reader, top_node))
        path_entries.append(("node_modules/.bin", "the packages the npm step installs"))
        suite = node_suite(top_node, "npm")
        draft.suites += [suite] if suite is not None else []
    for service in draft.active_services():
        project = node_project(reader, str(service.path.value)) if service.path.value != "." else None
        if project is not None:
            service.setup.append(node_setup(reader, project))
            suite = node_suite(project, f"{service.name}-npm")
            draft.suites += [suite] if suite is not None else []
    if path_entries:
        draft.path = Noted([entry for entry, _ in path_entries], "; ".join(note for _, note in path_entries))
    _settle(draft)
    draft.skipped = reader.skipped
    return draft


def _script_services(reader: RepoReader, taken: set[str]) -> list[ServiceDraft]:
    """A `[project.scripts]` entry named like a server (serve, web, api ...), installed by the setup step."""
    data = reader.toml("pyproject.toml") if reader.is_file("pyproject.toml") else None
    project = data.get("project") if isinstance(data, dict) else None
    scripts = project.get("scripts") if isinstance(project, dict) else None
    if not isinstance(scripts, dict):
        return []
    for script in scripts:
        if isinstance(script, str) and re.fullmatch(r"[A-Za-z0-9][\w.-]{0,60}", script) and _SERVER_SCRIPT.search(script):
            draft = ServiceDraft(name=loop_name(script, taken), note=f"[project.scripts] {script!r} in pyproject.toml")
            draft.run = Noted(script, "a script named like a server; it must listen on PORT (loop sets it)")
            return [draft]
    return []


def _settle(draft: Draft) -> None:
    """Make the draft load: a service loop would refuse is left out (written as a comment saying why),
    then references to services left out are dropped, and a depends_on cycle is broken."""
    changed = True
    while changed:
        changed = False
        active = {service.name for service in draft.active_services()}
        fields = {"port"} | {f"services.{name}.{part}" for name in active for part in config_rules.SERVICE_FIELDS}
        for service in draft.active_services():
            for key in [k for k, v in service.env.items() if _strays(str(v.value), fields)]:
                service.comments.append(f"env {key} left out: it names a service loop does not run")
                del service.env[key]
            if service.depends_on is not None:
                kept = [name for name in _names(service.depends_on) if name in active]
                service.depends_on = Noted(kept, service.depends_on.note) if kept else None
            problem = _refused(service, active)
            if problem is not None:
                service.disabled, changed = problem, True
    _break_cycles(draft)


def _names(noted: Noted | None) -> list[str]:
    value = noted.value if noted is not None else None
    return [str(item) for item in value] if isinstance(value, list) else []


def _strays(text: str, fields: set[str]) -> bool:
    return stray_placeholder(text, fields) is not None


def _refused(service: ServiceDraft, active: set[str]) -> str | None:
    if service.run is None:
        return "no command found; write its `run`"
    data = {"path": service.path.value, "run": service.run.value, "env": {k: v.value for k, v in service.env.items()},
            "health": service.health.value if service.health else None,
            "setup": [{"run": s.run.value, "inputs": s.inputs, "creates": s.creates} for s in service.setup]}
    try:
        ServiceConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        return one_line(f"loop would refuse its `{where}`: {first['msg'].removeprefix('Value error, ')}")
    return None


def _break_cycles(draft: Draft) -> None:
    services = draft.active_services()
    try:
        config_rules.start_order({s.name: _names(s.depends_on) for s in services})
    except ValueError:
        for service in services:
            if service.depends_on is not None:
                service.comments.append("depends_on left out: the services' depends_on form a cycle")
                service.depends_on = None


def init_repo(root: Path, *, force: bool = False, write: bool = True) -> InitResult:
    """Inspect `root` and write `root/loop.yaml` (unless `write` is False); ConfigExists when one is
    there and not `force`. The text is checked to load as loop.yaml before it is written."""
    path = root / CONFIG_FILE
    if write and os.path.lexists(path) and not force:
        raise ConfigExists(f"{path} exists; init never overwrites it: pass --force to replace it, "
                           "or --stdout to print what init would write")
    draft = inspect(root)
    text = render(draft)
    try:
        parse_config(parse_yaml(text, source="loop.yaml (as init wrote it)"), Path(f"{path} (as init wrote it)"))
    except LoopError as exc:  # a case init does not handle yet; better said than written broken
        raise LoopError(f"init made a loop.yaml that does not load ({exc}); please report this, "
                        "with `loop init --stdout`") from None
    if write:
        _write_atomically(path, text)
        log.info("wrote %s", path)
    return InitResult(text=text, path=path, written=write, guesses=guesses(draft))


def _write_atomically(path: Path, text: str) -> None:
    """Replace `path` (a symlink there is replaced, never followed) in one rename."""
    handle, temporary = tempfile.mkstemp(prefix=".loop.yaml.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
