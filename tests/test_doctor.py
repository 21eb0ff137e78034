"""`loop doctor`: one line per check in order, with what to do; exit 0 only when a `loop fix` could succeed.

Real parts throughout: `loop doctor` runs as a process, against real git repositories, a real service
process on a real port in a real jail, real pytest suites, the real anthropic client talking to a loopback
Models API (tests/agent/fake_anthropic.py) and the real forge client talking to a loopback GitHub
(tests/forge/fake_github.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from agent.agent_support import API_KEY
from agent.fake_anthropic import FakeAnthropic, serve
from doctor_repos import FILES, HEALTHY, HOSTILE, LEAN, LIVE_SUITE, UNIT, UNIT_SUITE, WEB
from forge.fake_github import FakeGitHub
from looptest import MakeRepo, git
from typer.testing import CliRunner

from agentloop.cli.main import app
from agentloop.config import DEFAULT_MODEL, PolicyConfig, load_config
from agentloop.confine import Confinement
from agentloop.paths import state_dir
from agentloop.sandbox.factory import open_backend

CONFINED = Confinement(PolicyConfig()).confined
ORDER = ["git", "bubblewrap", "config", "model", "service web", "suite unit", "suite live", "forge"]


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    yield from serve()


class Ran(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def _doctor(repo: Path, *args: str, env: dict[str, str] | None = None) -> Ran:
    """`loop doctor` as a user runs it: its own process."""
    done = subprocess.run([sys.executable, "-m", "agentloop.cli.main", "doctor", "--repo", str(repo), *args],
                          capture_output=True, text=True, timeout=240, check=False,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})
    return _checked(Ran(done.returncode, done.stdout, done.stderr))


def _doctor_here(monkeypatch: pytest.MonkeyPatch, repo: Path, *args: str, env: dict[str, str] | None = None) -> Ran:
    """The same command in this process (the checks that start nothing: no interpreter start-up to wait for)."""
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    done = CliRunner().invoke(app, ["doctor", "--repo", str(repo), *args])
    assert done.exception is None or isinstance(done.exception, SystemExit), done.exception
    return _checked(Ran(done.exit_code, done.stdout, done.stderr))


def _checked(result: Ran) -> Ran:
    assert API_KEY not in result.stdout + result.stderr, "the API key reached doctor's output"
    assert "Traceback" not in result.stderr, result.stderr
    return result


def _keyed(fake: FakeAnthropic) -> dict[str, str]:
    return {"ANTHROPIC_API_KEY": API_KEY, "ANTHROPIC_BASE_URL": fake.url}


def _lines(result: Ran) -> dict[str, str]:
    """check name -> its line (and its fix line), from the human output."""
    found: dict[str, str] = {}
    name = ""
    for line in result.stdout.splitlines():
        if line[:1] in "✓!✗-" and line[1:2] == " ":
            name = line[2:18].strip()
            found[name] = line
        elif line.strip().startswith("fix:") and name:
            found[name] += "\n" + line.strip()
    return found


def _checks(result: Ran) -> dict[str, dict[str, Any]]:
    rows = json.loads(result.stdout)
    assert all(set(row) == {"check", "status", "detail", "fix"} for row in rows)
    return {row["check"]: row for row in rows}


def _nothing_left_running(repo: Path) -> None:
    backend = open_backend(repo, load_config(repo))
    assert backend.baseline_status() == {"up": False}, "doctor left the baseline it started running"
    assert backend.list() == []
    assert len(git(repo, "worktree", "list").splitlines()) == 1, "doctor left a worktree behind"
    assert git(repo, "status", "--porcelain") == "", "doctor changed the checkout"


def test_a_healthy_repository_passes_every_check_with_the_suites_counts(make_repo: MakeRepo,
                                                                          fake: FakeAnthropic) -> None:
    repo = make_repo(FILES, HEALTHY)

    result = _doctor(repo, env=_keyed(fake))

    assert result.returncode == 0, result.stdout + result.stderr
    lines = _lines(result)
    assert list(lines) == ORDER
    assert lines["bubblewrap"].startswith("✓" if CONFINED else "!")
    assert all(lines[name].startswith("✓") for name in ORDER if name != "bubblewrap"), result.stdout
    assert f"base branch main at {git(repo, 'rev-parse', 'HEAD')[:12]}" in lines["git"]
    assert DEFAULT_MODEL in lines["model"] and fake.model_lookups == [DEFAULT_MODEL]
    assert "ready" in lines["service web"] and "GET /healthz" in lines["service web"]
    assert "3 passed, 1 skipped" in lines["suite unit"]
    assert "1 passed" in lines["suite live"]
    assert "ready for `loop fix ISSUE`" in result.stdout
    _nothing_left_running(repo)


def test_json_lists_each_check_and_skip_services_skips_services_and_suites(
    make_repo: MakeRepo, fake: FakeAnthropic, monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo = make_repo(FILES, HEALTHY)

    result = _doctor_here(monkeypatch, repo, "--json", "--skip-services", env=_keyed(fake))

    assert result.returncode == 0, result.stdout + result.stderr
    checks = _checks(result)
    assert list(checks) == ORDER
    assert {name: checks[name]["status"] for name in ("service web", "suite unit", "suite live")} == {
        "service web": "skip", "suite unit": "skip", "suite live": "skip"}
    assert "--skip-services" in checks["suite unit"]["detail"]
    assert not (state_dir(repo) / "local" / "baseline" / "logs").exists(), "--skip-services started a service"


def test_a_bad_config_fails_naming_the_field_and_skips_what_needs_it(
    make_repo: MakeRepo, fake: FakeAnthropic, monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo = make_repo(FILES, {"services": {"web": {"path": "web"}}, "validate": [UNIT_SUITE]})

    result = _doctor_here(monkeypatch, repo, "--json", env=_keyed(fake))

    assert result.returncode == 1
    checks = _checks(result)
    assert list(checks) == ["git", "bubblewrap", "config", "model", "services", "suites", "forge"]
    config = checks["config"]
    assert config["status"] == "fail" and "loop.yaml" in config["detail"] and "services.web.run" in config["detail"]
    assert config["fix"]
    assert checks["model"]["status"] == "ok"  # the model is checked all the same
    assert [checks[name]["status"] for name in ("services", "suites", "forge")] == ["skip"] * 3
    assert "loop.yaml did not load" in checks["services"]["detail"]


def test_runs_use_the_base_branchs_loop_yaml_and_doctor_checks_that_one(
    make_repo: MakeRepo, fake: FakeAnthropic, monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo = make_repo(FILES, HEALTHY)
    edited = (repo / "loop.yaml").read_text().replace("suite: live", "suite: live-edited")
    (repo / "loop.yaml").write_text(edited)

    result = _doctor_here(monkeypatch, repo, "--json", "--skip-services", env=_keyed(fake))

    assert result.returncode == 0, result.stdout  # warnings only
    checks = _checks(result)
    assert checks["git"]["status"] == "warn" and "uncommitted changes (loop.yaml)" in checks["git"]["detail"]
    assert checks["config"]["status"] == "warn" and "as committed on main" in checks["config"]["detail"]
    assert "suite live" in checks and "suite live-edited" not in checks


def test_a_missing_key_fails_the_model_check_and_says_what_to_set(make_repo: MakeRepo) -> None:
    repo = make_repo(FILES, HEALTHY)

    result = _doctor(repo, "--skip-services")  # its own process: no key anywhere in its environment

    assert result.returncode == 1
    model = _lines(result)["model"]
    assert model.startswith("✗") and DEFAULT_MODEL in model and "ANTHROPIC_API_KEY" in model
    assert "fix: export ANTHROPIC_API_KEY" in model
    assert "cannot succeed until model is fixed" in result.stdout


@pytest.mark.parametrize("lifecycle", [None, "retired"])
def test_a_model_the_models_api_does_not_offer_fails_naming_a_current_one(
    make_repo: MakeRepo, fake: FakeAnthropic, lifecycle: str | None, monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo = make_repo(FILES, {**HEALTHY, "agent": {"model": "claude-opus-5-5"}})
    if lifecycle is None:
        del fake.models["claude-opus-5-5"]  # the Models API answers 404 not_found_error
    else:
        fake.models["claude-opus-5-5"] = lifecycle

    result = _doctor_here(monkeypatch, repo, "--skip-services", "--json", env=_keyed(fake))

    assert result.returncode == 1
    model = _checks(result)["model"]
    assert model["status"] == "fail" and "'claude-opus-5-5'" in model["detail"]
    assert ("404" in model["detail"]) if lifecycle is None else ("retired" in model["detail"])
    assert DEFAULT_MODEL in model["fix"]
    assert fake.model_lookups == ["claude-opus-5-5"]


def test_a_service_that_never_becomes_ready_fails_and_is_stopped(make_repo: MakeRepo, fake: FakeAnthropic) -> None:
    marker = f"never-ready-{os.getpid()}-{id(fake)}"
    web = {**WEB, "run": f"python3 -c 'import time; time.sleep(600)' {marker}", "ready_timeout": 2}
    repo = make_repo(FILES, {**LEAN, "services": {"web": web}, "validate": [UNIT_SUITE, LIVE_SUITE]})

    result = _doctor(repo, env=_keyed(fake))

    assert result.returncode == 1, result.stdout
    lines = _lines(result)
    assert lines["service web"].startswith("✗") and "not healthy" in lines["service web"]
    assert "within 2s" in lines["service web"] and "ready_timeout" in lines["service web"].split("fix:")[1]
    assert lines["suite unit"].startswith("✓")  # needs no service: it still runs
    assert lines["suite live"].startswith("-") and "did not come up" in lines["suite live"]
    assert "service web" in result.stdout.splitlines()[-1]
    assert not [pid for pid in os.listdir("/proc") if pid.isdigit() and _cmdline_has(pid, marker)]
    _nothing_left_running(repo)


def _cmdline_has(pid: str, marker: str) -> bool:
    try:
        return marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def test_tests_failing_before_any_change_warn_with_their_names(make_repo: MakeRepo, fake: FakeAnthropic) -> None:
    """Some tests red on the base branch is the bug a run is there to fix: a warning, still exit 0."""
    failing = UNIT + "\n\ndef test_divides():\n    assert 1 / 2 == 0\n"
    step = {"run": "python3 -c \"open('installed.txt', 'w').write('yes')\"", "creates": ["installed.txt"]}
    repo = make_repo({"tests/unit/test_app.py": failing},
                     {**LEAN, "setup": [step], "services": {}, "validate": [UNIT_SUITE]})

    result = _doctor(repo, env=_keyed(fake))

    assert result.returncode == 0, result.stdout
    lines = _lines(result)
    assert re.search(r"^✓ setup +setup\[0\] (ran|restored)", lines["setup"]), lines["setup"]
    assert lines["services"].startswith("-")
    suite = lines["suite unit"]
    assert suite.startswith("!") and "3 passed, 1 failed, 1 skipped" in suite
    assert "tests/unit/test_app.py::test_divides" in suite
    fix = suite.split("fix:")[1]
    assert "before any change" in fix and str(state_dir(repo) / "doctor" / "unit.log") in fix
    assert "test_divides" in (state_dir(repo) / "doctor" / "unit.log").read_text()


def test_a_suite_whose_every_test_fails_is_a_broken_environment(make_repo: MakeRepo, fake: FakeAnthropic) -> None:
    broken = "import not_installed_here\n\n\ndef test_a():\n    pass\n"
    repo = make_repo({"tests/unit/test_app.py": broken, "tests/unit/test_imports.py": broken},
                     {**LEAN, "services": {}, "validate": [UNIT_SUITE]})

    result = _doctor(repo, env=_keyed(fake))

    assert result.returncode == 1
    suite = _lines(result)["suite unit"]
    assert suite.startswith("✗") and "every test errors before any change" in suite and "setup:" in suite


def test_failing_setup_steps_fail_before_any_service_starts(make_repo: MakeRepo, fake: FakeAnthropic) -> None:
    step = {"run": "echo installing; echo 'ERROR: No matching distribution found for flask' >&2; exit 4"}
    repo = make_repo(FILES, {**HEALTHY, "setup": [step]})

    result = _doctor(repo, env=_keyed(fake))

    assert result.returncode == 1
    lines = _lines(result)
    assert list(lines) == ["git", "bubblewrap", "config", "model", "setup", *ORDER[4:]]
    setup = lines["setup"]
    assert setup.startswith("✗") and "setup[0]" in setup and "exited 4" in setup
    assert "No matching distribution found for flask" in setup and "fix:" in setup
    assert all(lines[name].startswith("-") and "setup steps failed" in lines[name]
               for name in ("service web", "suite unit", "suite live"))
    assert not (state_dir(repo) / "local" / "baseline" / "logs").exists(), "a service started after setup failed"
    _nothing_left_running(repo)


def test_a_baseline_already_up_is_used_and_left_running(make_repo: MakeRepo, fake: FakeAnthropic) -> None:
    repo = make_repo(FILES, HEALTHY)
    backend = open_backend(repo, load_config(repo))
    assert backend.baseline_up()
    try:
        result = _doctor(repo, env=_keyed(fake))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "already up" in _lines(result)["service web"] and "1 passed" in _lines(result)["suite live"]
        assert backend.baseline_status()["up"] is True
        assert backend.list() == []  # its own sandbox for the live suite is gone
    finally:
        backend.baseline_down()



@pytest.mark.skipif(not CONFINED, reason="needs a usable bubblewrap: unconfined (opted in) nothing is hidden")
def test_a_hostile_suite_sees_no_key_and_writes_nothing_outside(make_repo: MakeRepo, tmp_path: Path,
                                                                 fake: FakeAnthropic) -> None:
    checkout = tmp_path / "repo"  # where make_repo puts it
    targets = [str(checkout / "pwned.txt"), str(tmp_path / "pwned.txt"), str(Path.home() / "pwned-by-doctor.txt")]
    repo = make_repo({"tests/test_hostile.py": HOSTILE.format(targets=targets)},
                     {**LEAN, "services": {}, "validate": [{"suite": "hostile", "run": "python3 -m pytest -q -s tests"}]})
    assert repo == checkout

    result = _doctor(repo, env=_keyed(fake))

    assert result.returncode == 0, result.stdout
    assert "3 passed" in _lines(result)["suite hostile"]
    assert [target for target in targets if Path(target).exists()] == []
    output = (state_dir(repo) / "doctor" / "hostile.log").read_text()
    assert "tried ANTHROPIC_API_KEY" in output and "tried writing" in output
    assert API_KEY not in output
    assert git(repo, "status", "--porcelain") == ""


def test_the_github_forge_needs_a_token_that_reads_the_repository(
    make_repo: MakeRepo, tmp_path: Path, fake: FakeAnthropic, monkeypatch: pytest.MonkeyPatch,
) -> None:
    github = FakeGitHub(tmp_path / "github").start()
    try:
        repo = make_repo({"app.py": "x = 1\n"}, {"services": {}, "forge": {"kind": "github", "repo": "acme/shop",
                                                                             "api_url": github.api_url}})
        github.add_repo("acme/shop", repo)
        wrong = "ghp_" + "W" * 36
        outcomes = {}
        for name, token in (("none", None), ("wrong", wrong), ("right", github.token)):
            if token is None:
                monkeypatch.delenv("GITHUB_TOKEN", raising=False)
            result = _doctor_here(monkeypatch, repo, "--json", env={**_keyed(fake), **({"GITHUB_TOKEN": token} if token else {})})
            assert wrong not in result.stdout and github.token not in result.stdout
            outcomes[name] = (result.returncode, _checks(result)["forge"])
    finally:
        github.stop()
    code, forge = outcomes["none"]
    assert code == 1 and forge["status"] == "fail" and "GITHUB_TOKEN is not set" in forge["detail"]
    assert forge["fix"].startswith("export GITHUB_TOKEN")
    code, forge = outcomes["wrong"]
    assert code == 1 and forge["status"] == "fail" and "401" in forge["detail"]
    code, forge = outcomes["right"]
    assert code == 0 and forge["status"] == "ok" and "GET /repos/acme/shop" in forge["detail"]
