"""Checks of `loop.yaml` values that a type alone cannot say: paths that stay in the repository,
placeholders that name something that exists, a route header that is a header name. They run when the
config is loaded, so a mistake stops `loop` before any run work with a line naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING

from agentloop.errors import ConfigError

if TYPE_CHECKING:
    from agentloop.config import LoopConfig, ServiceConfig

# A `{name}` or `{dotted.name}` not preceded by `$`: what sandbox.services.expand would try to fill.
# Shell `${VAR}` and braces with spaces (`{ print $1 }`) are left alone, as expand leaves them.
_PLACEHOLDER = re.compile(r"(?<!\$)\{([A-Za-z_][\w.-]*)\}")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 field-name
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


def header_name(value: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise ValueError(f"{value!r} is not an HTTP header name (letters, digits and !#$%&'*+-.^_`|~, "
                         "no spaces or newlines), e.g. x-my-route")
    if value.lower() in _RESERVED_HEADERS:
        raise ValueError(f"{value!r} is a header HTTP or the router already uses; pick your own, e.g. x-my-route")
    return value


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
        if parts[2] != "url":
            return f"asks for {parts[2]!r} of {parts[1]!r}; the only one is {{services.{parts[1]}.url}}"
        return None
    return ("is not one loop fills: use {port}, {database} or {services.NAME.url} "
            f"(a shell variable is ${{{ref}}}; braces meant literally need a space inside)")


def check_plan_files(config: LoopConfig, repo: Path) -> None:
    """Each plan named in `validate` that exists is read now: a bad one is an error before any run work.

    A plan not written yet is reported by the run that needs it (a run may add it)."""
    from agentloop.config import PlanRef
    from agentloop.validation.plan_file import load_plan  # validation imports config: import late

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
