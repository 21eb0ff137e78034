"""`loop.yaml` loading: defaults a user relies on and errors that name the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentloop.config import DEFAULT_MODEL, PlanRef, SuiteConfig, load_config
from agentloop.errors import ConfigError


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "loop.yaml").write_text(text)
    return tmp_path


def test_design_sketch_loads_with_defaults(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, """
base_branch: main
services:
  orders:
    path: services/orders
    run: python -m orders --port {port}
    health: /healthz
    env: {INVENTORY_URL: "{services.inventory.url}"}
    database: {engine: sqlite, path: data/orders.db}
  inventory: {path: services/inventory, run: "python -m inventory --port {port}"}
validate:
  - suite: unit
    run: pytest -q services
  - suite: integration
    run: pytest -q tests/integration
    sandbox: true
  - plan: plans/checkout.yaml
agent: {max_iterations: 6, budget: {usd: 5, minutes: 30}}
policy: {commands: ["pytest *", "python *", "git diff*"], network: false}
forge: {kind: github, repo: acme/shop}
"""))
    assert config.agent.model == DEFAULT_MODEL
    assert [type(v) for v in config.validate_] == [SuiteConfig, SuiteConfig, PlanRef]
    assert config.suites[1].sandbox is True
    assert config.services["orders"].database is not None
    assert config.sandbox.ttl == 7200
    assert config.forge.repo == "acme/shop"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("services: {web: {path: web, run: x, health: 3}}", "services.web.health"),
        ("services: {}\nagent: {max_iterations: 0}", "agent.max_iterations"),
        ("services: {}\nforge: {kind: gitlab}", "forge.kind"),
        ("services: {}\nforge: {kind: github, repo: nope}", "forge.repo"),
        ("services: {a: {path: a, run: x, depends_on: [b]}}", "unknown service 'b'"),
        ("services: {}\nvalidate: [{suite: u}]", "validate[0]"),
        ("- just a list", "expected a mapping"),
    ],
)
def test_errors_name_the_file_and_field(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path, text))
    assert "loop.yaml" in str(caught.value)
    assert needle in str(caught.value)
