"""Pydantic records passed between nodes and backends, and stored in checkpoints and run records.

The graph state (`agentloop.loop.state`) holds these models themselves; why that round-trips through
every checkpointer is told there. They hold JSON values only (no paths, no datetimes), so that
``Model(**model.model_dump())``, what a checkpoint restores, is the model again.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, BaseModel, Field


class Issue(BaseModel):
    number: int
    title: str
    body: str = ""
    url: str | None = None
    labels: list[str] = Field(default_factory=list)
    comments: list[str] = Field(default_factory=list)


class Usage(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0
    calls: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_read_tokens + self.cache_write_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_read_tokens=self.cache_read_tokens + other.cache_read_tokens,
            cache_write_tokens=self.cache_write_tokens + other.cache_write_tokens,
            cost_usd=round(self.cost_usd + other.cost_usd, 6),
            calls=self.calls + other.calls,
        )


class EditResult(BaseModel):
    """What one edit turn of the coding agent did."""

    summary: str = ""
    usage: Usage = Field(default_factory=Usage)
    turns: int = 0
    stop_reason: Literal["done", "max_turns", "budget", "error"] = "done"
    error: str | None = None


class ForkInfo(BaseModel):
    service: str
    url: str
    pid: int | None = None
    source: str = Field(description="The worktree path (local) or image (kubernetes) the fork runs.")
    code_hash: str = ""
    log_path: str | None = None


class SandboxInfo(BaseModel):
    name: str
    backend: str
    route_key: str
    forks: dict[str, ForkInfo] = Field(default_factory=dict)
    router_url: str = ""
    service_urls: dict[str, str] = Field(default_factory=dict)
    routing_headers: dict[str, str] = Field(default_factory=dict)
    link: str | None = None
    created_at: float = 0.0
    expires_at: float = 0.0


class TestCaseResult(BaseModel):
    __test__ = False  # not a pytest class

    name: str
    outcome: Literal["passed", "failed", "error", "skipped"]
    duration: float = 0.0
    message: str = ""
    flaky: bool = False
    file: str | None = Field(default=None, description="The JUnit `file` attribute, when the report has it.")
    line: int | None = Field(default=None, description="The JUnit `line` attribute, when the report has it.")


class SuiteResult(BaseModel):
    name: str
    kind: Literal["suite", "plan"] = "suite"
    command: str = ""
    ran: bool = True
    exit_code: int | None = None
    duration: float = 0.0
    tests: list[TestCaseResult] = Field(default_factory=list)
    output_tail: str = ""
    error: str | None = None

    @property
    def failed(self) -> list[TestCaseResult]:
        return [t for t in self.tests if t.outcome in ("failed", "error") and not t.flaky]

    def counts(self) -> dict[str, int]:
        counts = {"passed": 0, "failed": 0, "error": 0, "skipped": 0, "flaky": 0}
        for test in self.tests:
            counts["flaky" if test.flaky else test.outcome] += 1
        return counts


class Comparison(BaseModel):
    """Sandbox failures set against the same tests in the base run (at the base commit)."""

    regressions: list[str] = Field(default_factory=list)
    preexisting: list[str] = Field(default_factory=list)
    fixed: list[str] = Field(default_factory=list, description="Fail in the base run, pass in the sandbox: "
                             "fixed by this change (the change's own new tests and the repository's red tests).")
    flaky: list[str] = Field(default_factory=list)
    not_reproducing: list[str] = Field(default_factory=list, description="The change's own tests that pass in "
                                       "the base run too: they do not reproduce the issue.")


class BaseRunSource(BaseModel):
    """Where one suite's base results came from: its base run, in full at the base commit, shared by every
    run and iteration on that commit through the cache under the state dir."""

    suite: str
    commit: str
    config_hash: str
    cached: bool = Field(description="Read from the cache (False: this validation ran the suite in full).")
    computed_at: float = 0.0
    tests: int = 0
    error: str | None = None


class Verdict(BaseModel):
    passed: bool
    proven: bool = False
    reasons: list[str] = Field(default_factory=list)
    results: list[SuiteResult] = Field(default_factory=list)
    comparison: Comparison = Field(default_factory=Comparison)
    unproven: list[str] = Field(default_factory=list, description="Why a PR must be a draft.")
    needs_review: list[str] = Field(default_factory=list, description="Changes to test infrastructure or to "
                                    "tests that passed in the base run: the change cannot be proven by loop.")
    # `baseline` in verdicts checkpointed by older versions of loop
    base_runs: list[BaseRunSource] = Field(default_factory=list,
                                           validation_alias=AliasChoices("base_runs", "baseline"))
    outcome: Literal["passed", "unproven", "failed"] | None = Field(
        default=None, description="The verdict's word (agentloop.verdict_words); None in older records.")


class Diagnosis(BaseModel):
    summary: str = ""
    excerpts: dict[str, str] = Field(default_factory=dict, description="Service -> log excerpt.")


class DeployResult(BaseModel):
    ok: bool
    sandbox: SandboxInfo | None = None
    forked: list[str] = Field(default_factory=list)
    restarted: list[str] = Field(default_factory=list)
    error: str | None = None
    service: str | None = None
    exit_code: int | None = None
    log_tail: str = ""


class ConfinementInfo(BaseModel):
    """How agent-written code was confined in a run (`Confinement.describe()`), as its evidence records it."""

    confined: bool
    jail_uid: int | None = None
    network_for_commands: bool = False
    limits: dict[str, int] = Field(default_factory=dict, description="policy.limits, by field.")


class PullRequest(BaseModel):
    number: int | None = None
    url: str
    branch: str
    head_commit: str
    draft: bool = False
    title: str = ""
