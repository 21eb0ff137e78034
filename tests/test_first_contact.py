"""A repository that has never seen loop, shaped like a real one: a Procfile service that reads PORT from
its environment, its own virtualenv (pytest lives only there), a unit suite and a live suite, a test
that already fails before the fix. `loop init && loop doctor && loop fix 1` works with no hand edit of
loop.yaml, all through the real `loop` command in subprocesses; the model is a replayed cassette."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from looptest import MakeRepo, git, replace, write_cassette

APP = '''\
"""A price service: GET /total?a=2&b=3."""
import json
import os
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, urlparse


def total(a, b):
    return a - b


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        query = parse_qs(urlparse(self.path).query)
        body = json.dumps({"total": total(int(query["a"][0]), int(query["b"][0]))}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
'''

UNIT = '''\
import sys
from pathlib import Path

from app import total


def test_runs_in_the_projects_virtualenv():
    assert Path(sys.prefix).name == ".venv"


def test_total_adds():
    assert total(2, 3) == 5


def test_total_of_nothing():
    assert total(0, 0) == 0
'''

LIVE = '''\
import json
import os
import urllib.request


def test_total_over_http():
    with urllib.request.urlopen(os.environ["LOOP_URL_WEB"] + "/total?a=2&b=3", timeout=10) as response:
        assert json.loads(response.read())["total"] == 5
'''


def _loop(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agentloop.cli.main", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, check=False, env={**os.environ, "COLUMNS": "200"})


@pytest.mark.slow
def test_init_doctor_fix_on_a_procfile_repository_with_its_own_virtualenv(make_repo: MakeRepo,
                                                                         tmp_path: Path) -> None:
    repo = make_repo({
        "app.py": APP, "Procfile": "web: python app.py\n", "requirements.txt": "pytest>=7\n",
        "tests/test_total.py": UNIT, "tests/integration/test_live.py": LIVE,
        ".gitignore": ".venv/\n", ".loop/issues/1.md": "# total() subtracts\n\ntotal(2, 3) should be 5, is -1.\n",
    })

    init = _loop("init", cwd=repo)
    assert init.returncode == 0, init.stderr + init.stdout
    written = (repo / "loop.yaml").read_text()
    assert "# guessed:" in written and "path: [.venv/bin]" in written
    git(repo, "add", "loop.yaml")
    git(repo, "commit", "-q", "-m", "loop.yaml from loop init")

    cassette = write_cassette(tmp_path / "fix.json", [[replace("app.py", "return a - b", "return a + b")]])
    doctor = _loop("doctor", "--model", f"replay:{cassette}", "--json", cwd=repo)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    checks = {item["check"]: item for item in json.loads(doctor.stdout)}
    assert checks["service web"]["status"] == "ok"
    # the bug's tests fail before the fix: named, a warning, not a stop
    assert checks["suite unit"]["status"] == "warn" and "test_total_adds" in checks["suite unit"]["detail"]
    assert "2 passed, 1 failed" in checks["suite unit"]["detail"]  # one passing: the project's interpreter

    fixed = _loop("fix", "1", "--model", f"replay:{cassette}", cwd=repo)
    assert fixed.returncode == 0, fixed.stdout[-3000:] + fixed.stderr[-3000:]
    runs = json.loads(_loop("runs", "--json", "id,status,branch", cwd=repo).stdout)
    assert runs[0]["status"] == "published"
    evidence = json.loads(next((repo / ".loop" / "runs").glob("*/evidence.json")).read_text())
    fixed_tests = json.dumps(evidence)
    assert "test_total_adds" in fixed_tests and "test_total_over_http" in fixed_tests
    # what setup made never reaches the pull request
    assert ".venv" not in git(repo, "diff", "--stat", f"main..{runs[0]['branch']}")
