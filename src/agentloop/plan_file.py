"""The plan file: YAML steps of governed actions, validated strictly so that a typo names its field."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agentloop.errors import ConfigError
from agentloop.inputs import load_yaml


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class StatusCheck(_Strict):
    status: int = 200
    path: str | None = None


class WaitAction(_Strict):
    service: str
    until: Literal["healthy"] | StatusCheck = "healthy"
    timeout: float = Field(default=30.0, gt=0)


class HttpAction(_Strict):
    method: str = "GET"
    service: str
    path: str = "/"
    headers: dict[str, str] = Field(default_factory=dict)
    json_: Any = Field(default=None, alias="json")
    body: str | None = None
    timeout: float = Field(default=30.0, gt=0)


class Expect(_Strict):
    status: int | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    json_: dict[str, Any] = Field(default_factory=dict, alias="json")
    contains: str | list[str] | None = None


class LogsAction(_Strict):
    service: str


class Step(_Strict):
    name: str
    wait: WaitAction | None = None
    http: HttpAction | None = None
    expect: Expect | None = None
    logs: LogsAction | None = None

    @model_validator(mode="after")
    def _one_action(self) -> Step:
        actions = [name for name in ("wait", "http", "logs") if getattr(self, name) is not None]
        if len(actions) != 1:
            raise ValueError(f"a step has exactly one of wait, http, logs (got {', '.join(actions) or 'none'})")
        if self.expect is not None and self.http is None:
            raise ValueError("`expect` belongs to an `http` step")
        return self


class Plan(_Strict):
    name: str = ""
    steps: list[Step] = Field(min_length=1)


def load_plan(path: Path) -> Plan:
    """Read and check a plan; a bad file raises ConfigError naming the file and the field."""
    if not path.is_file():
        raise ConfigError(f"{path}: plan not found; check the `plan:` path in loop.yaml (relative to the repo)")
    data = load_yaml(path, what="plan")  # bounded, UTF-8, no duplicate keys; errors name the line
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with `steps:` (a list of named steps)")
    try:
        plan = Plan.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in first["loc"]).replace(".[", "[")
        raise ConfigError(f"{path}: field `{field or 'steps'}`: {first['msg']}") from None
    return plan if plan.name else plan.model_copy(update={"name": path.stem})
