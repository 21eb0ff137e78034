"""Backend choice, which services a change forks, and placeholder errors in loop.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentloop.config import LoopConfig, parse_config
from agentloop.errors import ConfigError
from agentloop.sandbox.factory import open_backend, services_for_changes
from agentloop.sandbox.local.backend import LocalSandboxBackend
from agentloop.sandbox.local.services import expand, waves


def _config(**services: dict[str, object]) -> LoopConfig:
    return parse_config({"services": services}, Path("loop.yaml"))


def test_local_backend_is_the_default(shop: Path, shop_config: LoopConfig, tmp_path: Path) -> None:
    backend = open_backend(shop, shop_config, state_dir=tmp_path)
    assert isinstance(backend, LocalSandboxBackend) and backend.root == tmp_path / "local"


def test_changed_files_fork_their_services_and_those_they_are_forked_with() -> None:
    config = _config(
        web={"path": "services/web", "run": "x"},
        orders={"path": "services/orders", "run": "x", "fork_with": ["web"]},
        inventory={"path": "services/inventory", "run": "x", "fork_with": ["orders"]},
        docs={"path": "docs", "run": "x"},
    )
    assert services_for_changes(config, ["services/inventory/app.py"]) == ["web", "orders", "inventory"]
    assert services_for_changes(config, ["services/web/app.py", "README.md"]) == ["web"]
    assert services_for_changes(config, ["services/webhooks/x.py", "documentation.md"]) == []


def test_depends_on_is_start_order_and_forks_nothing() -> None:
    config = _config(
        web={"path": "services/web", "run": "x", "depends_on": ["orders"]},
        orders={"path": "services/orders", "run": "x", "depends_on": ["inventory"]},
        inventory={"path": "services/inventory", "run": "x"},
    )
    assert services_for_changes(config, ["services/inventory/app.py"]) == ["inventory"]
    assert waves(config.services, config.services) == [["inventory"], ["orders"], ["web"]]
    # A sandbox forking web and inventory starts inventory first; orders is the baseline's, already up.
    assert waves(config.services, ["web", "inventory"]) == [["inventory", "web"]]
    assert waves(config.services, ["web", "orders"]) == [["orders"], ["web"]]


def test_unknown_service_placeholder_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"field `services.web.env.API`.*unknown service 'payments'"):
        expand("{services.payments.url}", field="services.web.env.API", port=1, database=None, router_urls={"web": "u"})
    assert expand("echo ${HOME} {port}", field="f", port=8080, database=None, router_urls={}) == "echo ${HOME} 8080"


def test_host_and_port_placeholders_are_the_parts_of_the_url() -> None:
    urls = {"db": "http://127.0.0.1:41234"}
    text = "--db {services.db.url} --db-host {services.db.host} --db-port {services.db.port} --port {port}"
    assert expand(text, field="f", port=8080, database=None, router_urls=urls) == (
        "--db http://127.0.0.1:41234 --db-host 127.0.0.1 --db-port 41234 --port 8080")
    with pytest.raises(ConfigError, match=r"loop fills \{services.db.url\}, \{services.db.host\}, \{services.db.port\}"):
        _config(api={"path": "api", "run": "x --db {services.db.hostname}"}, db={"path": "db", "run": "x"})


def test_missing_kubernetes_backend_is_a_clear_error(
    shop: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import sys

    from agentloop.errors import NotSupportedYet

    monkeypatch.setitem(sys.modules, "agentloop.sandbox.kubernetes.backend", None)  # as if not installed
    config = parse_config({"services": {"a": {"path": "a", "run": "x"}}, "sandbox": {"backend": "kubernetes"}}, Path("y"))
    with pytest.raises(NotSupportedYet, match="sandbox.backend.*use `backend: local`"):
        open_backend(shop, config, state_dir=tmp_path)
