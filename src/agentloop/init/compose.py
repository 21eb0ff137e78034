"""Services from a compose file: each service built from the repository becomes a loop service.

Its `run` is the compose `command` (or the Dockerfile's CMD) run in its build context, with the port it
listens on inside compose replaced by `{port}`; addresses of other services in its environment become
placeholders (see compose_env); an HTTP healthcheck URL becomes `health`; `depends_on` stays start order.
A service loop cannot start from the repository (an image only, a remote build context) is written as a
comment saying so. Nothing is run: commands are copied as text.
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from dataclasses import dataclass
from typing import Any

from agentloop.init.compose_env import Peer, translate_env
from agentloop.init.draft import Noted, ServiceDraft, loop_name, one_line, stray_placeholder
from agentloop.init.reading import RepoReader

COMPOSE_FILES = ("compose.yaml", "compose.yml", "docker-compose.yml", "docker-compose.yaml")
_MAX_SERVICES = 100
_COMMAND_CHARS = 4000
_ENV_PORT = re.compile(r"\$\{PORT(?::?-[^}]*)?\}|\$PORT\b")
_HEALTH_URL = re.compile(r"https?://[^/\s\"']+(/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*)?")
_HEALTH_PATH = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]{0,200}")


@dataclass
class _Service:
    compose_name: str
    draft: ServiceDraft
    spec: dict[str, Any]
    port: int | None


def find_compose(reader: RepoReader) -> str | None:
    """The compose file compose itself would pick (its own order of names), or None."""
    found = [name for name in COMPOSE_FILES if reader.exists(name)]
    for other in found[1:]:
        reader.skip(other, f"another compose file; init read {found[0]}")
    return found[0] if found else None


def read_compose(reader: RepoReader, rel: str) -> list[ServiceDraft]:
    data = reader.yaml(rel, "compose file")
    if data is None:
        return []
    services = data.get("services") if isinstance(data, dict) else None
    if not isinstance(services, dict) or not services:
        reader.skip(rel, "has no `services:` mapping; not used")
        return []
    taken: set[str] = set()
    found: list[_Service] = []
    for compose_name, spec in list(services.items())[:_MAX_SERVICES]:
        if not isinstance(compose_name, str):
            continue
        name = loop_name(compose_name, taken)
        note = f"compose service {one_line(compose_name, 60)!r} in {rel}"
        if name != compose_name:
            note += f", renamed {name!r} (lowercase letters, digits, dashes)"
        spec = spec if isinstance(spec, dict) else {}
        found.append(_Service(compose_name, ServiceDraft(name=name, note=note), spec, _container_port(spec)))
    if len(services) > _MAX_SERVICES:
        reader.skip(rel, f"more than {_MAX_SERVICES} services; only the first were read")
    for service in found:
        _source_and_command(reader, rel, service)
    peers = {
        s.compose_name: Peer(s.draft.name, s.port, runs=s.draft.disabled is None, why=s.draft.disabled or "")
        for s in found
    }
    for service in found:
        _fill(service, peers, rel)
    return [service.draft for service in found]


def _container_port(spec: dict[str, Any]) -> int | None:
    """The first port the service listens on inside compose: `ports` (container side), `expose`, PORT."""
    for entry in [*_list(spec.get("ports")), *_list(spec.get("expose"))]:
        if isinstance(entry, dict):
            entry = entry.get("target")
        text = str(entry).split("/")[0] if isinstance(entry, (str, int)) else ""
        last = text.rsplit(":", 1)[-1].strip()
        if last.isdigit() and 0 < int(last) < 65536:
            return int(last)
    environment = spec.get("environment")
    value = environment.get("PORT") if isinstance(environment, dict) else None
    return int(value) if isinstance(value, (int, str)) and str(value).isdigit() and 0 < int(value) < 65536 else None


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _normal(path: str) -> str | None:
    """`path` relative to the repository's top, or None when it is absolute or leads out of it."""
    if not path or path.startswith(("/", "~")) or "\0" in path:
        return None
    normal = posixpath.normpath(path)
    return None if normal == ".." or normal.startswith("../") else normal


def _source_and_command(reader: RepoReader, rel: str, service: _Service) -> None:
    """Where the service's code is (its `path`) and the command that starts it; `disabled` when neither
    can be told from the repository."""
    draft, spec = service.draft, service.spec
    build = spec.get("build")
    context: str | None = None
    dockerfile = "Dockerfile"
    if isinstance(build, str):
        context = build
    elif isinstance(build, dict):
        context = str(build.get("context", "."))
        dockerfile = str(build.get("dockerfile", "Dockerfile"))
    command = _command_text(spec)
    if context is not None:
        if "://" in context or context.startswith(("git@", "github.com/")):
            draft.disabled = "built from a remote context"
            return
        path = _normal(context)
        if path is None or not reader.is_dir(path):
            draft.disabled = f"its build context {one_line(context, 80)!r} is not a directory of the repository"
            return
        draft.path = Noted(path, f"its build context in {rel}")
        if command is None:
            file = _normal(posixpath.join(path, dockerfile))
            found = _dockerfile_command(reader, file) if file else None
            if found is not None:
                command = (found, f"the CMD of {file}")
    else:
        mounted = _bind_mount(reader, spec)
        if mounted is None or command is None:
            image = spec.get("image")
            draft.disabled = f"image {one_line(str(image), 60)}" if image else "neither `build` nor `image`"
            if command is not None:
                draft.run = Noted(command[0])
            return
        draft.path = Noted(mounted, f"the directory {rel} mounts into the container")
    if command is None:
        draft.disabled = "no command found (compose `command:`, the Dockerfile's CMD); write its `run`"
        return
    text, origin = command
    if draft.path.value != ".":
        text = f"cd {shlex.quote(str(draft.path.value))} && {text}"
    draft.run = Noted(text, f"from {origin}, run in its directory")


def _command_text(spec: dict[str, Any]) -> tuple[str, str] | None:
    parts: list[str] = []
    for key in ("entrypoint", "command"):
        value = spec.get(key)
        if isinstance(value, list) and all(isinstance(item, (str, int, float)) for item in value):
            parts.append(shlex.join(str(item) for item in value))
        elif isinstance(value, (str, int, float)) and str(value).strip():
            parts.append(str(value).strip())
    if not parts:
        return None
    # `$$` is compose's escape for a literal `$`
    return " ".join(parts).replace("$$", "$"), "its compose `command`"


def _bind_mount(reader: RepoReader, spec: dict[str, Any]) -> str | None:
    """A repository directory mounted into an image-only service (code run from the checkout)."""
    for volume in _list(spec.get("volumes")):
        source = None
        if isinstance(volume, str) and volume.startswith("."):
            source = volume.split(":")[0]
        elif isinstance(volume, dict) and volume.get("type") == "bind" and str(volume.get("source", "")).startswith("."):
            source = str(volume["source"])
        path = _normal(source) if source else None
        if path is not None and reader.is_dir(path):
            return path
    return None


def _dockerfile_command(reader: RepoReader, rel: str) -> str | None:
    """The last stage's ENTRYPOINT and CMD, joined as the container would run them."""
    text = reader.text(rel, "Dockerfile") if reader.is_file(rel) else None
    if text is None:
        return None
    entrypoint: list[str] | str | None = None
    cmd: list[str] | str | None = None
    for line in re.sub(r"\\\r?\n", " ", text).splitlines():
        word, _, rest = line.strip().partition(" ")
        instruction = word.upper()
        if instruction == "FROM":
            entrypoint = cmd = None
        elif instruction in ("CMD", "ENTRYPOINT"):
            value = _exec_or_shell(rest.strip())
            if instruction == "CMD":
                cmd = value
            else:
                entrypoint, cmd = value, None
    if isinstance(entrypoint, list):
        joined = entrypoint + (cmd if isinstance(cmd, list) else [])
        return shlex.join(joined) if joined else None
    if isinstance(entrypoint, str):
        return entrypoint or None
    if isinstance(cmd, list):
        return shlex.join(cmd) if cmd else None
    return cmd or None


def _exec_or_shell(text: str) -> list[str] | str:
    if text.startswith("["):
        try:
            value = json.loads(text)
        except ValueError:
            return text
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return value
    return text


def _fill(service: _Service, peers: dict[str, Peer], rel: str) -> None:
    draft, spec = service.draft, service.spec
    if draft.disabled is None and draft.run is not None:
        _port_into_run(draft, service.port)
    notes: list[str] = []
    draft.env = translate_env(spec.get("environment"), own_port=service.port, peers=peers,
                              service=draft.name, notes=notes)
    env_files = spec.get("env_file")
    for env_file in env_files if isinstance(env_files, list) else [env_files] if env_files else []:
        notes.append(f"env_file {one_line(str(env_file), 60)} not read: add what it sets under `env:`")
    draft.comments.extend(notes)
    health = _health(spec.get("healthcheck"))
    if health is not None:
        draft.health = health
    depends = spec.get("depends_on")
    names = [str(n) for n in depends] if isinstance(depends, (list, dict)) else []
    kept = [peers[n].loop_name for n in names if n in peers and peers[n].runs and peers[n].loop_name != draft.name]
    for name in names:
        if name in peers and not peers[name].runs:
            draft.comments.append(f"depends_on {name!r} left out: loop does not run it ({peers[name].why})")
    if kept:
        draft.depends_on = Noted(list(dict.fromkeys(kept)), f"its depends_on in {rel} (start order)")


def _port_into_run(draft: ServiceDraft, port: int | None) -> None:
    assert draft.run is not None
    text = str(draft.run.value)
    replaced = _ENV_PORT.sub("{port}", text)
    if port is not None:
        replaced = re.sub(rf"(?<=[:=\s]){port}(?![\w.])", "{port}", replaced)
    if replaced != text:
        draft.run = Noted(replaced, f"{draft.run.note}; port {port or '$PORT'} -> {{port}}")
    elif port is not None:
        draft.comments.append(f"it listens on {port} in compose and its command does not say so: make it "
                              "listen on $PORT (loop sets it) or put {port} in `run`")
    else:
        draft.comments.append("no port in compose (`ports`, `expose`): make it listen on $PORT (loop sets it)")
    stray = stray_placeholder(replaced, {"port"})
    if len(replaced) > _COMMAND_CHARS or "\0" in replaced:
        draft.disabled = f"its command is over {_COMMAND_CHARS} characters or has a NUL byte"
    elif stray is not None:
        draft.disabled = f"its command has {stray}, which loop would read as a placeholder; write its `run`"


def _health(check: object) -> Noted | None:
    """The path of an HTTP URL the healthcheck fetches, or None: without `health` loop waits for TCP."""
    if not isinstance(check, dict) or check.get("disable") is True:
        return None
    test = check.get("test")
    text = " ".join(str(item) for item in test) if isinstance(test, list) else str(test or "")
    match = _HEALTH_URL.search(text)
    if match is None or not match.group(1) or not _HEALTH_PATH.fullmatch(match.group(1)):
        return None
    return Noted(match.group(1), f"its healthcheck fetches {one_line(match.group(0), 80)}")
