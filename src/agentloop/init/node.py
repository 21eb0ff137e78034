"""The Node side of a repository: installing node_modules from the lockfile, `npm test` as a suite and
`npm start` as a service when nothing else describes one.
"""

from __future__ import annotations

import posixpath
import shlex
from dataclasses import dataclass
from typing import Any

from agentloop.init.draft import Noted, ServiceDraft, SetupDraft, SuiteDraft, loop_name, one_line
from agentloop.init.reading import RepoReader

# lockfile -> the install that follows it exactly
_INSTALLS = (("package-lock.json", "npm ci"), ("npm-shrinkwrap.json", "npm ci"),
             ("yarn.lock", "yarn install --frozen-lockfile"), ("pnpm-lock.yaml", "pnpm install --frozen-lockfile"),
             ("bun.lock", "bun install --frozen-lockfile"), ("bun.lockb", "bun install --frozen-lockfile"))
_NPM_PLACEHOLDER_TEST = "no test specified"


@dataclass
class NodeProject:
    base: str
    package: dict[str, Any]

    @property
    def scripts(self) -> dict[str, str]:
        scripts = self.package.get("scripts")
        return {k: v for k, v in scripts.items() if isinstance(k, str) and isinstance(v, str)} \
            if isinstance(scripts, dict) else {}

    def file(self, name: str) -> str:
        return posixpath.normpath(posixpath.join(self.base, name))


def node_project(reader: RepoReader, base: str) -> NodeProject | None:
    rel = posixpath.normpath(posixpath.join(base, "package.json"))
    if not reader.is_file(rel):
        return None
    package = reader.json(rel)
    if not isinstance(package, dict):
        if package is not None:
            reader.skip(rel, "is not a JSON object; not used")
        return None
    return NodeProject(base, package)


def node_setup(reader: RepoReader, project: NodeProject) -> SetupDraft:
    """The install step. A service's own steps run in its directory, their inputs and creates relative
    to it; so are these, for the top-level project and a service's alike."""
    lock, install = next(((lock, command) for lock, command in _INSTALLS if reader.is_file(project.file(lock))),
                         (None, "npm install"))
    why = f"from {project.file(lock)}" if lock else f"{project.file('package.json')} has no lockfile: npm install"
    return SetupDraft(run=Noted(install, why), inputs=[lock or "package.json"], creates=["node_modules"])


def node_suite(project: NodeProject, name: str) -> SuiteDraft | None:
    test = project.scripts.get("test")
    if not test or _NPM_PLACEHOLDER_TEST in test:
        return None
    command = "npm test" if project.base == "." else f"npm --prefix {shlex.quote(project.base)} test"
    return SuiteDraft(name, Noted(command, f"the `test` script of {project.file('package.json')} "
                                           f"({one_line(test, 60)}); a JUnit report needs `junit:`"))


def node_service(project: NodeProject, taken: set[str]) -> ServiceDraft | None:
    """`npm start` as the service when package.json has a start script (and nothing else names one)."""
    start = project.scripts.get("start")
    if not start:
        return None
    raw_name = project.package.get("name")
    wanted = raw_name.rsplit("/", 1)[-1] if isinstance(raw_name, str) and raw_name else "web"
    name = loop_name(wanted, taken)
    draft = ServiceDraft(name=name, note=f"the `start` script of {project.file('package.json')}")
    draft.run = Noted("npm start", f"`{one_line(start, 60)}`; it must listen on PORT (loop sets it)")
    draft.path = Noted(project.base, "where package.json is")
    return draft
