"""What `loop sandbox create --dry-run` prints: the backend's plan (`Plannable`) -- the objects a Kubernetes
sandbox would apply, or the processes a local sandbox would start. Nothing here touches a cluster or starts
a process.

Values of environment variables whose names look secret (KEY, TOKEN, PASSWORD...) are masked: a dry
run is read by people and pasted into issues, and the real values are not needed to review a plan.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Literal

import yaml

from agentloop.errors import LoopError
from agentloop.redact import MASK, redact
from agentloop.sandbox.client import looks_secret

OutputFormat = Literal["yaml", "json"]
FORMATS: tuple[OutputFormat, ...] = ("yaml", "json")


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
    """Kubernetes objects with secret-looking container env values masked (a local plan masks its own)."""
    shown = copy.deepcopy(objects)
    for obj in shown:
        template = (obj.get("spec") or {}).get("template") or {}
        for container in (template.get("spec") or {}).get("containers") or []:
            for item in container.get("env") or []:
                if "value" in item and looks_secret(str(item.get("name", ""))):
                    item["value"] = MASK
    return shown
