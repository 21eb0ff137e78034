"""Run records and checkpoints in the real PostgreSQL (127.0.0.1:5432, a throwaway schema): a run made
in one repository is listed and shown from another, as runs in Kubernetes Jobs are."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from batchtest import loop
from looptest import MakeRepo, create, replace, write_cassette


def test_a_run_is_listed_and_shown_from_anywhere_through_the_database(
    make_repo: MakeRepo, tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOOP_DATABASE_URL", database_url)
    here = make_repo({"calc.py": "def add(a, b):\n    return a - b\n", ".loop/issues/1.md": "# add() subtracts\n"},
                     {"services": {}, "validate": [{"suite": "unit", "run": "python3 -m pytest -q tests"}]})
    elsewhere = make_repo({"README": "another checkout\n"}, {"services": {}, "validate": []}, name="elsewhere")
    cassette = write_cassette(tmp_path / "c.json", [[
        create("tests/test_add.py", "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"),
        replace("calc.py", "a - b", "a + b")]])

    done = loop(here, "fix", "1", "--model", f"replay:{cassette}")
    assert done.returncode == 0, done.stdout + done.stderr

    listed = json.loads(loop(elsewhere, "runs", "--json").stdout)
    assert [(run["issue"], run["status"]) for run in listed] == [(1, "published")]
    run_id = listed[0]["id"]
    assert not (elsewhere / ".loop" / "runs" / run_id).exists() or not (elsewhere / ".loop" / "runs" / run_id / "run.json").exists()
    shown = loop(elsewhere, "show", run_id, "--json")
    assert shown.returncode == 0, shown.stderr
    details = json.loads(shown.stdout)
    assert details["run"]["pull_request"] == listed[0]["pull_request"]
    assert [it["changed_files"] for it in details["iterations"]] == [["calc.py", "tests/test_add.py"]]
    assert [e["node"] for e in details["events"] if e["event"] == "end"][-1] == "publish"
    # the checkpoints went to the database, not to a file next to the run
    assert not list((here / ".loop" / "runs").glob("*/checkpoints.sqlite"))


def test_an_unreachable_database_is_a_clear_error(make_repo: MakeRepo) -> None:
    repo = make_repo({"README": "x\n"}, {"services": {}, "validate": []})
    os.environ["LOOP_DATABASE_URL"] = "postgresql://postgres:s3cret@127.0.0.1:1/none"
    try:
        listed = loop(repo, "runs")
    finally:
        del os.environ["LOOP_DATABASE_URL"]
    assert listed.returncode == 2
    assert "LOOP_DATABASE_URL" in listed.stderr and "Traceback" not in listed.stderr
    assert "s3cret" not in listed.stderr
