"""`loop.yaml`: strict pydantic models and a loader whose errors name the file, the field and the fix."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from agentloop import config_rules, git
from agentloop.errors import ConfigError
from agentloop.inputs import MAX_INPUT_BYTES, load_yaml, parse_yaml

log = logging.getLogger(__name__)

CONFIG_FILE = "loop.yaml"
# A current model the SDK does not mark deprecated; `--model`, `loop.yaml` or LOOP_MODEL override it.
DEFAULT_MODEL = "claude-sonnet-5-5"


# A path inside the repository (relative, no `..`): services, databases, plans and reports live there.
RepoPath = Annotated[str, AfterValidator(config_rules.repo_relative)]
# A PATH directory: relative ones are inside the checkout, absolute ones on the host (must be readable in jails).
PathEntry = Annotated[str, AfterValidator(config_rules.path_entry)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatabaseConfig(_Strict):
    """A service's own SQLite file; each fork runs on its own copy (a branch) of it."""

    engine: Literal["sqlite"] = "sqlite"
    path: RepoPath


class SetupStep(_Strict):
    """A command that installs the project's dependencies into a fresh checkout (a virtualenv,
    node_modules), run confined; what it `creates` is cached by the hash of `run` and its `inputs`."""

    run: str = Field(description="Shell command, run at the repository's top.")
    inputs: list[RepoPath] = Field(default_factory=list,
                                   description="Files (or globs) whose contents decide the cache key: lockfiles.")
    creates: list[RepoPath] = Field(default_factory=list,
                                    description="Paths the step makes (e.g. .venv); cached and restored. "
                                                "Without any, the step runs in every fresh checkout.")
    timeout: float = Field(default=900.0, gt=0)
    network: bool = Field(default=True, description="Installers need the package registry.")


class ServiceConfig(_Strict):
    path: RepoPath = Field(description="A change under this path (relative to the repo) forks this service.")
    run: str = Field(description="Command that starts the service; `{port}` is the port to listen on.")
    health: str | None = Field(default=None, description="HTTP path answering 2xx when ready; "
                                                         "without it, ready means it accepts TCP connections.")
    env: dict[str, str] = Field(default_factory=dict)
    setup: list[SetupStep] = Field(default_factory=list, description="This service's own setup steps.")
    database: DatabaseConfig | None = None
    fork_with: list[str] = Field(default_factory=list,
                                 description="Services forked together with this one whenever it is forked.")
    depends_on: list[str] = Field(default_factory=list,
                                  description="Services started (and ready) before this one, as in compose.")
    ready_timeout: float = Field(default=30.0, gt=0)


class SuiteConfig(_Strict):
    suite: str
    run: str
    sandbox: bool = False
    junit: RepoPath | None = Field(default=None, description="JUnit XML path for runners other than pytest.")
    timeout: float = Field(default=600.0, gt=0)
    env: dict[str, str] = Field(default_factory=dict, description="Added to the top-level `env` for this suite.")


class PlanRef(_Strict):
    plan: RepoPath
    name: str | None = None


def _entry_kind(value: Any) -> str:
    # Chosen by its key, so that a bad `plan:` entry is reported as a plan, not as a suite missing `run`.
    if isinstance(value, PlanRef) or (isinstance(value, dict) and "plan" in value):
        return "PlanRef"
    return "SuiteConfig"


ValidateEntry = Annotated[
    Annotated[SuiteConfig, Tag("SuiteConfig")] | Annotated[PlanRef, Tag("PlanRef")], Discriminator(_entry_kind)
]


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

    @field_validator("model")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value.strip():
            raise ValueError(f"is empty; name a Claude model (e.g. {DEFAULT_MODEL}) or leave `model` out")
        return value


class Limits(_Strict):
    """Resource limits of every confined process tree (the agent's commands, suites, services)."""

    processes: int = Field(default=512, ge=16, description="Processes and threads at once (RLIMIT_NPROC).")
    file_size_mb: int = Field(default=1024, ge=1, description="Largest file one process may write (RLIMIT_FSIZE).")
    memory_mb: int = Field(default=8192, ge=64, description="Address space of one process (RLIMIT_AS).")
    tmp_mb: int = Field(default=512, ge=1, description="Size of the private /tmp (a tmpfs in memory).")
    disk_mb: int = Field(default=2048, ge=1, description="How much a command may grow the worktree's disk usage.")
    output_mb: int = Field(default=16, ge=1, description="Output kept from one suite or command (its head and tail).")


class PolicyConfig(_Strict):
    commands: list[str] = Field(default_factory=lambda: ["*"], description="Glob patterns allowed.")
    deny: list[str] = Field(default_factory=lambda: ["git push*", "curl *", "wget *", "sudo *"])
    network: bool = False
    command_timeout: float = Field(default=120.0, gt=0)
    output_limit: int = Field(default=20_000, ge=1000)
    limits: Limits = Field(default_factory=Limits)
    secrets: list[str] = Field(
        default_factory=list,
        description="Names of environment variables whose values are secrets, beyond the secret-looking names.",
    )
    readable: list[str] = Field(
        default_factory=list,
        description="Extra host directories confined code may read (toolchains outside /usr and PATH).",
    )
    allow_unconfined: bool = Field(
        default=False,
        description="Run agent-written code without bubblewrap when it is not usable (never the default).",
    )


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
    review_ttl_hours: float | None = Field(
        default=None, gt=0, description="Hours a published run's sandbox is kept for its pull request's review "
        "(refreshed by each review iteration). Unset: 24 with the GitHub forge, not kept with the local one.")
    route_header: Annotated[str, AfterValidator(config_rules.header_name)] = Field(
        default="x-loop-route", description="The project's own route-key header.")
    kubernetes: dict[str, Any] | None = None


class RetentionConfig(_Strict):
    """What `loop sandbox gc` keeps: records, worktrees and branches of finished runs for `days`."""

    days: float = Field(default=14.0, gt=0, description="Run records, worktrees, branches (a pull request's "
                        "too), the App's idle clones and base results older than this are removed by gc.")
    base_results: int = Field(default=20, ge=1, description="Base commits whose base results (their cached "
                              "base runs) gc keeps (the newest; the current base's are always kept).")

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and "baseline_results" in data:
            raise ValueError("`retention.baseline_results` is now `retention.base_results` (the base commits "
                             "whose cached base runs gc keeps); rename the key")
        return data


class LoopConfig(_Strict):
    base_branch: str = "main"
    setup: list[SetupStep] = Field(default_factory=list, description="Repository-wide setup steps.")
    path: list[PathEntry] = Field(default_factory=list,
                                  description="Directories (e.g. .venv/bin) put first on PATH for services, "
                                             "suites and the agent's commands.")
    env: dict[str, str] = Field(default_factory=dict, description="Environment of services, suites and commands.")
    services: dict[str, ServiceConfig]
    validate_: list[ValidateEntry] = Field(default_factory=list, alias="validate")
    require: Literal["proven", "all"] = "proven"
    agent: AgentConfig = Field(default_factory=AgentConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    forge: ForgeConfig = Field(default_factory=ForgeConfig)
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _known_dependencies(self) -> LoopConfig:
        config_rules.check_service_links(self.services)
        config_rules.check_placeholders(self.services)
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
    if data.get("services") is None:
        state = "is empty" if "services" in data else "is missing"
        raise ConfigError(f"{source}: field `services` {state}; list the services, or write `services: {{}}` "
                          "for a repository without any (see README 'loop.yaml')")
    try:
        return LoopConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        message = first["msg"].removeprefix("Value error, ")
        where = f"field `{_field_path(tuple(first['loc']))}`: " if first["loc"] else ""
        raise ConfigError(f"{source}: {where}{message} (see README 'loop.yaml')") from None


def load_config_at(repo: Path, commit: str, checkout: LoopConfig) -> LoopConfig:
    """The loop.yaml committed at `commit` (a run's base: what it is validated with, out of the agent's
    reach); `checkout`, the user's own, when that commit has none or the same text."""
    shown = git.command(["show", f"{commit}:{CONFIG_FILE}"], cwd=repo, check=False)
    if shown.returncode != 0:
        log.warning("%s: the base commit %s has no %s; using the checkout's", repo, commit[:12], CONFIG_FILE)
        return checkout
    path = repo / CONFIG_FILE
    if path.is_file() and path.read_text(encoding="utf-8", errors="replace") == shown.stdout:
        return checkout
    source = Path(f"{path} (at the base commit {commit[:12]})")
    if len(shown.stdout.encode()) > MAX_INPUT_BYTES:
        raise ConfigError(f"{source}: more than the {MAX_INPUT_BYTES // 1024} KiB a loop.yaml may have; shorten it")
    log.info("using %s as committed at the base commit %s (the checkout's differs)", CONFIG_FILE, commit[:12])
    return parse_config(parse_yaml(shown.stdout, source=str(source)), source)


def load_config(repo: Path) -> LoopConfig:
    """Load `<repo>/loop.yaml`."""
    path = repo / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: not found; create a loop.yaml (see README 'loop.yaml') or cd to your repo")
    config = parse_config(load_yaml(path, what="loop.yaml"), path)
    config_rules.check_plan_files(config, repo)
    return config
