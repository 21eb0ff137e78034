"""`loop.yaml`: strict pydantic models and a loader whose errors name the file, the field and the fix."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agentloop.errors import ConfigError

CONFIG_FILE = "loop.yaml"
# A current model the SDK does not mark deprecated; `--model`, `loop.yaml` or LOOP_MODEL override it.
DEFAULT_MODEL = "claude-sonnet-4-5"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatabaseConfig(_Strict):
    """A service's own SQLite file; each fork runs on its own copy (a branch) of it."""

    engine: Literal["sqlite"] = "sqlite"
    path: str


class ServiceConfig(_Strict):
    path: str = Field(description="A change under this path (relative to the repo) forks this service.")
    run: str = Field(description="Command that starts the service; `{port}` is the port to listen on.")
    health: str = "/healthz"
    env: dict[str, str] = Field(default_factory=dict)
    database: DatabaseConfig | None = None
    depends_on: list[str] = Field(default_factory=list, description="Services this one is forked with.")
    ready_timeout: float = Field(default=30.0, gt=0)


class SuiteConfig(_Strict):
    suite: str
    run: str
    sandbox: bool = False
    junit: str | None = Field(default=None, description="JUnit XML path for runners other than pytest.")
    timeout: float = Field(default=600.0, gt=0)


class PlanRef(_Strict):
    plan: str
    name: str | None = None


ValidateEntry = Annotated[SuiteConfig | PlanRef, Field(union_mode="left_to_right")]


class Budget(_Strict):
    usd: float | None = Field(default=5.0, ge=0)
    minutes: float | None = Field(default=30.0, gt=0)
    tokens: int | None = Field(default=None, gt=0)


class AgentConfig(_Strict):
    model: str = DEFAULT_MODEL
    max_iterations: int = Field(default=6, ge=1)
    max_turns: int = Field(default=40, ge=1, description="Model turns per iteration.")
    max_tokens: int = Field(default=8192, ge=256, description="Output tokens per model call.")
    budget: Budget = Field(default_factory=Budget)


class PolicyConfig(_Strict):
    commands: list[str] = Field(default_factory=lambda: ["*"], description="Glob patterns allowed.")
    deny: list[str] = Field(default_factory=lambda: ["git push*", "curl *", "wget *", "sudo *"])
    network: bool = False
    command_timeout: float = Field(default=120.0, gt=0)
    output_limit: int = Field(default=20_000, ge=1000)


class ForgeConfig(_Strict):
    kind: Literal["local", "github"] = "local"
    repo: str | None = None
    api_url: str | None = None
    draft_on_failure: bool = False

    @field_validator("repo")
    @classmethod
    def _owner_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[\w.-]+/[\w.-]+", value):
            raise ValueError("must look like owner/name")
        return value


class SandboxConfig(_Strict):
    backend: Literal["local", "kubernetes"] = "local"
    ttl: float = Field(default=7200.0, gt=0, description="Seconds before `gc` removes a sandbox.")
    route_header: str = Field(default="x-loop-route", description="The project's own route-key header.")
    kubernetes: dict[str, Any] | None = None


class LoopConfig(_Strict):
    base_branch: str = "main"
    services: dict[str, ServiceConfig]
    validate_: list[ValidateEntry] = Field(default_factory=list, alias="validate")
    require: Literal["proven", "all"] = "proven"
    agent: AgentConfig = Field(default_factory=AgentConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    forge: ForgeConfig = Field(default_factory=ForgeConfig)
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _known_dependencies(self) -> LoopConfig:
        for name, service in self.services.items():
            for dep in service.depends_on:
                if dep not in self.services:
                    raise ValueError(f"services.{name}.depends_on names unknown service {dep!r}")
        return self

    @property
    def suites(self) -> list[SuiteConfig]:
        return [entry for entry in self.validate_ if isinstance(entry, SuiteConfig)]

    @property
    def plans(self) -> list[PlanRef]:
        return [entry for entry in self.validate_ if isinstance(entry, PlanRef)]


def _field_path(location: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for part in location:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif part in ("SuiteConfig", "PlanRef"):
            continue
        else:
            parts.append(("." if parts else "") + str(part))
    return "".join(parts) or "(top level)"


def parse_config(data: Any, source: Path) -> LoopConfig:
    """Validate already-parsed YAML; raise ConfigError naming `source` and the first bad field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with at least `services:`; see README 'loop.yaml'")
    try:
        return LoopConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = _field_path(tuple(first["loc"]))
        raise ConfigError(f"{source}: field `{field}`: {first['msg']} (see README 'loop.yaml')") from None


def load_config(repo: Path) -> LoopConfig:
    """Load `<repo>/loop.yaml`."""
    path = repo / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: not found; create a loop.yaml (see README 'loop.yaml') or cd to your repo")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} is not valid YAML: {getattr(exc, 'problem', exc)}") from None
    return parse_config(data, path)
