"""Writing a Draft as a commented loop.yaml, and the short list of guesses `loop init` prints.

Every value is written through `_scalar` (plain only when it cannot mean anything else to YAML, else
double-quoted with escapes) and every note through `one_line`, so text read from the repository can never
add a key, end a comment early or change what the file means.
"""

from __future__ import annotations

import re

import yaml
from yaml.nodes import ScalarNode

from agentloop.init.draft import Draft, Noted, ServiceDraft, SetupDraft, one_line

# Plain (unquoted) only for text YAML reads back as the same string: no `:` or `#` (a key, a comment), no
# brackets, braces or commas (flow lists), a letter, `_`, `.` or `/` first (not a number or an indicator),
# no space at either end.
_PLAIN = re.compile(r"[A-Za-z_./](?:[\w./@+= &$'\"|>!%*~^()<;\\-]*[\w./@+=&$'\"|>!%*~^()<;\\-])?", re.ASCII)
_RESOLVER = yaml.SafeLoader("")
_STR = "tag:yaml.org,2002:str"

HEADER = """\
# loop.yaml written by `loop init` from this repository's files. Each line marked `# guessed:` is a guess,
# with what it was guessed from: check them, then run `loop doctor`. Reference: README "loop.yaml".
# init ran nothing of the repository: the commands below are copied from its files.
"""


def _resolved(text: str) -> str:
    tag: str = _RESOLVER.resolve(ScalarNode, text, (True, False))  # type: ignore[no-untyped-call]
    return tag


def _scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    text = str(value)
    if _PLAIN.fullmatch(text) and _resolved(text) == _STR:
        return text  # YAML's own resolver says a plain `text` reads back as a string (not .5, yes, null)
    dumped: str = yaml.safe_dump(text, default_style='"', width=1 << 30, allow_unicode=False)
    return dumped.rstrip("\n")


def _flow(values: list[str]) -> str:
    return "[" + ", ".join(_scalar(v) for v in values) + "]"


def _value(value: object) -> str:
    return _flow([str(v) for v in value]) if isinstance(value, list) else _scalar(value)


def _noted(indent: str, key: str, noted: Noted) -> str:
    line = f"{indent}{key}: {_value(noted.value)}"
    return line + (f"  # guessed: {one_line(noted.note)}" if noted.note else "")


def _comment(indent: str, text: str) -> str:
    return f"{indent}# {one_line(text, 200)}"


def _setup(indent: str, step: SetupDraft) -> list[str]:
    lines = [_noted(f"{indent}- ", "run", step.run)]
    if step.inputs:
        lines.append(f"{indent}  inputs: {_flow(step.inputs)}")
    if step.creates:
        lines.append(f"{indent}  creates: {_flow(step.creates)}")
    return lines


def _service(service: ServiceDraft) -> list[str]:
    if service.disabled is not None:
        lines = [_comment("  ", f"{service.name}: not started by loop: {service.disabled} ({service.note})")]
        if service.run is not None:
            lines.append(f"  #   run: {one_line(str(service.run.value), 300)}")
        return lines
    assert service.run is not None
    lines = [f"  {_scalar(service.name)}:  # guessed: {one_line(service.note)}", _noted("    ", "path", service.path),
             _noted("    ", "run", service.run)]
    if service.health is not None:
        lines.append(_noted("    ", "health", service.health))
    else:
        lines.append("    # no `health`: ready means it accepts TCP connections on {port}")
    if service.env:
        lines.append("    env:")
        lines += [_noted("      ", _scalar(key), value) for key, value in service.env.items()]
    if service.depends_on is not None:
        lines.append(_noted("    ", "depends_on", service.depends_on))
    if service.setup:
        lines.append("    setup:")
        for step in service.setup:
            lines += _setup("      ", step)
    lines += [_comment("    ", f"check: {note}") for note in service.comments]
    return lines


def render(draft: Draft) -> str:
    lines = HEADER.rstrip("\n").splitlines()
    if draft.todo:
        lines += ["#", "# Check by hand:"] + [_comment("", f"  - {item}") for item in draft.todo]
    if draft.skipped:
        lines += ["#", "# Not used:"] + [_comment("", f"  - {item}") for item in draft.skipped]
    lines += ["", _noted("", "base_branch", draft.base_branch)]
    if draft.setup or draft.path is not None:
        lines += ["", "# The project's own environment: made once per set of `inputs` (cached by their hash), shared",
                  "# by the baseline, the forks and the suites; `path` comes first on their PATH."]
    if draft.setup:
        lines.append("setup:")
        for step in draft.setup:
            lines += _setup("  ", step)
    if draft.path is not None:
        lines.append(_noted("", "path", draft.path))
    lines.append("")
    if not draft.services:
        lines.append("services: {}  # none found: add the services this repository runs (README \"loop.yaml\")")
    elif not draft.active_services():
        lines.append("services: {}  # none loop can start as found; see the comments below")
        for service in draft.services:
            lines += _service(service)
    else:
        lines.append("services:")
        for service in draft.services:
            lines += _service(service)
    lines.append("")
    if draft.suites:
        lines.append("validate:")
        for suite in draft.suites:
            lines.append(f"  - suite: {_scalar(suite.suite)}")
            lines.append(_noted("    ", "run", suite.run))
            if suite.sandbox is not None:
                lines.append(_noted("    ", "sandbox", suite.sandbox))
    else:
        lines.append("validate: []  # no tests found: add a suite (README \"loop.yaml\")")
    lines += ["", "forge:"]
    if draft.forge_repo is None:
        lines.append(f"  kind: {draft.forge_kind}  # guessed: {one_line(draft.forge_note)}")
    else:
        lines += [f"  kind: {draft.forge_kind}", _noted("  ", "repo", draft.forge_repo)]
    return "\n".join(lines) + "\n"


def guesses(draft: Draft) -> list[str]:
    """One line per thing to check, most important first."""
    out = [f"base_branch {draft.base_branch.value}: {draft.base_branch.note}"]
    for step in draft.setup:
        out.append(f"setup: {step.run.value}")
    for service in draft.services:
        if service.disabled is not None:
            out.append(f"services.{service.name}: left out ({service.disabled})")
            continue
        health = f"health {service.health.value}" if service.health else "ready on TCP"
        out.append(f"services.{service.name}: `{service.run.value if service.run else ''}`, {health} ({service.note})")
        for step in service.setup:
            out.append(f"services.{service.name}.setup: {step.run.value}")
        out += [f"services.{service.name}: {comment}" for comment in service.comments]
    for suite in draft.suites:
        where = " (sandbox)" if suite.sandbox is not None else ""
        out.append(f"validate {suite.suite}{where}: {suite.run.value}")
    out.append(f"forge {draft.forge_kind}" + (f" {draft.forge_repo.value}" if draft.forge_repo else "")
               + ("" if draft.forge_repo else f": {draft.forge_note}"))
    out += [f"check: {item}" for item in draft.todo]
    out += [f"not used: {item}" for item in draft.skipped]
    return [one_line(line, 200) for line in out]
