"""`loop batch` of three runs on one base commit: real `loop` processes validating at the same time share
one full base run of each suite (one computes it under the cache's lock, the others wait and read)."""

from __future__ import annotations

import json
from pathlib import Path

from batchtest import WEB_APP, batch_record, loop, web_test
from looptest import MakeRepo, create, git, replace, write_cassette

from agentloop.paths import state_dir
from agentloop.validation.base_results import CACHE_DIR

HEALTH_TEST = '''import json, os, urllib.request


def test_the_web_service_is_healthy():
    request = urllib.request.Request(os.environ["LOOP_URL_WEB"] + "/healthz",
                                     headers=json.loads(os.environ["LOOP_ROUTING_HEADERS"]))
    assert urllib.request.urlopen(request).read() == b"ok"
'''


def test_a_batch_of_three_runs_on_one_base_commit_runs_each_suite_at_the_base_commit_once(
    make_repo: MakeRepo, tmp_path: Path
) -> None:
    issues = {1: "/hello should say hello", 2: "/bye should say goodbye", 3: "/ping should say pong"}
    files = {"web/app.py": WEB_APP, "tests/__init__.py": "", "tests/test_health.py": HEALTH_TEST}
    files |= {f".loop/issues/{n}.md": f"# {title}\n" for n, title in issues.items()}
    repo = make_repo(files, {
        "services": {"web": {"path": "web", "run": "python3 web/app.py --port {port}", "health": "/healthz"}},
        "validate": [{"suite": "unit", "run": "python3 -m pytest -q tests/test_health.py"},
                     {"suite": "all", "run": "python3 -m pytest -q tests", "sandbox": True}],
        "agent": {"max_iterations": 1},
    })
    cassettes = tmp_path / "cassettes"
    cassettes.mkdir()
    for number, (path, old, new) in {1: ("/hello", "hi", "hello"), 2: ("/bye", "bye?", "goodbye"),
                                     3: ("/ping", "ping?", "pong")}.items():
        name = f"test_{path.strip('/')}"
        write_cassette(cassettes / f"{number}.json", [[
            create(f"tests/{name}.py", web_test(name, {path: new})), replace("web/app.py", f'b"{old}"', f'b"{new}"')]])

    done = loop(repo, "batch", "1", "2", "3", "--parallel", "3", "--model", f"replay:{cassettes}/{{issue}}.json",
                timeout=600)

    assert done.returncode == 0, done.stdout + done.stderr
    runs = [item["run_id"] for item in batch_record(repo)["items"]]
    evidence = [json.loads((repo / ".loop" / "runs" / run / "evidence.json").read_text()) for run in runs]
    assert all(e["verdict"]["proven"] for e in evidence)
    base = git(repo, "rev-parse", "main").strip()
    for suite in ("unit", "all"):
        sources = [s for e in evidence for s in e["verdict"]["base_runs"] if s["suite"] == suite]
        assert sorted(s["cached"] for s in sources) == [False, True, True], (suite, sources)
        assert {s["commit"] for s in sources} == {base} and len({s["computed_at"] for s in sources}) == 1
    entries = [p for p in (state_dir(repo) / CACHE_DIR / base).iterdir() if p.is_dir()]
    assert len(entries) == 2, entries  # one per suite configuration
    # the runs that read the cache still carry the full base run's report in their evidence
    for run in runs:
        folder = repo / ".loop" / "runs" / run / "iterations" / "1" / "validate" / "base"
        assert "test_the_web_service_is_healthy" in (folder / "all.full.xml").read_text()
