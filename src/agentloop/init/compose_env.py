"""A compose service's environment, told in loop's words: addresses of other compose services become
`{services.NAME.url}`, `.host` and `.port`, the service's own port becomes `{port}`.

Inside compose a service reaches another by its service name and container port (`db:5432`); under loop
every service listens on a port of its own on 127.0.0.1, reached through the router, so those literals
would point nowhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agentloop.init.draft import Noted, one_line, stray_placeholder

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HOST_SUFFIX = re.compile(r"_?(HOST|HOSTNAME|ADDR|ADDRESS|SERVER|SERVICE)$", re.IGNORECASE)
_PORT_SUFFIX = re.compile(r"_?PORT$", re.IGNORECASE)
_DEFAULTED = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}")
_VALUE_CHARS = 4000


@dataclass(frozen=True)
class Peer:
    """A compose service as another service sees it: its loop name and the port it listens on inside
    compose; `runs` is False for one loop does not start (an image only), `why` says why."""

    loop_name: str
    port: int | None
    runs: bool
    why: str = ""


def translate_env(
    raw: object, *, own_port: int | None, peers: dict[str, Peer], service: str, notes: list[str]
) -> dict[str, Noted]:
    """Compose `environment:` (a mapping or a list of KEY=VALUE) as loop `env`, each changed value
    noted; entries loop could not pass on are left out and said in `notes`."""
    pairs = _pairs(raw, service, notes)
    host_prefixes: dict[str, str] = {}
    for key, value in pairs:
        if value in peers:
            host_prefixes[_HOST_SUFFIX.sub("", key).upper()] = value
    env: dict[str, Noted] = {}
    for key, value in pairs:
        noted = _translate(key, value, own_port=own_port, peers=peers, host_prefixes=host_prefixes)
        if noted.idle:
            notes.append(f"env {key}: {noted.note}")
        stray = stray_placeholder(str(noted.value), _loop_fields(peers))
        if stray is not None:
            notes.append(f"env {key} left out: its value has {stray}, which loop would read as a placeholder")
            continue
        env[key] = noted
    return env


def _loop_fields(peers: dict[str, Peer]) -> set[str]:
    fields = {"port"}
    for peer in peers.values():
        if peer.runs:
            fields.update(f"services.{peer.loop_name}.{part}" for part in ("url", "host", "port"))
    return fields


def _pairs(raw: object, service: str, notes: list[str]) -> list[tuple[str, str]]:
    items: list[tuple[object, object]] = []
    if isinstance(raw, dict):
        items = list(raw.items())
    elif isinstance(raw, list):
        for entry in raw:
            line = str(entry) if isinstance(entry, (str, int, float)) else ""
            name, sep, rest = line.partition("=")
            items.append((name, rest if sep else None))
    elif raw is not None:
        notes.append("its `environment` is neither a mapping nor a list; left out")
    pairs: list[tuple[str, str]] = []
    for key, value in items[:500]:
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            notes.append(f"env {one_line(repr(key), 60)} left out: not a variable name")
        elif value is None:
            notes.append(f"env {key} left out: compose takes it from your shell; set it under `env:`")
        elif isinstance(value, (dict, list)):
            notes.append(f"env {key} left out: not a plain value")
        else:
            text = ("true" if value else "false") if isinstance(value, bool) else str(value)
            if "\0" in text or len(text) > _VALUE_CHARS:
                notes.append(f"env {key} left out: its value has a NUL byte or is over {_VALUE_CHARS} characters")
            else:
                pairs.append((key, text))
    return pairs


def _translate(
    key: str, value: str, *, own_port: int | None, peers: dict[str, Peer], host_prefixes: dict[str, str]
) -> Noted:
    defaulted = _DEFAULTED.sub(lambda m: m.group(1), value)
    was = f"was {one_line(value, 60)!r}"
    if defaulted != value:
        inner = _translate(key, defaulted, own_port=own_port, peers=peers, host_prefixes=host_prefixes)
        return Noted(inner.value, f"{was}: compose's default taken" + (f"; {inner.note}" if inner.note else ""))
    if value in peers:
        peer = peers[value]
        if not peer.runs:
            return Noted(value, f"names compose service {value!r}, which loop does not run ({peer.why})", idle=True)
        return Noted(f"{{services.{peer.loop_name}.host}}", f"{was} (compose service {value!r})")
    if value.isdigit() and _PORT_SUFFIX.search(key):
        prefix = _PORT_SUFFIX.sub("", key).upper()
        peer_name = host_prefixes.get(prefix)
        if peer_name is None and prefix == "" and own_port is not None and int(value) == own_port:
            return Noted("{port}", f"{was}: the port this service listens on")
        if peer_name is None:
            matching = [name for name, peer in peers.items() if peer.port == int(value) and peer.runs]
            peer_name = matching[0] if len(matching) == 1 and prefix else None
        if peer_name is not None and peers[peer_name].runs:
            return Noted(f"{{services.{peers[peer_name].loop_name}.port}}",
                         f"{was} (port of compose service {peer_name!r})")
        if own_port is not None and int(value) == own_port:
            return Noted("{port}", f"{was}: the port this service listens on")
    return _addresses(value, peers)


def _addresses(value: str, peers: dict[str, Peer]) -> Noted:
    """Every `scheme://NAME[:PORT]` and `NAME:PORT` of a compose service in `value`, in loop's words."""
    names = sorted(peers, key=len, reverse=True)
    if not names:
        return Noted(value)
    alternatives = "|".join(re.escape(name) for name in names)
    pattern = re.compile(
        rf"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)?(?P<user>[^@/\s]*@)?(?<![\w.-])(?P<host>{alternatives})"
        rf"(?::(?P<port>\d+))?(?![\w.-])"
    )
    used: list[str] = []
    idle: list[str] = []

    def swap(match: re.Match[str]) -> str:
        scheme, user, host, port = match.group("scheme"), match.group("user"), match.group("host"), match.group("port")
        peer = peers[host]
        if scheme is None and port is None:
            return match.group(0)  # a bare word that happens to be a service name: not an address
        if user and scheme is None:
            return match.group(0)
        if not peer.runs:
            idle.append(f"{host} ({peer.why})")
            return match.group(0)
        used.append(host)
        same_port = port is None or peer.port is None or int(port) == peer.port
        if scheme is not None and scheme.lower() in ("http://", "https://") and not user and same_port:
            return f"{{services.{peer.loop_name}.url}}"
        return f"{scheme or ''}{user or ''}{{services.{peer.loop_name}.host}}:{{services.{peer.loop_name}.port}}"

    translated = pattern.sub(swap, value)
    if idle:
        return Noted(value, "points at compose service " + ", ".join(dict.fromkeys(idle)) + ", which loop does not run",
                     idle=True)
    if used:
        return Noted(translated, f"was {one_line(value, 60)!r} (compose service {', '.join(dict.fromkeys(used))})")
    return Noted(value)
