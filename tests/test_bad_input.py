"""A corpus of bad input, each case fed to the real `loop` command line on a small git repository:
every one ends with exit code 2 and exactly one line on stderr naming the file, the field or the value
-- never a traceback, and never after a run has started.

The corpus runs through `agentloop.cli.main.main` in this process (a subprocess per case would take minutes);
`test_the_installed_command_reports_bad_input_in_one_line` runs a sample through the installed `loop`
executable to show the same holds for a real process with a narrow terminal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from looptest import MakeRepo, git, write_cassette

from agentloop.cli.main import main

ISSUE = {".loop/issues/1.md": "# total() subtracts\n\ntotal(2, 3) should be 5\n"}
SERVICES = {"orders": {"path": "services/orders", "run": "python3 -m orders --port {port}"},
            "web": {"path": "services/web", "run": "python3 -m web --port {port}"}}
PLAN = {"steps": [{"name": "up", "wait": {"service": "orders"}}]}
NO_CASSETTE = ["--model", "replay:/nonexistent/cassette.json"]


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


Cli = Callable[..., Result]


@pytest.fixture
def cli(capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    """`loop ARGS` run by its entry point in `cwd`, with `env` added; exit code and output."""

    def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Result:
        monkeypatch.chdir(cwd)
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        sigterm = signal.getsignal(signal.SIGTERM)  # main() installs its own
        capfd.readouterr()
        try:
            with pytest.raises(SystemExit) as exited:
                main(list(args))
        finally:
            signal.signal(signal.SIGTERM, sigterm)
        out, err = capfd.readouterr()
        code = exited.value.code
        return Result(code if isinstance(code, int) else int(code is not None), out, err)

    return run


def assert_bad_input(result: Result | subprocess.CompletedProcess[str], *needles: str) -> str:
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.returncode == 2, output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def commit(repo: Path, files: dict[str, bytes | str]) -> None:
    for rel, data in files.items():
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "more")


def no_run_started(repo: Path) -> bool:
    runs = repo / ".loop" / "runs"
    return not runs.exists() or not any(runs.iterdir())


def config(**fields: Any) -> dict[str, Any]:
    return {"services": {}, "validate": [{"suite": "unit", "run": "python3 -m pytest -q"}], **fields}


# -- files that are not UTF-8, too big, or YAML that loses keys -------------------------------------

def test_loop_yaml_that_is_not_utf8(cli: Cli, make_repo: MakeRepo) -> None:
    repo = make_repo(ISSUE, config())
    commit(repo, {"loop.yaml": b"services: {}\nvalidate: []\n# caf\xe9\n"})
    assert_bad_input(cli("fix", "1", cwd=repo), "loop.yaml", "line 3", "not UTF-8", "0xe9")
    assert no_run_started(repo)


def test_issue_file_that_is_not_utf8(cli: Cli, make_repo: MakeRepo) -> None:
    repo = make_repo({}, config())
    commit(repo, {".loop/issues/1.md": b"# caf\xe9 is broken\n"})
    assert_bad_input(cli("fix", "1", *NO_CASSETTE, cwd=repo), "1.md", "line 1", "not UTF-8")


def test_issue_file_given_with_issue_file_that_is_not_utf8(cli: Cli, make_repo: MakeRepo, tmp_path: Path) -> None:
    repo = make_repo({}, config())
    (tmp_path / "issue.md").write_bytes(b"# title\n\n\xff\xfe body\n")
    assert_bad_input(cli("fix", "--issue-file", str(tmp_path / "issue.md"), *NO_CASSETTE, cwd=repo),
                     "issue.md", "line 3", "not UTF-8")


def test_plan_that_is_not_utf8_is_found_when_the_config_loads(cli: Cli, make_repo: MakeRepo) -> None:
    repo = make_repo(ISSUE, {"services": SERVICES, "validate": [{"plan": "plans/checkout.yaml"}]})
    commit(repo, {"plans/checkout.yaml": b"steps:\n  - name: caf\xe9\n"})
    assert_bad_input(cli("fix", "1", *NO_CASSETTE, cwd=repo), "plans/checkout.yaml", "line 2", "not UTF-8")
    assert no_run_started(repo)


@pytest.mark.parametrize(("text", "key", "line"), [
    ("services: {}\nvalidate: []\nservices: {web: {path: web, run: x}}\n", "'services'", "line 3"),
    ("services: {}\nagent:\n  max_iterations: 2\n  max_iterations: 9\n", "'max_iterations'", "line 4"),
    ("services: {}\npolicy: {network: false, network: true}\n", "'network'", "line 2"),
])
def test_duplicate_keys_in_loop_yaml_name_the_key_and_line(
    cli: Cli, make_repo: MakeRepo, text: str, key: str, line: str
) -> None:
    repo = make_repo({**ISSUE, "loop.yaml": text})
    assert_bad_input(cli("fix", "1", cwd=repo), "loop.yaml", line, key, "appears twice")


def test_merge_keys_may_still_override(cli: Cli, make_repo: MakeRepo) -> None:
    text = ("x-base: &base {path: services/web, run: 'python3 -m web --port {port}'}\n"
            "services:\n  web:\n    <<: *base\n    path: services/web2\n")
    repo = make_repo({**ISSUE, "loop.yaml": text})
    result = cli("fix", "1", *NO_CASSETTE, cwd=repo)
    # x-base is not a loop.yaml field: the merge itself was accepted, the unknown key is what is reported
    assert_bad_input(result, "x-base")


def test_batch_issue_list_that_is_not_utf8(cli: Cli, make_repo: MakeRepo, tmp_path: Path) -> None:
    repo = make_repo(ISSUE, config())
    (tmp_path / "issues.txt").write_bytes(b"1\n2 # caf\xe9\n")
    assert_bad_input(cli("batch", "--from", str(tmp_path / "issues.txt"), cwd=repo), "issues.txt", "line 2", "UTF-8")
    assert no_run_started(repo)


def test_loop_yaml_over_a_mebibyte(cli: Cli, make_repo: MakeRepo) -> None:
    repo = make_repo({**ISSUE, "loop.yaml": "services: {}\n" + "# padding\n" * 120_000})
    assert_bad_input(cli("fix", "1", cwd=repo), "loop.yaml", "bytes", "1024 KiB")


def test_loop_yaml_nested_thousands_deep(cli: Cli, make_repo: MakeRepo) -> None:
    repo = make_repo({**ISSUE, "loop.yaml": "services: " + "[" * 5000 + "]" * 5000 + "\n"})
    assert_bad_input(cli("fix", "1", cwd=repo), "loop.yaml", "nested deeper than 64")


def test_issue_file_over_a_mebibyte(cli: Cli, make_repo: MakeRepo) -> None:
    repo = make_repo({".loop/issues/1.md": "# big\n" + "x" * (1024 * 1024 + 1)}, config())
    assert_bad_input(cli("fix", "1", *NO_CASSETTE, cwd=repo), "1.md", "1024 KiB")


@pytest.mark.parametrize("text", ["#\n\nbody only\n", "#    \nbody\n", "##\n"])
def test_issue_with_no_title(cli: Cli, make_repo: MakeRepo, text: str) -> None:
    repo = make_repo({".loop/issues/1.md": text}, config())
    assert_bad_input(cli("fix", "1", *NO_CASSETTE, cwd=repo), "1.md", "no title")
    assert no_run_started(repo)


# -- run records ----------------------------------------------------------------------------------

def test_loop_runs_dir_that_is_a_file(cli: Cli, make_repo: MakeRepo, tmp_path: Path) -> None:
    repo = make_repo(ISSUE, config())
    runs_file = tmp_path / "runs-file"
    runs_file.write_text("not a directory\n")
    env = {"LOOP_RUNS_DIR": str(runs_file)}
    cassette = write_cassette(tmp_path / "cassette.json", [[]])
    for args in (["runs"], ["show", "r-1"], ["resume", "r-1"], ["fix", "1", "--model", f"replay:{cassette}"]):
        assert_bad_input(cli(*args, cwd=repo, env=env), "LOOP_RUNS_DIR", str(runs_file), "is a file")


SUMMARY = {"id": "r-bad", "issue": 1, "repo": "/x", "status": "interrupted", "started_at": 1.0}


@pytest.mark.parametrize("content", [
    b"{not json", b"", b"\xff\xfe\x00", json.dumps({**SUMMARY, "issue": "seven"}).encode(),
    json.dumps({"id": "r-bad"}).encode(), b"[1, 2, 3]",
], ids=["truncated", "empty", "binary", "wrong-type", "missing-fields", "not-an-object"])
@pytest.mark.parametrize("command", ["show", "runs", "resume"])
def test_corrupt_run_json(cli: Cli, make_repo: MakeRepo, content: bytes, command: str) -> None:
    repo = make_repo(ISSUE, config())
    record = repo / ".loop" / "runs" / "r-bad"
    record.mkdir(parents=True)
    (record / "run.json").write_bytes(content)
    args = ["runs"] if command == "runs" else [command, "r-bad"]
    assert_bad_input(cli(*args, cwd=repo), str(record / "run.json"), "not a run record")


def test_corrupt_events_in_a_record(cli: Cli, make_repo: MakeRepo) -> None:
    repo = make_repo(ISSUE, config())
    record = repo / ".loop" / "runs" / "r-bad"
    record.mkdir(parents=True)
    (record / "run.json").write_text(json.dumps(SUMMARY))
    (record / "events.jsonl").write_text('{"node": "intake"}\n{"node": tru\n')
    assert_bad_input(cli("show", "r-bad", cwd=repo), "events.jsonl", "line 2")


def test_corrupt_checkpoints_in_a_record(cli: Cli, make_repo: MakeRepo) -> None:
    repo = make_repo(ISSUE, config())
    record = repo / ".loop" / "runs" / "r-bad"
    record.mkdir(parents=True)
    (record / "run.json").write_text(json.dumps(SUMMARY))
    (record / "checkpoints.sqlite").write_bytes(b"this is not sqlite" * 100)
    assert_bad_input(cli("show", "r-bad", cwd=repo), "checkpoints.sqlite")


# -- paths that leave the repository ----------------------------------------------------------------

def _service(**fields: Any) -> dict[str, Any]:
    return {"services": {"orders": {**SERVICES["orders"], **fields}}}


@pytest.mark.parametrize(("loop_yaml", "field", "value"), [
    (_service(path="/srv/orders"), "services.orders.path", "/srv/orders"),
    (_service(path="../orders"), "services.orders.path", "../orders"),
    (_service(path="services/../../orders"), "services.orders.path", "services/../../orders"),
    (_service(path="~/orders"), "services.orders.path", "~/orders"),
    (_service(database={"path": "/var/db/orders.db"}), "services.orders.database.path", "/var/db/orders.db"),
    (_service(database={"path": "../orders.db"}), "services.orders.database.path", "../orders.db"),
    (config(validate=[{"plan": "../plans/checkout.yaml"}]), "validate[0].plan", "../plans/checkout.yaml"),
    (config(validate=[{"plan": "/etc/checkout.yaml"}]), "validate[0].plan", "/etc/checkout.yaml"),
    (config(validate=[{"suite": "js", "run": "npm test", "junit": "../out.xml"}]), "validate[0].junit", "../out.xml"),
    (config(validate=[{"suite": "js", "run": "npm test", "junit": "/tmp/out.xml"}]), "validate[0].junit",
     "/tmp/out.xml"),
])
def test_paths_outside_the_repository(
    cli: Cli, make_repo: MakeRepo, loop_yaml: dict[str, Any], field: str, value: str
) -> None:
    repo = make_repo(ISSUE, loop_yaml)
    assert_bad_input(cli("fix", "1", cwd=repo), "loop.yaml", f"`{field}`", repr(value))


def test_a_plan_symlinked_out_of_the_repository(cli: Cli, make_repo: MakeRepo, tmp_path: Path) -> None:
    (tmp_path / "elsewhere.yaml").write_text(yaml.safe_dump(PLAN))
    repo = make_repo(ISSUE, {"services": SERVICES, "validate": [{"plan": "plans/checkout.yaml"}]})
    (repo / "plans").mkdir()
    (repo / "plans" / "checkout.yaml").symlink_to(tmp_path / "elsewhere.yaml")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "link")
    assert_bad_input(cli("fix", "1", cwd=repo), "validate[0].plan", "symlink")


# -- placeholders, the route header, services ---------------------------------------------------------

@pytest.mark.parametrize(("orders", "field", "needle"), [
    ({"env": {"WEB_URL": "{services.nope.url}"}}, "services.orders.env.WEB_URL", "unknown service 'nope'"),
    ({"env": {"WEB_URL": "{services.web.bogus}"}}, "services.orders.env.WEB_URL", "'bogus'"),
    ({"env": {"WEB_URL": "{services.web}"}}, "services.orders.env.WEB_URL", "{services.web}"),
    ({"run": "python3 -m orders --port {nope}"}, "services.orders.run", "{nope}"),
    ({"run": "python3 -m orders --db {database}"}, "services.orders.run", "`database:`"),
    ({"env": {"X": "{PORT}"}}, "services.orders.env.X", "{PORT}"),
])
def test_placeholders_naming_unknown_things(
    cli: Cli, make_repo: MakeRepo, orders: dict[str, Any], field: str, needle: str
) -> None:
    services = {"orders": {**SERVICES["orders"], **orders}, "web": SERVICES["web"]}
    repo = make_repo(ISSUE, {"services": services})
    assert_bad_input(cli("fix", "1", cwd=repo), "loop.yaml", f"`{field}`", needle)


def test_placeholders_loop_fills_and_shell_braces_are_accepted(cli: Cli, make_repo: MakeRepo) -> None:
    orders = {**SERVICES["orders"], "run": "python3 -m orders --port {port} --db {database} --home ${HOME}",
              "env": {"WEB_URL": "{services.web.url}", "AWK": "awk '{ print $1 }'"},
              "database": {"path": "data/orders.db"}}
    repo = make_repo(ISSUE, {"services": {"orders": orders, "web": SERVICES["web"]}})
    line = assert_bad_input(cli("fix", "1", *NO_CASSETTE, cwd=repo))
    assert "cassette" in line and "loop.yaml" not in line  # the config passed; the next check spoke


@pytest.mark.parametrize(("header", "needle"), [
    ("x-loop\nroute", "'x-loop\\nroute'"), ("x loop", "'x loop'"), ("", "''"), ("x-route:", "'x-route:'"),
    ("Host", "'Host'"), ("baggage", "'baggage'"), ("x-rüte", "'x-rüte'"),
])
def test_route_header_that_is_not_a_header_name(cli: Cli, make_repo: MakeRepo, header: str, needle: str) -> None:
    repo = make_repo(ISSUE, config(sandbox={"route_header": header}))
    assert_bad_input(cli("fix", "1", cwd=repo), "loop.yaml", "`sandbox.route_header`", needle)


@pytest.mark.parametrize("command", [["fix", "1"], ["sandbox", "gc"]])
def test_a_renamed_retention_key_names_its_new_name(cli: Cli, make_repo: MakeRepo, command: list[str]) -> None:
    repo = make_repo(ISSUE, config(retention={"days": 14, "baseline_results": 5}))
    assert_bad_input(cli(*command, cwd=repo), "loop.yaml", "`retention`", "`retention.baseline_results` is now "
                     "`retention.base_results`", "rename the key")
    assert no_run_started(repo)


@pytest.mark.parametrize(("text", "state"), [("services:\n", "is empty"), ("validate: []\n", "is missing")])
def test_services_missing_or_null_says_how_to_write_none(cli: Cli, make_repo: MakeRepo, text: str, state: str) -> None:
    repo = make_repo({**ISSUE, "loop.yaml": text})
    assert_bad_input(cli("fix", "1", cwd=repo), "loop.yaml", "`services`", state, "services: {}")


def test_services_empty_is_a_repository_without_services(cli: Cli, make_repo: MakeRepo) -> None:
    # supported on purpose: suites run in the worktree, no sandbox is made (README 'loop.yaml')
    repo = make_repo(ISSUE, config())
    line = assert_bad_input(cli("fix", "1", *NO_CASSETTE, cwd=repo))
    assert "cassette" in line and "loop.yaml" not in line


# -- the model ------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [["fix", "1"], ["batch", "1"], ["demo"]])
@pytest.mark.parametrize("model", ["", "   "])
def test_empty_model_flag(cli: Cli, make_repo: MakeRepo, tmp_path: Path, command: list[str], model: str) -> None:
    repo = make_repo(ISSUE, config())
    assert_bad_input(cli(*command, "--model", model, cwd=repo), "--model is empty")
    assert no_run_started(repo) and not (tmp_path / "loop-demo").exists()


def test_empty_model_in_loop_yaml(cli: Cli, make_repo: MakeRepo) -> None:
    repo = make_repo(ISSUE, config(agent={"model": ""}))
    assert_bad_input(cli("fix", "1", cwd=repo), "loop.yaml", "`agent.model`", "is empty")


# -- plans, checked when the config loads ------------------------------------------------------------

@pytest.mark.parametrize(("plan", "needles"), [
    ("steps:\n  - name: up\n    wait: {service: orders\n", ["line 4", "not valid YAML"]),
    ("steps:\n  - name: a\n    name: b\n    wait: {service: orders}\n", ["line 3", "'name' appears twice"]),
    (yaml.safe_dump({"steps": [{"name": "x", "wiat": {"service": "orders"}}]}), ["`steps[0].wiat`"]),
    (yaml.safe_dump({"steps": []}), ["`steps`"]),
    (yaml.safe_dump(["not", "a", "mapping"]), ["expected a mapping"]),
    (yaml.safe_dump({"steps": [{"name": "x", "http": {"service": "payments"}}]}),
     ["`steps[0].http.service`", "'payments'", "orders, web"]),
])
def test_bad_plan_is_reported_before_any_run_work(cli: Cli, make_repo: MakeRepo, plan: str, needles: list[str]) -> None:
    repo = make_repo({**ISSUE, "plans/checkout.yaml": plan},
                     {"services": SERVICES, "validate": [{"plan": "plans/checkout.yaml"}]})
    assert_bad_input(cli("fix", "1", cwd=repo), "plans/checkout.yaml", *needles)
    assert no_run_started(repo)


def test_a_good_plan_passes_the_load_time_check(cli: Cli, make_repo: MakeRepo) -> None:
    repo = make_repo({**ISSUE, "plans/checkout.yaml": yaml.safe_dump(PLAN)},
                     {"services": SERVICES, "validate": [{"plan": "plans/checkout.yaml"}]})
    line = assert_bad_input(cli("fix", "1", *NO_CASSETTE, cwd=repo))
    assert "cassette" in line


# -- the same through the installed executable ---------------------------------------------------------

def test_the_installed_command_reports_bad_input_in_one_line(make_repo: MakeRepo, tmp_path: Path) -> None:
    executable = Path(sys.executable).parent / "loop"
    command = [str(executable)] if executable.exists() else [sys.executable, "-m", "agentloop.cli.main"]
    orders = {**SERVICES["orders"], "env": {"WEB_URL": "{services.nope.url}"}}
    repo = make_repo({**ISSUE, "plans/p.yaml": "steps: [\n"},
                     {"services": {"orders": orders}, "validate": [{"plan": "plans/p.yaml"}]})
    (repo / ".loop" / "runs" / "r-bad").mkdir(parents=True)
    (repo / ".loop" / "runs" / "r-bad" / "run.json").write_bytes(b"\xff{")
    runs_file = tmp_path / "runs-file"
    runs_file.write_text("")
    cases: list[tuple[list[str], dict[str, str], str]] = [
        (["fix", "1"], {}, "services.orders.env.WEB_URL"),
        (["show", "r-bad"], {}, "run.json"),
        (["runs"], {"LOOP_RUNS_DIR": str(runs_file)}, "LOOP_RUNS_DIR"),
        (["fix", "1", "--model", ""], {}, "--model is empty"),
    ]
    for args, env, needle in cases:
        # a narrow terminal: a long message must still be one line
        result = subprocess.run([*command, *args], cwd=repo, capture_output=True, text=True, timeout=120, check=False,
                                env={**os.environ, "COLUMNS": "40", **env})
        assert_bad_input(result, needle)
