"""What a test suite is told about the sandbox it tests: the names a fork is told (loop's and Signadot's,
so Signadot-instrumented test code runs unchanged), where the sandbox is, and the headers that reach it."""

from __future__ import annotations

import json

from agentloop.results import SandboxInfo
from agentloop.sandbox.client import routing_headers
from agentloop.validation.suites import suite_env


def test_a_suite_is_told_the_sandbox_under_loops_and_signadots_names_and_how_to_reach_it() -> None:
    sandbox = SandboxInfo(name="fix-7", backend="local", route_key="a1b2c3", router_url="http://127.0.0.1:9000",
                          service_urls={"web": "http://127.0.0.1:9000", "order-api": "http://127.0.0.1:9001"},
                          routing_headers=routing_headers("a1b2c3", "x-loop-route"))
    env = suite_env(sandbox)
    assert {name: value for name, value in env.items() if name.startswith(("LOOP_", "SIGNADOT_"))} == {
        "LOOP_SANDBOX": "fix-7", "LOOP_ROUTE_KEY": "a1b2c3",
        "SIGNADOT_SANDBOX_NAME": "fix-7", "SIGNADOT_SANDBOX_ROUTING_KEY": "a1b2c3",
        "LOOP_SANDBOX_URL": "http://127.0.0.1:9000",
        "LOOP_URL_WEB": "http://127.0.0.1:9000", "LOOP_URL_ORDER_API": "http://127.0.0.1:9001",
        "LOOP_ROUTING_HEADERS": json.dumps({"baggage": "sd-routing-key=a1b2c3", "x-loop-route": "a1b2c3"}),
    }


def test_without_a_sandbox_a_suite_is_told_nothing_about_one() -> None:
    assert not [name for name in suite_env(None) if name.startswith(("LOOP_", "SIGNADOT_"))]
