"""A repository shaped like a real one: one service with a large suite of its own, some of whose tests fail
before the fix, plus an integration suite that calls the running service through the router. The fix
makes the repository's own red tests green: proven in one iteration, with no new test, and the counts in
the evidence equal the JUnit reports. Real git, real jails, real service processes, real pytest."""

from __future__ import annotations

import json
from pathlib import Path

from looptest import MakeRepo, replace, write_cassette

from agentloop.loop.runner import fix

SLUG = '''import re


def slugify(text):
    return re.sub(r"[^a-z]+", "-", text.lower()).strip("-")
'''
APP = '''import argparse, json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

sys.path.insert(0, ".")
from svc.slug import slugify


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        query = parse_qs(urlsplit(self.path).query)
        body = json.dumps({"slug": slugify(query.get("text", [""])[0])}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


parser = argparse.ArgumentParser()
parser.add_argument("--host")
parser.add_argument("--port", type=int)
args = parser.parse_args()
ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()
'''
INTEGRATION = '''import json, os, urllib.parse, urllib.request


def test_the_running_service_keeps_digits():
    url = os.environ["LOOP_URL_SVC"] + "/slug?" + urllib.parse.urlencode({"text": "Route 66"})
    request = urllib.request.Request(url, headers=json.loads(os.environ["LOOP_ROUTING_HEADERS"]))
    assert json.loads(urllib.request.urlopen(request).read())["slug"] == "route-66"
'''
FILES, TESTS_PER_FILE, DIGIT_TESTS = 12, 20, 3


def _suite() -> dict[str, str]:
    """FILES x TESTS_PER_FILE tests; the first DIGIT_TESTS of each file need digits kept (red before the fix)."""
    files = {}
    for f in range(FILES):
        cases = []
        for t in range(TESTS_PER_FILE):
            text, slug = (f"Item {f} {t}", f"item-{f}-{t}") if t < DIGIT_TESTS else (f"Hello World {'x' * t}",
                                                                                  f"hello-world-{'x' * t}".rstrip("-"))
            cases.append(f"def test_{t}():\n    assert slugify({text!r}) == {slug!r}\n")
        files[f"tests/unit/test_slug_{f:02d}.py"] = "from svc.slug import slugify\n\n\n" + "\n\n".join(cases)
    return files


def test_a_large_suite_of_the_repositorys_own_red_tests_turned_green_proves_the_fix(
    make_repo: MakeRepo, tmp_path: Path,
) -> None:
    repo = make_repo(
        {"svc/__init__.py": "", "svc/slug.py": SLUG, "svc/app.py": APP, "tests/__init__.py": "",
         "tests/unit/__init__.py": "", "tests/integration/test_live.py": INTEGRATION, **_suite(),
         ".loop/issues/1.md": "# slugs drop digits\n\n`Route 66` becomes `route` instead of `route-66`.\n"},
        {"services": {"svc": {"path": "svc", "run": "python3 svc/app.py --host 127.0.0.1 --port {port}",
                              "health": "/slug"}},
         "validate": [{"suite": "unit", "run": "python3 -m pytest -q tests/unit"},
                      {"suite": "integration", "run": "python3 -m pytest -q tests/integration", "sandbox": True}],
         "agent": {"max_iterations": 1}},
    )
    cassette = write_cassette(tmp_path / "c.json", [[replace("svc/slug.py", "[^a-z]+", "[^a-z0-9]+")]])

    outcome = fix(repo, "1", model=f"replay:{cassette}")

    assert outcome.status == "published", outcome.message
    assert outcome.pull_request is not None and not outcome.pull_request.draft
    evidence = json.loads((outcome.run_dir / "evidence.json").read_text())
    verdict = evidence["verdict"]
    assert verdict["proven"] is True and verdict["needs_review"] == []
    fixed = verdict["comparison"]["fixed"]
    assert len(fixed) == FILES * DIGIT_TESTS + 1  # every red unit test, and the live one through the router
    assert "integration: tests/integration/test_live.py::test_the_running_service_keeps_digits" in fixed
    assert verdict["comparison"]["regressions"] == []
    junit = (outcome.run_dir / "iterations" / "1" / "validate" / "sandbox" / "unit.xml").read_text()
    assert junit.count("<testcase") == FILES * TESTS_PER_FILE
    unit = next(row for row in verdict["results"] if row["name"] == "unit")
    assert unit["counts"]["passed"] == FILES * TESTS_PER_FILE and unit["counts"]["failed"] == 0
