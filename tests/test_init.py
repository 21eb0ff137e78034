"""`loop init` on repositories shaped like real ones (compose, Procfile, pyproject, node): each written
loop.yaml loads with `load_config` and marks every guess with what it was guessed from; an existing
loop.yaml is never overwritten without --force; and for a Procfile service the written config really
starts it, under the project's own virtualenv, on the local sandbox backend. Hostile repositories:
tests/test_init_hostile.py."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import yaml
from init_cli import Cli, cli, guessed, init
from looptest import MakeRepo, git

from agentloop.config import load_config

__all__ = ["cli"]  # the fixture, used by name

# -- compose ---------------------------------------------------------------------------------------------

COMPOSE = """\
x-defaults: &defaults
  restart: unless-stopped
services:
  web:
    <<: *defaults
    build: ./services/web
    command: gunicorn app:app --bind 0.0.0.0:8000 --workers 2
    ports: ["8080:8000"]
    environment:
      API_URL: http://api:5000/v1
    depends_on: [api]
    healthcheck:
      test: ["CMD", "curl", "-fsS", "http://localhost:8000/health"]
      interval: 5s
  api:
    build: {context: services/api}
    ports: ["5000"]
    environment:
      DB_HOST: db
      DB_PORT: "7000"
      LOG_LEVEL: info
    depends_on:
      db: {condition: service_healthy}
      cache: {condition: service_started}
  db:
    build: services/db
    expose: ["7000"]
    healthcheck:
      test: ["CMD-SHELL", "nc -z localhost 7000 || exit 1"]
  cache:
    image: redis:7
"""


def test_compose_services_become_loop_services_with_every_guess_marked(cli: Cli, make_repo: MakeRepo) -> None:
    repo = make_repo({
        "compose.yaml": COMPOSE,
        "services/web/app.py": "app = None\n",
        "services/web/requirements.txt": "gunicorn==22.0\n",
        "services/api/Dockerfile": 'FROM python:3.11\nWORKDIR /app\nCOPY . .\nCMD ["python", "-m", "api", "--port", "5000"]\n',
        "services/api/requirements.txt": "httpx\npytest\n",
        "services/db/Dockerfile": "FROM python:3.11\nCMD python db.py --listen :7000\n",
        "tests/test_units.py": "def test_one():\n    assert True\n",
        "tests/e2e/test_checkout.py": "def test_checkout():\n    assert True\n",
    })
    git(repo, "remote", "add", "origin", "https://github.com/acme/shop.git")
    git(repo, "symbolic-ref", "refs/remotes/origin/HEAD", "refs/remotes/origin/trunk")

    config, text, result = init(cli, repo)

    assert list(config.services) == ["web", "api", "db"]  # the image-only redis is not a loop service
    web, api, db = config.services["web"], config.services["api"], config.services["db"]
    assert web.path == "services/web" and api.path == "services/api" and db.path == "services/db"
    assert web.run == "cd services/web && gunicorn app:app --bind 0.0.0.0:{port} --workers 2"
    assert api.run == "cd services/api && python -m api --port {port}"  # from its Dockerfile's CMD
    assert db.run == "cd services/db && python db.py --listen :{port}"
    assert web.health == "/health"  # the healthcheck's curl URL
    assert api.health is None and db.health is None  # ready = accepts TCP connections
    assert web.env == {"API_URL": "{services.api.url}/v1"}
    assert api.env == {"DB_HOST": "{services.db.host}", "DB_PORT": "{services.db.port}", "LOG_LEVEL": "info"}
    assert web.depends_on == ["api"] and api.depends_on == ["db"] and db.depends_on == []
    assert config.base_branch == "trunk"
    assert config.forge.kind == "github" and config.forge.repo == "acme/shop"
    # one virtualenv with every service's requirements; its bin first on PATH
    assert [step.run for step in config.setup] == [
        ("python3 -m venv .venv && .venv/bin/pip install -q -r services/api/requirements.txt "
         "-r services/web/requirements.txt")]
    assert config.setup[0].inputs == ["services/api/requirements.txt", "services/web/requirements.txt"]
    assert config.setup[0].creates == [".venv"] and config.path == [".venv/bin"]
    # the e2e directory is split out into a suite that runs against a sandbox
    suites = {suite.suite: suite for suite in config.suites}
    assert suites["unit"].run == "python -m pytest -q tests --ignore=tests/e2e" and not suites["unit"].sandbox
    assert suites["integration"].run == "python -m pytest -q tests/e2e" and suites["integration"].sandbox

    guessed(text, "gunicorn app:app", "compose `command`", "8000 -> {port}")
    guessed(text, "python -m api", "services/api/Dockerfile")
    guessed(text, "health: /health", "http://localhost:8000/health")
    guessed(text, "DB_HOST:", "'db'")
    guessed(text, "DB_PORT:", "'7000'", "port of compose service 'db'")
    guessed(text, "API_URL:", "http://api:5000/v1")
    guessed(text, "base_branch: trunk", "origin")
    guessed(text, "repo: acme/shop", "origin")
    guessed(text, "path: services/api", "build context")
    assert "# cache: not started by loop: image redis:7" in text
    assert "depends_on 'cache' left out" in text
    shown = " ".join(result.stderr.split())
    assert "services.web: `cd services/web && gunicorn" in shown and "health /health" in shown
    assert "services.cache: left out (image redis:7)" in shown


def test_addresses_of_services_loop_does_not_run_stay_and_are_said(cli: Cli, make_repo: MakeRepo) -> None:
    repo = make_repo({"docker-compose.yml": """
services:
  app:
    build: .
    command: ["uvicorn", "main:app", "--port", "8000"]
    ports: ["8000:8000"]
    environment:
      - DATABASE_URL=postgres://shop:secret@pg:5432/shop
      - CACHE=redis://cache:6379/0
      - PORT=8000
      - FROM_SHELL
  pg: {image: "postgres:16"}
  cache: {build: ./cache, command: "python cache.py --port 6379", ports: ["6379"]}
""", "main.py": "app = None\n", "cache/cache.py": "\n"})
    config, text, result = init(cli, repo)
    app = config.services["app"]
    assert app.run == "uvicorn main:app --port {port}"
    assert app.env["DATABASE_URL"] == "postgres://shop:secret@pg:5432/shop"  # loop does not run pg
    assert app.env["CACHE"] == "redis://{services.cache.host}:{services.cache.port}/0"
    assert app.env["PORT"] == "{port}"
    assert "FROM_SHELL" not in app.env
    shown = " ".join(result.stderr.split())
    assert "env DATABASE_URL: points at compose service pg (image postgres:16), which loop does not run" in shown
    assert "env FROM_SHELL left out: compose takes it from your shell" in text


# -- Procfile, pyproject, node ---------------------------------------------------------------------------

def test_procfile_repo_gets_a_virtualenv_and_only_its_web_process(cli: Cli, make_repo: MakeRepo) -> None:
    repo = make_repo({
        "Procfile": "release: python manage.py migrate\nweb: gunicorn app:app --bind 0.0.0.0:$PORT\n"
                    "worker: celery -A app worker --loglevel=info\n",
        "requirements.txt": "flask\ngunicorn\n",
        "requirements-dev.txt": "-r requirements.txt\npytest\n",
        "app.py": "app = None\n",
        "tests/test_app.py": "def test_app():\n    assert True\n",
    })
    (repo / ".venv").mkdir()  # the developer's own virtualenv (git-ignored): it names the Python to use
    (repo / ".venv" / "pyvenv.cfg").write_text("home = /usr/bin\nversion_info = 3.11.9.final.0\n")
    config, text, _ = init(cli, repo)
    assert list(config.services) == ["web"]
    assert config.services["web"].run == "gunicorn app:app --bind 0.0.0.0:{port}"
    assert config.services["web"].path == "." and config.services["web"].health is None
    assert [step.run for step in config.setup] == [
        "python3.11 -m venv .venv && .venv/bin/pip install -q -r requirements-dev.txt -r requirements.txt"]
    assert config.setup[0].inputs == ["requirements-dev.txt", "requirements.txt"]
    assert config.setup[0].creates == [".venv"] and config.path == [".venv/bin"]
    assert [(s.suite, s.run, s.sandbox) for s in config.suites] == [("unit", "python -m pytest -q tests", False)]
    assert config.forge.kind == "local" and config.base_branch == "main"
    guessed(text, "run: \"gunicorn app:app", "Procfile", "$PORT -> {port}")
    guessed(text, "python3.11 -m venv", "requirements-dev.txt", "existing .venv (Python 3.11)")
    assert "# worker: not started by loop: Procfile `worker:` is not an HTTP service" in text
    assert "#   run: celery -A app worker --loglevel=info" in text
    assert "# release: not started by loop: Procfile `release:` is not an HTTP service" in text


def test_pyproject_repo_installs_its_test_extra_and_splits_api_tests(cli: Cli, make_repo: MakeRepo) -> None:
    repo = make_repo({
        "pyproject.toml": """
[project]
name = "orders"
version = "0.1.0"
dependencies = ["fastapi"]

[project.optional-dependencies]
test = ["pytest>=8", "httpx"]

[project.scripts]
orders-server = "orders.main:serve"

[tool.pytest.ini_options]
testpaths = ["tests"]
""",
        "uv.lock": "version = 1\n",
        ".python-version": "3.11\n",
        "src/orders/__init__.py": "",
        "tests/test_model.py": "def test_model():\n    assert True\n",
        "tests/test_live.py": "import os\nURL = os.environ['ORDERS_URL']\n\ndef test_live():\n    assert URL\n",
        "tests/api/test_http.py": "def test_http():\n    assert True\n",
    })
    config, text, result = init(cli, repo)
    assert [step.run for step in config.setup] == [
        "python3.11 -m venv .venv && .venv/bin/pip install -q -e '.[test]'"]  # pytest is in the extra
    assert config.setup[0].inputs == ["pyproject.toml", "uv.lock"]
    assert config.services["orders-server"].run == "orders-server"
    suites = {suite.suite: suite for suite in config.suites}
    assert suites["unit"].run == "python -m pytest -q tests --ignore=tests/test_live.py --ignore=tests/api"
    assert suites["integration"].run == "python -m pytest -q tests/test_live.py tests/api"
    assert suites["integration"].sandbox
    guessed(text, "python3.11 -m venv", "pyproject", ".python-version")
    guessed(text, "--ignore=tests/api", "testpaths in pyproject.toml")
    assert "tests/test_live.py reads ORDERS_URL" in " ".join(result.stderr.split())


def test_node_repo_installs_from_its_lockfile_and_runs_npm_test(cli: Cli, make_repo: MakeRepo) -> None:
    repo = make_repo({
        "package.json": json.dumps({"name": "@acme/storefront", "scripts": {
            "start": "node server.js", "test": "jest --ci"}}),
        "package-lock.json": "{}",
        "server.js": "require('http').createServer().listen(process.env.PORT)\n",
    })
    config, text, _ = init(cli, repo)
    assert [(s.run, s.inputs, s.creates) for s in config.setup] == [("npm ci", ["package-lock.json"], ["node_modules"])]
    assert config.path == ["node_modules/.bin"]
    assert config.services["storefront"].run == "npm start"
    assert [(s.suite, s.run) for s in config.suites] == [("npm", "npm test")]
    guessed(text, "run: npm ci", "package-lock.json")
    guessed(text, "run: npm test", "jest --ci")


def test_a_service_directory_with_its_own_package_json_gets_its_own_setup(cli: Cli, make_repo: MakeRepo) -> None:
    repo = make_repo({
        "frontend/Procfile": "web: npm start\n",
        "frontend/package.json": json.dumps({"scripts": {"start": "next start -p $PORT", "test": "vitest run"}}),
        "frontend/yarn.lock": "# yarn lockfile v1\n",
    })
    config, text, _ = init(cli, repo)
    frontend = config.services["frontend"]
    assert frontend.path == "frontend" and frontend.run == "cd frontend && npm start"
    # a service's own setup runs in its directory: inputs and creates are relative to it
    assert [(s.run, s.inputs, s.creates) for s in frontend.setup] == [
        ("yarn install --frozen-lockfile", ["yarn.lock"], ["node_modules"])]
    assert config.setup == [] and config.path == []
    assert [(s.suite, s.run) for s in config.suites] == [("frontend-npm", "npm --prefix frontend test")]
    guessed(text, "run: yarn install", "frontend/yarn.lock")


def test_a_repository_with_nothing_to_go_on_still_gets_a_loading_file(cli: Cli, make_repo: MakeRepo) -> None:
    repo = make_repo({"README.md": "hello\n"})
    config, text, _ = init(cli, repo)
    assert config.services == {} and config.suites == [] and config.setup == []
    assert "none found: add the services" in text


# -- never overwrite --------------------------------------------------------------------------------

def test_an_existing_loop_yaml_is_never_overwritten_without_force(cli: Cli, make_repo: MakeRepo) -> None:
    repo = make_repo({"Procfile": "web: python app.py\n"}, config={"services": {}})
    mine = (repo / "loop.yaml").read_text()
    refused = cli(cwd=repo)
    assert refused.code == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.count("\n") == 1 and refused.stderr.startswith("error: ")
    assert "loop.yaml exists" in refused.stderr and "--force" in refused.stderr
    assert (repo / "loop.yaml").read_text() == mine

    printed = cli("--stdout", cwd=repo)
    assert printed.code == 0 and printed.stdout.startswith("# loop.yaml written by `loop init`")
    assert yaml.safe_load(printed.stdout)["services"]["web"]["run"] == "python app.py"
    assert (repo / "loop.yaml").read_text() == mine
    assert cli("--dry-run", cwd=repo).stdout == printed.stdout

    config, text, _ = init(cli, repo, "--force")
    assert text == printed.stdout and list(config.services) == ["web"]


def test_a_symlink_named_loop_yaml_is_not_followed(cli: Cli, make_repo: MakeRepo, tmp_path: Path) -> None:
    repo = make_repo({"Procfile": "web: python app.py\n"})
    victim = tmp_path / "elsewhere.txt"
    victim.write_text("keep me\n")
    (repo / "loop.yaml").symlink_to(victim)
    assert cli(cwd=repo).code == 2
    init(cli, repo, "--force")
    assert victim.read_text() == "keep me\n" and not (repo / "loop.yaml").is_symlink()


# -- the written config works: a real service on the local sandbox backend --------------------------------

TINY_SERVICE = """\
import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


class Hello(BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"hello from {os.environ.get('LOOP_SERVICE')} on {sys.prefix}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Hello).serve_forever()
"""


@pytest.mark.slow  # makes a real virtualenv with pip in it, as the written setup step says
def test_the_written_config_starts_a_procfile_service_on_the_local_backend(cli: Cli, make_repo: MakeRepo) -> None:
    from agentloop.sandbox.factory import open_backend

    repo = make_repo({
        "Procfile": "web: python app.py\nworker: python worker.py\n",
        "requirements.txt": "# the service needs only the standard library\n",
        "app.py": TINY_SERVICE,
    })
    config, _, _ = init(cli, repo)
    assert config.services["web"].run == "python app.py" and config.services["web"].health is None
    assert config.path == [".venv/bin"]
    git(repo, "add", "loop.yaml")
    git(repo, "commit", "-q", "-m", "loop init")

    backend = open_backend(repo, load_config(repo))
    try:
        backend.baseline_up()
        status = backend.baseline_status()
        assert status["up"] is True
        services = status["services"]
        assert isinstance(services, dict) and set(services) == {"web"}
        with httpx.Client(trust_env=False, timeout=10) as client:
            reply = client.get(services["web"]["url"])
        assert reply.status_code == 200
        # the project's own interpreter: the virtualenv the written setup step made in the baseline's checkout
        assert reply.text == f"hello from web on {Path(str(status['worktree'])) / '.venv'}"
    finally:
        backend.baseline_down()
