"""The bundled shop example, run for real: three service processes on loopback ports talking HTTP,
its own unit and integration suites run with pytest in a subprocess, and the scripted agent
transcript (the demo's cassette) applied edit by edit to a copy of the shop."""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from shop_harness import (
    CASSETTE,
    SHOP,
    RunningShop,
    apply_edits,
    cassette_iterations,
    copy_shop,
    run_pytest,
    running_shop,
)

from agentloop.config import load_config

ROUTING = {"baggage": "sd-routing-key=demo42", "x-loop-route": "demo42"}
NO_QTY_WARNING = (
    "WARNING inventory: reserve widget: request has no 'qty' (fields: quantity, sku); reserving 1"
)


def _integration(shop: RunningShop) -> Any:
    return run_pytest(
        shop.root,
        "tests/integration",
        LOOP_URL_GATEWAY=shop.urls["gateway"],
        LOOP_ROUTING_HEADERS=json.dumps(ROUTING),
    )


def _json_path(document: Any, path: str) -> Any:
    for key, index in re.findall(r"\.(\w+)|\[(\d+)\]", path.removeprefix("$")):
        document = document[key] if key else document[int(index)]
    return document


def _run_plan_requests(shop: RunningShop, plan: Path) -> None:
    """The plan's `http` steps and their expectations (the plan runner itself belongs to loop)."""
    for step in yaml.safe_load(plan.read_text(encoding="utf-8"))["steps"]:
        if "http" not in step:
            continue
        http, expect = step["http"], step.get("expect", {})
        assert http["service"] == "gateway", step["name"]
        status, body = shop.request(http["method"], http["path"], http.get("json"), ROUTING)
        assert status == expect.get("status", status), (step["name"], body)
        if "schema" in expect:
            jsonschema.validate(body, expect["schema"])
        for path, value in expect.get("json", {}).items():
            assert _json_path(body, path) == value, (step["name"], path, body)
        assert expect.get("contains", "") in json.dumps(body), step["name"]


@pytest.fixture
def buggy_shop(tmp_path: Path) -> Iterator[RunningShop]:
    root = copy_shop(tmp_path / "shop")
    with running_shop(root, tmp_path / "logs", inventory_db=tmp_path / "fork" / "inventory.db") as shop:
        yield shop


def test_loop_yaml_is_valid_and_names_what_exists() -> None:
    config = load_config(SHOP)
    assert set(config.services) == {"gateway", "orders", "inventory"}
    for name, service in config.services.items():
        assert (SHOP / service.path / "app.py").is_file(), name
        assert service.run == f"python3 -m services.{name}.app --port {{port}}"
    assert [plan.plan for plan in config.plans] == ["plans/checkout.yaml"]
    assert (SHOP / ".loop" / "issues" / "1.md").read_text(encoding="utf-8").startswith("# ")


def test_the_shops_unit_tests_pass(tmp_path: Path) -> None:
    result = run_pytest(copy_shop(tmp_path / "shop"), "tests/unit")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_bug_is_real_and_no_existing_check_catches_it(buggy_shop: RunningShop, tmp_path: Path) -> None:
    status, order = buggy_shop.request("POST", "/checkout", {"sku": "widget", "quantity": 3}, ROUTING)
    assert status == 201
    assert (order["quantity"], order["total"], order["reservation"]["reserved"]) == (1, 9.99, 1)
    assert NO_QTY_WARNING in buggy_shop.log("inventory")
    # Routing headers travel gateway -> orders -> inventory.
    assert "POST /reserve 200 route=demo42" in buggy_shop.log("inventory")
    assert (tmp_path / "fork" / "inventory.db").is_file()  # LOOP_DB_PATH is honoured

    result = _integration(buggy_shop)
    assert result.returncode == 0 and "6 passed" in result.stdout, result.stdout
    _run_plan_requests(buggy_shop, buggy_shop.root / "plans" / "checkout.yaml")


def test_the_integration_suite_skips_without_a_running_shop(tmp_path: Path) -> None:
    result = run_pytest(copy_shop(tmp_path / "shop"), "tests/integration")
    assert result.returncode == 0 and "skipped" in result.stdout, result.stdout


def test_the_cassette_is_well_formed_and_obeys_the_policy() -> None:
    cassette = json.loads(CASSETTE.read_text(encoding="utf-8"))
    assert (cassette["version"], cassette["model"]) == (1, "scripted")
    allowed = load_config(SHOP).policy.commands
    ids = []
    for response in cassette["responses"]:
        assert {"id", "type", "role", "model", "content", "stop_reason", "stop_sequence", "usage"} <= set(
            response
        )
        tool_uses = [block for block in response["content"] if block["type"] == "tool_use"]
        assert response["stop_reason"] == ("tool_use" if tool_uses else "end_turn")
        ids += [response["id"]] + [block["id"] for block in tool_uses]
        for block in tool_uses:
            if block["name"] == "bash":
                assert any(fnmatch.fnmatch(block["input"]["command"], pattern) for pattern in allowed)
            else:
                assert block["name"] == "str_replace_based_edit_tool"
                assert not Path(block["input"]["path"]).is_absolute()
    assert len(ids) == len(set(ids))
    assert len(cassette_iterations()) == 2


def test_the_cassette_needs_two_iterations_and_then_everything_passes(tmp_path: Path) -> None:
    root = copy_shop(tmp_path / "shop")
    first, second = cassette_iterations()

    assert apply_edits(root, first) == ["python3 -m pytest -q tests/unit"]
    with running_shop(root, tmp_path / "logs-1") as shop:
        result = _integration(shop)
        assert result.returncode == 1, result.stdout
        assert "1 failed, 6 passed" in result.stdout
        assert "test_checking_out_three_widgets_charges_and_reserves_all_three" in result.stdout
        assert NO_QTY_WARNING in shop.log("inventory")
        assert "inventory reserved 1 of 3 widget; back-ordering 2" in shop.log("orders")

    apply_edits(root, second)
    unit = run_pytest(root, "tests/unit")
    assert unit.returncode == 0, unit.stdout
    with running_shop(root, tmp_path / "logs-2") as shop:
        result = _integration(shop)
        assert result.returncode == 0 and "7 passed" in result.stdout, result.stdout
        _run_plan_requests(shop, root / "plans" / "checkout.yaml")
        assert "WARNING" not in shop.log("inventory")
