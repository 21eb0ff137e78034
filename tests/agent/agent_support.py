"""Helpers shared by the agent tests (names, tasks, configs)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentloop.agent.base import Coder, EditTask
from agentloop.config import LoopConfig
from agentloop.results import Issue

API_KEY = "sk-ant-api03-testkey-" + "x" * 40

SHOP_FILES = {
    "services/orders/app.py": "def total(prices):\n    return sum(prices) - 1\n",
    "services/orders/test_app.py": (
        "from app import total\n\n\ndef test_total():\n    assert total([2, 3]) == 5\n"
    ),
    "README.md": "shop\n",
}


def loop_config(**agent_and_policy: Any) -> LoopConfig:
    data: dict[str, Any] = {"services": {"orders": {"path": "services/orders", "run": "python -m orders"}}}
    data.update(agent_and_policy)
    return LoopConfig.model_validate(data)


def edit_task(worktree: Path, iteration: int = 1, **fields: Any) -> EditTask:
    defaults: dict[str, Any] = {
        "run_id": "r-test",
        "worktree": worktree,
        "repo": worktree,  # the test's repository is its own worktree
        "issue": Issue(number=7, title="total is off by one", body="total([2, 3]) returns 4, not 5."),
        "iteration": iteration,
        "services": {"orders": "services/orders"},
        "checks": ["unit: pytest -q services"],
    }
    defaults.update(fields)
    return EditTask(**defaults)


MakeCoder = Callable[..., Coder]


