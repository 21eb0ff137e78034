"""What `loop sandbox create --dry-run` prints: the objects a Kubernetes sandbox would apply, or the
processes a local sandbox would start. Nothing here touches a cluster or starts a process.

Values of environment variables whose names look secret (KEY, TOKEN, PASSWORD...) are masked: a dry
run is read by people and pasted into issues, and the real values are not needed to review a plan.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Literal

import yaml

from agentloop.config import LoopConfig
from agentloop.errors import LoopError
from agentloop.redact import MASK, is_secret_name, redact

OutputFormat = Literal["yaml", "json"]
FORMATS: tuple[OutputFormat, ...] = ("yaml", "json")
# Looks secret by name but is not: the route key is shown by `ls` and sent in every routed request.
_PUBLIC = frozenset({"LOOP_ROUTE_KEY", "SIGNADOT_SANDBOX_ROUTING_KEY"})


def _secret(name: str) -> bool:
    return name not in _PUBLIC and is_secret_name(name)


def check_format(value: str) -> OutputFormat:
    for known in FORMATS:
        if value == known:
            return known
    raise LoopError(f"-o {value!r}: use one of {', '.join(FORMATS)}")


def render(documents: list[dict[str, Any]], output: OutputFormat) -> str:
    """YAML as a multi-document stream (`kubectl apply -f -` takes it), JSON as one array."""
    if output == "json":
        text = json.dumps(documents, indent=2) + "\n"
    else:
        text = yaml.safe_dump_all(documents, sort_keys=False, default_flow_style=False)
    return redact(text)


def masked_objects(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Kubernetes objects with secret-looking container env values masked."""
    shown = copy.deepcopy(objects)
    for obj in shown:
        template = (obj.get("spec") or {}).get("template") or {}
        for container in (template.get("spec") or {}).get("containers") or []:
            for item in container.get("env") or []:
                if "value" in item and _secret(str(item.get("name", ""))):
                    item["value"] = MASK
    return shown


def local_plan(config: LoopConfig, name: str, forks: dict[str, Path], *, baseline_up: bool) -> dict[str, Any]:
    """The processes a local sandbox would start, and what the baseline would still serve."""
    unknown = sorted(set(forks) - set(config.services))
    if unknown:
        raise LoopError(f"--fork {', '.join(unknown)}: not a service in loop.yaml `services:`; "
                        f"use one of {', '.join(config.services)}")
    starts = []
    for service, source in forks.items():
        spec = config.services[service]
        starts.append({
            "service": service,
            "source": str(source),
            "run": spec.run,
            "port": "a free loopback port, chosen at start ({port} in run and env)",
            # Without `health`, ready means its port accepts TCP connections.
            "health": spec.health if spec.health is not None else "tcp (ready when its port accepts connections)",
            "env": {key: MASK if _secret(key) else value for key, value in spec.env.items()},
            "database": "its own copy of the baseline's database" if spec.database else None,
        })
    return {
        "backend": "local",
        "sandbox": name,
        "route_key": "a new random key, chosen at create",
        "baseline": "up" if baseline_up else
                    f"not up: it would be started first (every service at {config.base_branch}, with the router)",
        "starts": starts,
        "served_by_baseline": [s for s in config.services if s not in forks],
    }
