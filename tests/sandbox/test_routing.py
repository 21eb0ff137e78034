"""Routing by route key through the real router process, with real services on loopback."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sandbox_shop import chain, version

from agentloop.results import SandboxInfo
from agentloop.sandbox.local.backend import LocalSandboxBackend


@pytest.fixture(scope="module")
def orders_fork(backend: LocalSandboxBackend, shop: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxInfo]:
    """A sandbox forking only `orders`, from a copy of the shop whose orders says version "fork"."""
    from agentloop import git

    tree = git.add_worktree(git.open_repo(shop), tmp_path_factory.mktemp("wt") / "t", branch="t/routing", commit="main")
    app = tree / "services/orders/app.py"
    app.write_text(app.read_text().replace(*version("fork")))
    info = backend.create("routing", {"orders": tree})
    yield info
    backend.remove("routing")


def _web(info: SandboxInfo) -> str:
    return info.service_urls["web"]


def test_request_without_key_is_served_by_the_baseline(orders_fork: SandboxInfo, client: httpx.Client) -> None:
    assert chain(client.get(f"{_web(orders_fork)}/call").json()) == ["base", "base", "base"]


@pytest.mark.parametrize(
    "carrier",
    [
        lambda key: {"baggage": f"userId=7,sd-routing-key={key};ttl=3"},
        lambda key: {"tracestate": f"congo=t61rcWkgMzE,sd-routing-key={key}"},
        lambda key: {"x-loop-route": key},
        lambda key: {"cookie": f"theme=dark; loop-route={key}"},
    ],
    ids=["baggage", "tracestate", "own-header", "cookie"],
)
def test_request_with_key_reaches_the_fork_and_only_the_fork(
    orders_fork: SandboxInfo, client: httpx.Client, carrier: Callable[[str], dict[str, str]]
) -> None:
    response = client.get(f"{_web(orders_fork)}/call", headers=carrier(orders_fork.route_key))
    assert chain(response.json()) == ["base", "fork", "base"]


def test_unknown_key_falls_back_to_the_baseline(orders_fork: SandboxInfo, client: httpx.Client) -> None:
    response = client.get(f"{_web(orders_fork)}/call", headers={"baggage": "sd-routing-key=nosuchkey"})
    assert chain(response.json()) == ["base", "base", "base"]


def test_routing_headers_and_preview_link_route_to_the_fork(orders_fork: SandboxInfo, client: httpx.Client) -> None:
    assert chain(client.get(f"{_web(orders_fork)}/call", headers=orders_fork.routing_headers).json())[1] == "fork"
    assert orders_fork.link is not None
    opened = client.get(orders_fork.link, follow_redirects=False)
    assert opened.status_code == 302 and "loop-route=" in opened.headers["set-cookie"]
    with httpx.Client(trust_env=False, timeout=10) as browser:
        browser.get(orders_fork.link + "&next=/call", follow_redirects=True)
        assert chain(browser.get(f"{_web(orders_fork)}/call").json()) == ["base", "fork", "base"]


def test_requests_are_recorded_for_the_evidence(
    orders_fork: SandboxInfo, backend: LocalSandboxBackend, client: httpx.Client
) -> None:
    client.get(f"{_web(orders_fork)}/call", headers=orders_fork.routing_headers)
    records = backend.requests("routing")
    by_service = {(r["service"], r["target"]) for r in records}
    assert {("web", "baseline"), ("orders", "fork"), ("inventory", "baseline")} <= by_service
    assert all(r["sandbox"] == "routing" and r["status"] == 200 and r["latency_ms"] >= 0 for r in records)
    assert any(r["url"] == orders_fork.forks["orders"].url for r in records)


def test_bodies_stream_both_ways_through_the_router(orders_fork: SandboxInfo, client: httpx.Client) -> None:
    orders = orders_fork.service_urls["orders"]
    big = "x" * 300_000

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(big), 65_536):
            yield big[start : start + 65_536].encode()

    headers = {**orders_fork.routing_headers, "content-length": str(len(big))}
    assert client.post(f"{orders}/items", content=chunks(), headers=headers).status_code == 201
    items = client.get(f"{orders}/items", headers=orders_fork.routing_headers).json()
    assert big in items


def test_fork_writes_reach_neither_the_baseline_nor_another_sandbox(
    backend: LocalSandboxBackend, shop: Path, client: httpx.Client, fork_tree: Callable[..., Path]
) -> None:
    before = hashlib.sha256((shop / "data/orders.db").read_bytes()).hexdigest()
    first = backend.create("writes-a", {"orders": fork_tree("a", {})})
    second = backend.create("writes-b", {"orders": fork_tree("b", {})})
    try:
        orders = first.service_urls["orders"]
        assert client.post(f"{orders}/items", content=b"only-in-a", headers=first.routing_headers).status_code == 201
        assert client.post(f"{orders}/items", content=b"only-in-b", headers=second.routing_headers).status_code == 201
        in_a = client.get(f"{orders}/items", headers=first.routing_headers).json()
        in_b = client.get(f"{orders}/items", headers=second.routing_headers).json()
        in_baseline = client.get(f"{orders}/items").json()
        assert "seed" in in_a and "only-in-a" in in_a and "only-in-b" not in in_a
        assert "only-in-b" in in_b and "only-in-a" not in in_b
        assert "only-in-a" not in in_baseline and "only-in-b" not in in_baseline
        assert hashlib.sha256((shop / "data/orders.db").read_bytes()).hexdigest() == before
    finally:
        backend.remove("writes-a")
        backend.remove("writes-b")
