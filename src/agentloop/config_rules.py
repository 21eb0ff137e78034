"""Checks of `loop.yaml` values that a type alone cannot say: paths that stay in the repository,
placeholders that name something that exists, a route header that is a header name. They run when the
config is loaded, so a mistake stops `loop` before any run work with a line naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING

from agentloop.errors import ConfigError

if TYPE_CHECKING:
    from agentloop.config import LoopConfig, ServiceConfig

# A `{name}` or `{dotted.name}` not preceded by `$`: what sandbox.services.expand would try to fill.
# Shell `${VAR}` and braces with spaces (`{ print $1 }`) are left alone, as expand leaves them.
_PLACEHOLDER = re.compile(r"(?<!\$)\{([A-Za-z_][\w.-]*)\}")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 field-name
SERVICE_FIELDS = ("url", "host", "port")
_RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "upgrade", "cookie",
                               "baggage", "tracestate", "traceparent"})


def repo_relative(value: str) -> str:
    """A path inside the repository, relative to its top: not absolute, no `..`, no control characters."""
    if not value.strip():
        raise ValueError("must be a path inside the repository, not empty")
    if any(ord(c) < 32 for c in value):
        raise ValueError("must be a path inside the repository, without control characters (newlines, tabs)")
    posix = PurePosixPath(value)
    if posix.is_absolute() or PureWindowsPath(value).drive or value.startswith("~"):
        raise ValueError(f"{value!r} is absolute; give a path relative to the repository's top")
    if ".." in posix.parts:
        raise ValueError(f"{value!r} leads out of the repository (`..`); give a path inside it")
    return value


def path_entry(value: str) -> str:
    """A PATH directory: inside the repository (relative, like `.venv/bin`), or an absolute host directory."""
    if value.startswith("/"):
        if any(ord(c) < 32 for c in value) or ":" in value:
            raise ValueError(f"{value!r} cannot be a PATH directory (no ':' or control characters)")
        return value
    if ":" in value:
        raise ValueError(f"{value!r}: give one directory per list entry, not a ':'-separated PATH")
    return repo_relative(value)


def header_name(value: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise ValueError(f"{value!r} is not an HTTP header name (letters, digits and !#$%&'*+-.^_`|~, "
                         "no spaces or newlines), e.g. x-my-route")
    if value.lower() in _RESERVED_HEADERS:
        raise ValueError(f"{value!r} is a header HTTP or the router already uses; pick your own, e.g. x-my-route")
    return value


def check_service_links(services: Mapping[str, ServiceConfig]) -> None:
    """`fork_with` and `depends_on` name known services, and start order has no cycle."""
    known = ", ".join(sorted(services)) or "none"
    for name, service in services.items():
        for field in ("fork_with", "depends_on"):
            for other in getattr(service, field):
                if other not in services:
                    raise ValueError(f"field `services.{name}.{field}`: unknown service {other!r} (services: {known})")
                if other == name:
                    raise ValueError(f"field `services.{name}.{field}`: names the service itself; remove {name!r}")
    start_order({name: service.depends_on for name, service in services.items()})


def start_order(depends_on: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Services in waves: each wave's services depend only on earlier waves (compose's `depends_on`)."""
    left = {name: set(deps) & set(depends_on) for name, deps in depends_on.items()}
    waves: list[list[str]] = []
    while left:
        ready = sorted(name for name, deps in left.items() if not deps)
        if not ready:
            cycle = " -> ".join(sorted(left))
            raise ValueError(f"`depends_on` of services {cycle} form a cycle; remove one of them")
        waves.append(ready)
        for name in ready:
            del left[name]
        for deps in left.values():
            deps.difference_update(ready)
    return waves


def check_placeholders(services: Mapping[str, ServiceConfig]) -> None:
    """Every `{...}` in a service's `run` and `env` names something expand() can fill."""
    for name, service in services.items():
        fields = {f"services.{name}.run": service.run}
        fields.update({f"services.{name}.env.{key}": value for key, value in service.env.items()})
        for field, text in fields.items():
            for match in _PLACEHOLDER.finditer(text):
                problem = _placeholder_problem(match.group(1), service, services)
                if problem:
                    raise ValueError(f"field `{field}`: placeholder {{{match.group(1)}}} {problem}")


def _placeholder_problem(ref: str, service: ServiceConfig, services: Mapping[str, ServiceConfig]) -> str | None:
    known = ", ".join(sorted(services)) or "none"
    if ref == "port":
        return None
    if ref == "database":
        return None if service.database is not None else "needs the service to have a `database:`"
    parts = ref.split(".")
    if parts[0] == "services":
        if len(parts) != 3 or parts[1] not in services:
            other = parts[1] if len(parts) > 1 else ""
            return f"names unknown service {other!r} (services: {known}); write {{services.NAME.url}}"
        if parts[2] not in SERVICE_FIELDS:
            offered = ", ".join(f"{{services.{parts[1]}.{field}}}" for field in SERVICE_FIELDS)
            return f"asks for {parts[2]!r} of {parts[1]!r}; loop fills {offered}"
        return None
    return ("is not one loop fills: use {port}, {database} or {services.NAME.url} (or .host, .port) "
            f"(a shell variable is ${{{ref}}}; braces meant literally need a space inside)")


def check_plan_files(config: LoopConfig, repo: Path) -> None:
    """Each plan named in `validate` that exists is read now: a bad one is an error before any run work.

    A plan not written yet is reported by the run that needs it (a run may add it)."""
    from agentloop.config import PlanRef
    from agentloop.plan_file import load_plan  # plan_file imports config: import late

    root = repo.resolve()
    for index, ref in enumerate(config.validate_):
        if not isinstance(ref, PlanRef):
            continue
        path = repo / ref.plan
        if not path.exists():
            continue
        if not path.resolve().is_relative_to(root):
            raise ConfigError(f"{repo / 'loop.yaml'}: field `validate[{index}].plan`: {ref.plan!r} leads out of the "
                              "repository through a symlink; point it at a file inside")
        plan = load_plan(path)
        for number, step in enumerate(plan.steps):
            for action_name in ("wait", "http", "logs"):
                action = getattr(step, action_name)
                if action is not None and action.service not in config.services:
                    known = ", ".join(sorted(config.services)) or "none"
                    raise ConfigError(f"{path}: field `steps[{number}].{action_name}.service`: unknown service "
                                      f"{action.service!r} (loop.yaml services: {known})")
