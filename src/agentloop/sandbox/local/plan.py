"""What a local sandbox would start (`loop sandbox create --dry-run`): its forks' commands, ports, health
checks and environments, and what the baseline would still serve. Nothing is started; secret-looking
environment values are masked, since a plan is read by people and pasted into issues."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agentloop.config import LoopConfig
from agentloop.errors import LoopError
from agentloop.redact import MASK
from agentloop.sandbox.client import looks_secret


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
            "env": {key: MASK if looks_secret(key) else value for key, value in spec.env.items()},
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
