"""The shared run database: a bad LOOP_DATABASE_URL is one clear line, without the password. (Runs
written to and read from the real PostgreSQL are tested with the Kubernetes executor.)"""

from __future__ import annotations

import pytest
from batchtest import loop
from looptest import MakeRepo


def test_an_unreachable_database_is_a_clear_error(make_repo: MakeRepo, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = make_repo({"README": "x\n"}, {"services": {}, "validate": []})
    monkeypatch.setenv("LOOP_DATABASE_URL", "postgresql://postgres:s3cret@127.0.0.1:1/none")
    listed = loop(repo, "runs")
    assert listed.returncode == 2
    assert "LOOP_DATABASE_URL" in listed.stderr and "Traceback" not in listed.stderr
    assert "s3cret" not in listed.stderr
