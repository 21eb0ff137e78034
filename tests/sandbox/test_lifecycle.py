"""Forks that fail, updates, TTL, gc after a killed owner, and that nothing is left running."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sandbox_shop import chain, eventually, gone, port_of, version

from agentloop.config import LoopConfig
from agentloop.errors import DeployError, LoopError
from agentloop.sandbox.local import process
from agentloop.sandbox.local.backend import LocalSandboxBackend

CRASH = ("print(NAME, \"listening on\"", "print('boom: ORDERS_SECRET_MODE is not set', flush=True); sys.exit(3)\nprint(NAME, \"listening on\"")
SICK = ('if self.path == "/healthz":\n            return self.reply(200', 'if self.path == "/healthz":\n            return self.reply(500')


def _tagged(backend: LocalSandboxBackend, sandbox: str) -> list[int]:
    return [pid for pid, tag in process.tagged_processes(backend.registry.path) if tag == sandbox]


def test_crashing_fork_fails_with_exit_code_and_log_tail(
    backend: LocalSandboxBackend, fork_tree: Callable[..., Path], tmp_path: Path
) -> None:
    with pytest.raises(DeployError) as failure:
        backend.create("crash", {"orders": fork_tree("crash", {"services/orders/app.py": CRASH})}, log_dir=tmp_path / "logs")
    assert failure.value.service == "orders"
    assert failure.value.process_exit_code == 3
    assert "boom: ORDERS_SECRET_MODE is not set" in failure.value.log_tail
    assert backend.get("crash") is None and _tagged(backend, "crash") == []
    assert "boom" in (tmp_path / "logs" / "orders.log").read_text()


def test_never_healthy_fork_times_out_and_is_stopped(
    backend: LocalSandboxBackend, shop_config: LoopConfig, fork_tree: Callable[..., Path]
) -> None:
    impatient = shop_config.model_copy(deep=True)
    impatient.services["orders"].ready_timeout = 1.0
    sandboxes = LocalSandboxBackend(backend.repo, impatient, backend.root.parent)
    with pytest.raises(DeployError) as failure:
        sandboxes.create("sick", {"orders": fork_tree("sick", {"services/orders/app.py": SICK})})
    assert failure.value.process_exit_code is None
    assert "not healthy" in str(failure.value) and "GET /healthz" in failure.value.log_tail
    assert sandboxes.get("sick") is None and _tagged(backend, "sick") == []


def test_update_restarts_only_changed_forks_and_keeps_the_route_key(
    backend: LocalSandboxBackend, fork_tree: Callable[..., Path], client: httpx.Client
) -> None:
    tree = fork_tree("update", {"services/web/app.py": version("web1"), "services/orders/app.py": version("orders1")})
    first = backend.create("update", {"web": tree, "orders": tree})
    try:
        assert backend.update("update", {"web": tree, "orders": tree}).forks["orders"].pid == first.forks["orders"].pid
        app = tree / "services/orders/app.py"
        app.write_text(app.read_text().replace('VERSION = "orders1"', 'VERSION = "orders2"'))
        second = backend.update("update", {"web": tree, "orders": tree})
        assert second.route_key == first.route_key
        assert second.forks["web"].pid == first.forks["web"].pid
        assert second.forks["orders"].pid != first.forks["orders"].pid
        assert gone(first.forks["orders"].pid, port_of(first.forks["orders"].url))
        response = client.get(f"{second.service_urls['web']}/call", headers=second.routing_headers)
        assert chain(response.json()) == ["web1", "orders2", "base"]
        third = backend.update("update", {"inventory": tree})  # a service forked later joins the sandbox
        assert third.route_key == first.route_key and set(third.forks) == {"web", "orders", "inventory"}
    finally:
        backend.remove("update")
    assert all(gone(f.pid, port_of(f.url)) for f in third.forks.values())


def test_failed_update_drops_the_fork_and_keeps_the_sandbox(
    backend: LocalSandboxBackend, fork_tree: Callable[..., Path], client: httpx.Client
) -> None:
    tree = fork_tree("badupdate", {"services/orders/app.py": version("good")})
    first = backend.create("badupdate", {"orders": tree})
    try:
        app = tree / "services/orders/app.py"
        app.write_text(app.read_text().replace(*CRASH))
        with pytest.raises(DeployError) as failure:
            backend.update("badupdate", {"orders": tree})
        assert failure.value.process_exit_code == 3
        after = backend.get("badupdate")
        assert after is not None and after.route_key == first.route_key and "orders" not in after.forks
        assert gone(first.forks["orders"].pid, port_of(first.forks["orders"].url))
    finally:
        backend.remove("badupdate")


def test_logs_are_timestamped_and_sliced_by_time(
    backend: LocalSandboxBackend, fork_tree: Callable[..., Path], client: httpx.Client
) -> None:
    info = backend.create("logs", {"orders": fork_tree("logs", {})})
    try:
        # the launcher stamps a line when it reads it: on a busy machine that can be a moment later
        eventually(lambda: backend.logs("logs", "orders"), "orders listening on", seconds=30)
        marker = time.time()
        client.get(f"{info.service_urls['orders']}/call", headers=info.routing_headers)
        everything = eventually(lambda: backend.logs("logs", "orders"), "GET /call")
        assert "orders listening on" in everything and "GET /call" in everything
        recent = backend.logs("logs", "orders", since=marker)
        assert "GET /call" in recent and "listening on" not in recent
        assert backend.logs("logs", "orders", until=marker - 3600) == ""
        assert "inventory listening on" in backend.logs("logs", "inventory")  # unforked: the baseline's
        with pytest.raises(LoopError, match="unknown service 'nope'"):
            backend.logs("logs", "nope")
    finally:
        backend.remove("logs")


def test_ttl_expiry_and_gc_remove_the_sandbox_and_its_processes(
    backend: LocalSandboxBackend, fork_tree: Callable[..., Path]
) -> None:
    info = backend.create("ttl", {"orders": fork_tree("ttl", {})})
    fork = info.forks["orders"]
    assert backend.gc() == []
    assert backend.gc(now=info.expires_at + 1) == ["sandbox ttl (expired)"]
    assert backend.get("ttl") is None and gone(fork.pid, port_of(fork.url))


_OWNER = """
import json, sys
from pathlib import Path
from agentloop.config import load_config
from agentloop.sandbox.local.backend import LocalSandboxBackend
repo, state, tree = map(Path, sys.argv[1:4])
info = LocalSandboxBackend(repo, load_config(repo), state).create("owned", {"orders": tree})
print(json.dumps(info.model_dump(mode="json")), flush=True)
sys.stdin.read()
"""


def test_gc_after_the_owner_is_sigkilled_leaves_nothing(
    backend: LocalSandboxBackend, fork_tree: Callable[..., Path]
) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER, str(backend.repo), str(backend.root.parent), str(fork_tree("owned", {}))],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert owner.stdout is not None
        fork = json.loads(owner.stdout.readline())["forks"]["orders"]
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    assert not gone(fork["pid"], port_of(fork["url"]))  # the orphan outlives its owner ...
    assert backend.gc() == ["sandbox owned (owner gone)"]
    assert gone(fork["pid"], port_of(fork["url"]))  # ... until gc
    assert backend.get("owned") is None


def test_gc_stops_processes_whose_record_is_gone(backend: LocalSandboxBackend, fork_tree: Callable[..., Path]) -> None:
    info = backend.create("unrecorded", {"orders": fork_tree("unrecorded", {})})
    with backend.registry.edit() as data:  # as if `loop` died after starting the fork, before recording it
        del data.sandboxes["unrecorded"]
    fork = info.forks["orders"]
    removed = backend.gc()
    assert removed == [f"process {fork.pid} (unrecorded: record gone)"]
    assert gone(fork.pid, port_of(fork.url))


def test_bad_names_and_services_are_refused(backend: LocalSandboxBackend, shop: Path) -> None:
    with pytest.raises(LoopError, match="not allowed"):
        backend.create("Bad Name", {"orders": shop})
    with pytest.raises(LoopError, match="cannot fork payments: loop.yaml has inventory, orders, web"):
        backend.create("x", {"payments": shop})
    with pytest.raises(LoopError, match="no sandbox named 'ghost'"):
        backend.update("ghost", {"orders": shop})
