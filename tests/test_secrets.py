"""Secrets stay out of everything: planted in loop's environment, in the issue, in a service's log, in a
suite's failure message and in tool output, then looked for in every file of the run record and of
loop's state, in the branch's commits, in the Postgres tables a shared run writes, and in every request
the model was sent. Real runs: the real anthropic client against the loopback Messages-API server, real
git, real service processes, real pytest.

The service and the test derive their secrets at run time (`PLANTS`), so no secret is in the repository:
whatever is found comes from loop's handling of output, not from a checkout.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agent.fake_anthropic import FakeAnthropic, message, serve, text, tool_use
from looptest import MakeRepo, create, git, replace, write_cassette

from agentloop.config import DEFAULT_MODEL
from agentloop.loop.runner import fix
from agentloop.paths import state_dir
from agentloop.redact import MASK, Redactor, describe_leaks

PG_SERVER = "postgresql://postgres@127.0.0.1:5432/test"

PLANTS = '''
import base64, hashlib, json


def _derived(label, size):
    return hashlib.sha256(("loop-secrets-test:" + label).encode()).hexdigest()[:size]


def _b64(data):
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


AWS_KEY = "AKIA" + _derived("aws", 16).upper()
SLACK_TOKEN = "xoxb-" + str(int(_derived("s1", 8), 16)) + "-" + str(int(_derived("s2", 8), 16)) + "-" + _derived("s3", 24)
STRIPE_KEY = "sk_" + "live_" + _derived("stripe", 24)
PEM_BODY = [base64.b64encode(hashlib.sha512(("pem" + str(i)).encode()).digest()).decode() for i in range(3)]
PEM = "\\n".join(["-----BEGIN RSA PRIVATE KEY-----", *PEM_BODY, "-----END RSA PRIVATE KEY-----"])
JWT = ".".join([_b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()),
                _b64(json.dumps({"sub": _derived("jwt-sub", 20)}).encode()), _b64(hashlib.sha256(b"sig").digest())])
'''

WEB_APP = PLANTS + '''
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = {"/healthz": b"ok", "/hello": b"hi", "/whoami": JWT.encode()}.get(self.path)
        print("GET", self.path, "as", JWT, "with", AWS_KEY, flush=True)
        if self.path == "/hello":
            print("WARNING slow /hello for", SLACK_TOKEN, flush=True)
        self.send_response(200 if body else 404)
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, format, *args):
        pass


if __name__ == "__main__":
    print("starting with", AWS_KEY, "and", SLACK_TOKEN, flush=True)
    print(PEM, flush=True)
    if sys.argv[1] == "--selftest":
        print(STRIPE_KEY, JWT)
        raise SystemExit(0)
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), Handler).serve_forever()
'''

WEB_TEST = '''import json, os, sys, urllib.request

sys.path.insert(0, "web")
import app


def test_hello_says_hello():
    request = urllib.request.Request(os.environ["LOOP_URL_WEB"] + "/hello",
                                     headers=json.loads(os.environ["LOOP_ROUTING_HEADERS"]))
    body = urllib.request.urlopen(request).read()
    assert body == b"hello", "got " + body.decode() + " while charging " + app.STRIPE_KEY
'''

CONFIG = {
    "services": {"web": {"path": "web", "run": "python3 web/app.py --port {port}", "health": "/healthz",
                         "ready_timeout": 20}},
    "validate": [{"suite": "integration", "run": "python3 -m pytest -q tests", "sandbox": True}],
    "agent": {"max_iterations": 3},
    "policy": {"secrets": ["SHOP_SIGNING_SEED"]},
}


def _plants() -> dict[str, Any]:
    found: dict[str, Any] = {}
    exec(PLANTS, found)  # noqa: S102 -- the same derivation the service and the test run
    return found


def _token(size: int) -> str:
    return secrets.token_hex(size)[:size]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAnthropic]:
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    for server in serve():
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        yield server


@pytest.fixture
def postgres_schema() -> Iterator[str]:
    """A fresh schema in the real PostgreSQL on 127.0.0.1:5432 (dropped afterwards)."""
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(PG_SERVER, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL at {PG_SERVER} unreachable: {exc}")
    schema = f"loop_secrets_{_token(8)}"
    admin.execute(f"CREATE SCHEMA {schema}")
    try:
        yield schema
    finally:
        admin.execute(f"DROP SCHEMA {schema} CASCADE")
        admin.close()


def _postgres_rows(schema: str) -> bytes:
    """Every value of every table in `schema`, bytea as its raw bytes."""
    import psycopg

    dump = b""
    with psycopg.connect(PG_SERVER, autocommit=True) as conn:
        tables = [row[0] for row in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,))]
        assert "checkpoints" in tables and "loop_runs" in tables, tables
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{schema}"."{table}"'):
                for value in row:
                    dump += value if isinstance(value, (bytes, memoryview)) else json.dumps(value, default=str).encode()
    return dump


def _everything_at_rest(repo: Path, run_dir: Path) -> dict[str, bytes]:
    """Each file of the run record and of loop's state (SQLite files too, as bytes), and the branch's
    history with every patch."""
    found = {str(path): path.read_bytes() for root in (run_dir, state_dir(repo))
             for path in root.rglob("*") if path.is_file()}
    found["git log -p --all"] = subprocess.run(["git", "log", "-p", "--all"], cwd=repo, capture_output=True,
                                               check=True).stdout
    return found


def _leaks(planted: dict[str, str], places: dict[str, bytes]) -> list[str]:
    return [f"{name} in {place}" for name, value in planted.items() for place, data in places.items()
            if value.encode() in data]


@pytest.mark.parametrize("checkpoints", ["sqlite", "postgres"])
def test_planted_secrets_reach_neither_the_model_nor_any_record_nor_the_branch(
    checkpoints: str, make_repo: MakeRepo, fake: FakeAnthropic, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    plants = _plants()
    api_key = "sk-ant-api03-" + _token(40)
    env = {"ANTHROPIC_API_KEY": api_key, "GITHUB_TOKEN": "ghp_" + _token(36), "SHOP_SIGNING_SEED": "seed-" + _token(24)}
    password = "pw/" + _token(20)  # a `/` makes its URL form differ from the value
    if checkpoints == "postgres":
        schema = request.getfixturevalue("postgres_schema")
        env["LOOP_DATABASE_URL"] = (f"postgresql://postgres:{password.replace('/', '%2F')}@127.0.0.1:5432/test"
                                    f"?options=-csearch_path%3D{schema}")
    else:  # any `scheme://user:pass@host` in the environment, whatever the variable is called
        env["ORDERS_UPSTREAM"] = f"https://orders:{password.replace('/', '%2F')}@orders.internal/api"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    issue_aws = "AKIA" + _token(16).upper()
    issue = tmp_path / "issue.md"
    issue.write_text(
        f"# /hello says hi, and key {issue_aws} shows in the log\n\n"
        f"My token {env['GITHUB_TOKEN']} and the seed {env['SHOP_SIGNING_SEED']} (db password {password}) "
        f"stopped working. Our Anthropic key is {api_key}. /hello should say hello.\n")
    repo = make_repo({"web/app.py": WEB_APP, "tests/__init__.py": ""}, CONFIG)
    fake.add(
        message(tool_use("str_replace_based_edit_tool", {"command": "view", "path": "web/app.py"}),
                tool_use("bash", {"command": "python3 web/app.py --selftest"}),
                tool_use("str_replace_based_edit_tool", create("tests/test_web.py", WEB_TEST)["input"])),
        message(text("Added a test that shows the bug.")),
        message(tool_use("http_request", {"method": "GET", "url": "/whoami"}),
                tool_use("str_replace_based_edit_tool", replace("web/app.py", 'b"hi"', 'b"hello"')["input"])),
        message(text("/hello now says hello.")),
    )

    outcome = fix(repo, None, issue_file=issue, model=DEFAULT_MODEL)

    assert outcome.status == "published", outcome.message
    assert len(fake.requests) == 4
    # the secrets were there to be masked: in the issue, in tool output, in the failure and the logs
    first, fix_prompt = fake.user_texts(0), fake.user_texts(2)
    assert f"key {MASK} shows in the log" in first and f"My token {MASK} and the seed {MASK}" in first
    selftest = fake.tool_results(1)[1]["content"]
    assert "starting with" in selftest and selftest.count(MASK) >= 4, selftest
    assert f"while charging {MASK}" in fix_prompt  # the suite's failure message
    assert f"WARNING slow /hello for {MASK}" in fix_prompt  # the service's log, quoted to the model
    assert fake.tool_results(3)[0]["content"].endswith(MASK)  # the JWT /whoami answered

    planted = {**env, "db password": password, "db password (URL form)": password.replace("/", "%2F"),
               "issue's AWS key": issue_aws, "service's AWS key": plants["AWS_KEY"], "Slack token": plants["SLACK_TOKEN"],
               "Stripe key": plants["STRIPE_KEY"], "JWT": plants["JWT"], "JWT signature": plants["JWT"].rsplit(".", 1)[1],
               **{f"private key line {i}": line for i, line in enumerate(plants["PEM_BODY"])}}
    places = _everything_at_rest(repo, outcome.run_dir)
    if checkpoints == "postgres":
        places["postgres tables"] = _postgres_rows(request.getfixturevalue("postgres_schema"))
    else:
        assert (outcome.run_dir / "checkpoints.sqlite").is_file()
    assert any(path.endswith(".xml") for path in places) and any("/logs/" in path for path in places)
    for index, (body, headers) in enumerate(zip(fake.requests, fake.headers, strict=True)):
        places[f"request {index}"] = json.dumps(body).encode()
        # the one place the key belongs (the SDK sends it as x-api-key or as a bearer token)
        credential = "x-api-key" if "x-api-key" in headers else "authorization"
        assert headers[credential].removeprefix("Bearer ") == api_key
        places[f"request {index} headers"] = json.dumps({k: v for k, v in headers.items() if k != credential}).encode()
    assert _leaks(planted, places) == []


CALC_FILES = {
    "calc.py": "def add(a, b):\n    return a - b\n",
    "tests/test_config.py": 'token = "abc123456"\npassword = "hunter22"\n\n\ndef test_config():\n    assert token\n',
}
CALC_CONFIG = {"services": {}, "validate": [{"suite": "unit", "run": "python3 -m pytest -q tests"}],
               "agent": {"max_iterations": 1}}
TEST_ADD = create("tests/test_add.py", "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n")
FIX_ADD = replace("calc.py", "return a - b", "return a + b")


def test_a_change_that_adds_a_secret_is_neither_committed_nor_published(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo = make_repo(CALC_FILES, CALC_CONFIG)
    token = "ghp_" + _token(36)
    settings = "import os\n\nAPI_URL = 'https://api.github.com'\nGITHUB_TOKEN = '" + token + "'\n"
    issue = tmp_path / "issue.md"
    issue.write_text("# add() subtracts\n\nadd(2, 3) returns -1.\n")
    cassette = write_cassette(tmp_path / "c.json", [[TEST_ADD, FIX_ADD, create("settings.py", settings)]])

    outcome = fix(repo, None, issue_file=issue, model=f"replay:{cassette}")

    assert outcome.status == "failed"
    assert "settings.py:4 (GitHub Token)" in outcome.message and "not committed or published" in outcome.message
    branch = f"loop/file-{outcome.run_id}"
    assert git(repo, "rev-list", "--count", f"main..{branch}").strip() == "0"  # nothing committed
    assert not (state_dir(repo) / "pulls").exists()  # no pull request
    comments = (state_dir(repo) / "comments" / "0.md").read_text()
    assert "settings.py:4" in comments
    evidence = json.loads((outcome.run_dir / "evidence.json").read_text())
    assert "settings.py:4" in evidence["run"]["stopped_because"]
    everything = _everything_at_rest(repo, outcome.run_dir)
    everything.pop(str(state_dir(repo) / "worktrees" / outcome.run_id / "settings.py"))  # the agent's own file
    assert _leaks({"token": token}, everything) == []


def test_ordinary_code_that_looks_like_credentials_is_not_masked(
    make_repo: MakeRepo, fake: FakeAnthropic, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-api03-" + _token(40))
    repo = make_repo(CALC_FILES, CALC_CONFIG)
    issue = tmp_path / "issue.md"
    issue.write_text("# add() subtracts\n\nadd(2, 3) returns -1.\n")
    fake.add(
        message(tool_use("str_replace_based_edit_tool", {"command": "view", "path": "tests/test_config.py"}),
                tool_use("str_replace_based_edit_tool", replace(
                    "tests/test_config.py", 'token = "abc123456"', 'token = "abc123456"  # a fixture')["input"]),
                tool_use("str_replace_based_edit_tool", TEST_ADD["input"]),
                tool_use("str_replace_based_edit_tool", FIX_ADD["input"])),
        message(text("Fixed add().")),
    )

    outcome = fix(repo, None, issue_file=issue, model=DEFAULT_MODEL)

    assert outcome.status == "published", outcome.message
    viewed, replaced = fake.tool_results(1)[:2]
    assert 'token = "abc123456"' in viewed["content"] and 'password = "hunter22"' in viewed["content"]
    assert not replaced.get("is_error"), replaced  # the model's str_replace matched the file as it saw it
    assert MASK not in json.dumps(fake.requests)
    for record in ("transcript.jsonl", "diff.patch", "report.md", "evidence.json"):
        assert MASK not in (outcome.run_dir / record).read_text(), record
    assert 'token = "abc123456"' in (outcome.run_dir / "diff.patch").read_text()
    assert outcome.pull_request is not None
    assert '+token = "abc123456"  # a fixture' in git(repo, "log", "-p", "-1", outcome.pull_request.branch)


def test_the_redactor_knows_the_apps_secrets_and_passwords_in_urls_whatever_the_variable_names(
    tmp_path: Path,
) -> None:
    pem_body = [_token(64) for _ in range(3)]
    key_file = tmp_path / "app.pem"
    key_file.write_text("-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(pem_body) + "\n-----END RSA PRIVATE KEY-----\n")
    tail = _token(6)
    env = {"GITHUB_APP_PRIVATE_KEY": str(key_file), "GITHUB_WEBHOOK_SECRET": "hook-" + _token(8),
           "SHOP_SIGNING_SEED": "seed-" + _token(12), "UPSTREAM": f"amqp://shop:p%40ss{tail}@mq/vhost",
           "HOME": str(tmp_path), "AUTH_SOCKET": str(key_file)}
    redactor = Redactor.from_environment(env, names=["SHOP_SIGNING_SEED"])

    shown = redactor.mask(f"hook {env['GITHUB_WEBHOOK_SECRET']}; seed {env['SHOP_SIGNING_SEED']}; "
                          f"line {pem_body[1]}; json {json.dumps(key_file.read_text().strip())}; pass p@ss{tail}")
    assert shown == f'hook {MASK}; seed {MASK}; line {MASK}; json "{MASK}"; pass {MASK}'
    assert f"p%40ss{tail}" not in redactor.mask(env["UPSTREAM"])
    assert str(key_file) not in redactor.values  # a path is no secret: it stays readable
    # examples and templates of credentials in code are not secrets
    code = 'url = f"postgresql://{user}:{password}@{host}/db"  # or https://user:pass@host\n'
    assert Redactor().mask(code) == code


def test_leaks_name_the_file_and_line_of_the_new_version_and_never_the_value() -> None:
    patch = "\n".join([
        "diff --git a/app/settings.py b/app/settings.py", "index 1111111..2222222 100644",
        "--- a/app/settings.py", "+++ b/app/settings.py", "@@ -10,3 +10,4 @@ import os",
        " DEBUG = False", "-OLD = 'AKIA" + "A" * 16 + "'", "+STRIPE = 'sk_live_" + "a1" * 12 + "'",
        "+TOKEN = os.environ['TOKEN']", " END = 1", "@@ -40 +41 @@", "+password = 'hunter22'",
    ])
    leaks = Redactor().leaks(patch)
    assert [str(leak) for leak in leaks] == ["app/settings.py:11 (Stripe Access Key)"]
    assert "sk_live_" not in describe_leaks(leaks) and "app/settings.py:11" in describe_leaks(leaks)
