"""`loop doctor`: whether a `loop fix` could succeed here, checked in the order a run needs things.

git, bubblewrap, the config, the model (the Models API, before any other work), each service starting and
becoming ready on the baseline, each suite on the baseline with its counts (plans: that they load), the
forge's credentials. Each check is one `Check` line with what to do when it fails; a check whose
prerequisite failed is `skip` with the reason. Everything shown passes through the run's redactor, so the
API key and the forge token never appear; repository code (services, suites) runs only in the jail, whose
environment is built from nothing (`agentloop.confine`).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from agentloop import git
from agentloop.config import CONFIG_FILE, DEFAULT_MODEL, LoopConfig, PolicyConfig, load_config, load_config_at
from agentloop.confine import ALLOW_UNCONFINED_ENV, Confinement
from agentloop.errors import ConfigError, LoopError
from agentloop.paths import repo_root
from agentloop.redact import Redactor

log = logging.getLogger(__name__)

Status = Literal["ok", "warn", "fail", "skip"]
_INSTALL_BWRAP = ("install bubblewrap (`make system-deps` or `apt-get install bubblewrap`) and allow user "
                  "namespaces, or opt out with `--allow-unconfined` (or `policy.allow_unconfined: true` in loop.yaml)")


class Check(BaseModel):
    """One line of the report: what was checked, how it went, what was found, what to do."""

    check: str
    status: Status
    detail: str
    fix: str = ""


Report = Callable[[Check], None]


def passed(checks: list[Check]) -> bool:
    """A `loop fix` could succeed: nothing failed (warnings and skips for options are fine)."""
    return not any(check.status == "fail" for check in checks)


@dataclass
class Doctor:
    """The checks in order; each reads what the earlier ones found (the repository, the config, the jail)."""

    repo: Path
    model: str | None = None
    skip_services: bool = False
    root: Path | None = None
    config: LoopConfig | None = None
    config_error: str | None = None
    base: str | None = None
    jail: Confinement | None = None
    jail_problem: str | None = None
    redactor: Redactor = field(default_factory=Redactor.from_environment)

    def run(self, report: Report | None = None) -> list[Check]:
        checks: list[Check] = []
        steps = self._checks()
        try:
            for check in steps:
                masked = check.model_copy(update={"detail": self.redactor.mask(check.detail),
                                                  "fix": self.redactor.mask(check.fix)})
                checks.append(masked)
                if report is not None:
                    report(masked)
        finally:
            steps.close()  # a report that raised (Ctrl-C while printing) still stops what doctor started
        return checks

    def _checks(self) -> Generator[Check, None, None]:
        yield self.check_git()
        yield self.check_bubblewrap()
        yield self.check_config()
        yield self.check_model()
        yield from self.check_baseline()
        yield self.check_forge()

    # -- 1. git --------------------------------------------------------------------------------------

    def check_git(self) -> Check:
        if shutil.which("git") is None:
            return Check(check="git", status="fail", detail="git is not installed (or not on PATH)",
                         fix="install git (e.g. `apt-get install git`)")
        try:
            self.root = repo_root(self.repo)
        except LoopError as exc:
            return Check(check="git", status="fail", detail=str(exc),
                         fix="run loop doctor in your repository (or pass --repo), or `git init` and commit")
        version = git.command(["--version"], check=False).stdout.strip().removeprefix("git version ")
        self._load_config()
        if self.config is None:
            return Check(check="git", status="ok", detail=f"git {version}; {self.root} is a git repository "
                         "(the base branch is checked once loop.yaml loads)")
        branch = self.config.base_branch
        try:
            self.base = git.resolve_base(git.open_repo(self.root), branch)
        except LoopError as exc:
            return Check(check="git", status="fail", detail=str(exc),
                         fix=f"create the branch {branch!r} (or fetch origin/{branch}), or set `base_branch` in "
                             "loop.yaml to the branch pull requests go to")
        detail = f"git {version}; {self.root}; base branch {branch} at {self.base[:12]}"
        try:
            git.ensure_clean(git.open_repo(self.root))
        except LoopError as exc:
            changed = re.search(r"uncommitted changes \([^)]*\)|no commits yet", str(exc))
            return Check(check="git", status="warn", detail=f"{detail}; {changed.group() if changed else exc}",
                         fix="`loop fix` refuses a checkout with uncommitted changes: commit or stash them first")
        return Check(check="git", status="ok", detail=detail)

    def _load_config(self) -> None:
        assert self.root is not None
        try:
            self.config = load_config(self.root)
        except LoopError as exc:
            self.config_error = str(exc)
            return
        self.redactor = Redactor.for_run(self.config)

    # -- 2. bubblewrap -------------------------------------------------------------------------------

    def check_bubblewrap(self) -> Check:
        policy = self.config.policy if self.config is not None else PolicyConfig()
        jail = Confinement(policy)
        bwrap = shutil.which("bwrap")
        if jail.confined:
            self.jail = jail
            who = f"as uid {jail.uid}" if jail.uid is not None else "as your user"
            return Check(check="bubblewrap", status="ok",
                         detail=f"{_bwrap_version(bwrap)}: jails work here ({who}, own PID namespace, "
                                f"no network for the agent's commands{' (policy.network)' if policy.network else ''})")
        reason = ("bwrap is not installed" if bwrap is None else
                  f"{_bwrap_version(bwrap)} is installed but cannot make a jail here (user namespaces off, or a "
                  "container without them)")
        opted = _opt_in(policy)
        if opted:
            self.jail = jail
            return Check(check="bubblewrap", status="warn",
                         detail=f"{reason}; agent-written code, services and suites run UNCONFINED ({opted}), "
                                "and each run's evidence says so",
                         fix="install bubblewrap (`make system-deps` or `apt-get install bubblewrap`) to confine them")
        self.jail_problem = "bubblewrap is not usable and nothing runs unconfined without the opt-out"
        return Check(check="bubblewrap", status="fail", detail=f"{reason}; agent-written code does not run "
                     "unconfined", fix=_INSTALL_BWRAP)

    # -- 3. the config -------------------------------------------------------------------------------

    def check_config(self) -> Check:
        if self.root is None:
            return _skip("config", "not in a git repository (see git)")
        if self.config is None:
            message = self.config_error or "loop.yaml did not load"
            missing = "not found" in message and message.startswith(str(self.root / "loop.yaml"))
            return Check(check="config", status="fail", detail=message,
                         fix="`loop init` writes a commented loop.yaml to start from" if missing else
                         "correct the field named above, in the file named above (README 'loop.yaml' lists every field)")
        config = self.config
        if self.base is None:
            return Check(check="config", status="ok", detail=_summary(config))
        shown = git.command(["cat-file", "-e", f"{self.base}:{CONFIG_FILE}"], cwd=self.root, check=False)
        if shown.returncode != 0:  # as after `loop init`: runs use the checkout's until it is committed
            where = f"not committed on {config.base_branch} yet, so runs use the checkout's"
            return Check(check="config", status="ok", detail=f"{_summary(config)} ({where})")
        try:  # what a run is validated with: the base commit's loop.yaml, out of the agent's reach
            at_base = load_config_at(self.root, self.base, config)
        except LoopError as exc:
            self.config = None
            return Check(check="config", status="fail", detail=str(exc),
                         fix=f"`loop fix` uses loop.yaml as committed on {config.base_branch}: correct it there")
        if at_base is not config:
            self.config = at_base
            return Check(check="config", status="warn", detail=f"{_summary(at_base)} (as committed on "
                         f"{config.base_branch}: the checkout's loop.yaml differs, and runs use the base's)",
                         fix=f"commit your loop.yaml to {config.base_branch} for runs to use it")
        return Check(check="config", status="ok", detail=_summary(config))

    # -- 4. the model --------------------------------------------------------------------------------

    def check_model(self) -> Check:
        from agentloop.agent.factory import preflight_model
        from agentloop.agent.models import end_of_life_dates

        model, source = self._chosen_model()
        try:
            preflight_model(model)
        except LoopError as exc:
            return Check(check="model", status="fail", detail=str(exc), fix=_model_fix(str(exc)))
        if model.startswith("replay:"):
            return Check(check="model", status="ok", detail=f"{model} ({source}): the cassette loads; no API call")
        if model in end_of_life_dates():
            ends = end_of_life_dates()[model]
            return Check(check="model", status="warn",
                         detail=f"{model} ({source}) works, but the anthropic SDK marks it deprecated"
                                + (f" (end of life {ends.isoformat()})" if ends else ""),
                         fix=f"move to a current model such as {DEFAULT_MODEL} (agent.model in loop.yaml)")
        return Check(check="model", status="ok",
                     detail=f"{model} ({source}): the key works and the Anthropic Models API knows the model")

    def _chosen_model(self) -> tuple[str, str]:
        if self.model:
            return self.model, "--model"
        if os.environ.get("LOOP_MODEL"):
            return os.environ["LOOP_MODEL"], "LOOP_MODEL"
        if self.config is not None and "model" in self.config.agent.model_fields_set:
            return self.config.agent.model, "agent.model in loop.yaml"
        return self.config.agent.model if self.config is not None else DEFAULT_MODEL, "the default"

    # -- 5, 6. services and suites on the baseline ---------------------------------------------------

    def check_baseline(self) -> Iterator[Check]:
        from agentloop.doctor.baseline import baseline_checks, skipped

        if self.config is None or self.root is None:
            yield _skip("services", self._no_config())
            yield _skip("suites", self._no_config())
            return
        reason = ("--skip-services" if self.skip_services else
                  "the base branch was not found (see git)" if self.base is None else self.jail_problem)
        if reason is None and self.jail is not None and self.base is not None:
            yield from baseline_checks(self.root, self.config, base=self.base, secrets=sorted(self.redactor.values))
        else:
            yield from skipped(self.root, self.config, reason or "the jail is not usable", base=self.base)

    def _no_config(self) -> str:
        return "not in a git repository (see git)" if self.root is None else "loop.yaml did not load (see config)"

    # -- 7. the forge --------------------------------------------------------------------------------

    def check_forge(self) -> Check:
        if self.config is None or self.root is None:
            return _skip("forge", self._no_config())
        if self.config.forge.kind == "local":
            return Check(check="forge", status="ok", detail="local: issues are .loop/issues/N.md, pull requests "
                         "are branches in this repository; no credentials needed")
        return _github(self.root, self.config, self)


def _github(root: Path, config: LoopConfig, doctor: Doctor) -> Check:
    from agentloop.forge.github import GitHubForge

    try:
        forge = GitHubForge.from_repo(root, config)
    except ConfigError as exc:
        token = "GITHUB_TOKEN" in str(exc)
        return Check(check="forge", status="fail", detail=str(exc),
                     fix="export GITHUB_TOKEN=<a token with issues, pull requests and contents read/write>" if token
                     else "set `forge.repo: owner/name` in loop.yaml (or an `origin` remote on GitHub)")
    doctor.redactor = doctor.redactor.with_values(*forge.secret_values())
    where = f"{forge.repo_slug} on {forge.api_url}"
    try:
        data = forge.repository()
    except LoopError as exc:
        return Check(check="forge", status="fail", detail=f"github: {exc}",
                     fix=f"check that GITHUB_TOKEN is valid and may read {forge.repo_slug}, that `forge.repo` names "
                         "it, and (GitHub Enterprise) `forge.api_url` / GITHUB_API_URL")
    permissions = data.get("permissions")
    if isinstance(permissions, dict) and not permissions.get("push", True):
        return Check(check="forge", status="warn", detail=f"github: {where} answers 200, but the token may not push "
                     "to it", fix=f"give the token contents and pull requests write access on {forge.repo_slug}")
    return Check(check="forge", status="ok", detail=f"github: GET /repos/{forge.repo_slug} on {forge.api_url} "
                 "answers 200 with GITHUB_TOKEN")


def run_doctor(repo: Path, *, model: str | None = None, skip_services: bool = False,
               report: Report | None = None) -> list[Check]:
    """Every check in order; `report` sees each as soon as it is done."""
    return Doctor(repo, model=model, skip_services=skip_services).run(report)


def _skip(check: str, reason: str) -> Check:
    return Check(check=check, status="skip", detail=f"skipped: {reason}")


def _summary(config: LoopConfig) -> str:
    def listed(names: list[str]) -> str:
        return ", ".join(names) or "none"

    plans = [ref.name or Path(ref.plan).stem for ref in config.plans]
    return (f"loop.yaml loads: services {listed(list(config.services))}; suites "
            f"{listed([suite.suite for suite in config.suites])}; plans {listed(plans)}; {config.forge.kind} forge, "
            f"{config.sandbox.backend} sandboxes")


def _opt_in(policy: PolicyConfig) -> str:
    """Who opted in to running unconfined, or "" when nobody did."""
    if policy.allow_unconfined:
        return "policy.allow_unconfined in loop.yaml"
    if os.environ.get(ALLOW_UNCONFINED_ENV, "") in ("1", "true", "yes"):
        return f"--allow-unconfined or {ALLOW_UNCONFINED_ENV}"
    return ""


def _bwrap_version(bwrap: str | None) -> str:
    if bwrap is None:
        return "bwrap"
    try:
        shown = subprocess.run([bwrap, "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "bwrap"
    return shown.stdout.strip() or "bwrap"


_MODEL_FIXES = (
    ("needs an Anthropic API key", "export ANTHROPIC_API_KEY=<your key> (or use --model replay:FILE)"),
    ("rejected the credentials", "check ANTHROPIC_API_KEY: the API refused it (mistyped, revoked, another's)"),
    ("could not reach", "check the network (a proxy?) or ANTHROPIC_BASE_URL"),
    ("cassette", "check the file given to --model replay:FILE (or re-record it with --record)"),
)


def _model_fix(message: str) -> str:
    for needle, fix in _MODEL_FIXES:
        if needle in message:
            return fix
    return f"use a current model such as {DEFAULT_MODEL}: --model, LOOP_MODEL or agent.model in loop.yaml"
