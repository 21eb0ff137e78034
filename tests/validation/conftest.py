"""The suites these tests run are small pytest runs; loading every plugin of the venv would dominate."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _lean_pytest_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
