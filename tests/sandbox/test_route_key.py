"""One table of route-key cases drives both readers of the route key: the router's parser
(`route_key.route_key_of`, and the real router process in front of two servers) and the Istio matches
generated from the same grammar, evaluated as Envoy evaluates them, with Python's `re` and with RE2 itself.
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import re2  # google-re2: the engine Envoy uses
from multidict import CIMultiDict

from agentloop.sandbox.kubernetes import manifests as k8s_manifests
from agentloop.sandbox.route_key import header_regexes, istio_matches, route_key_of

K = "3f9a0c1d2e4b5a67"
OTHER = "0b1c2d3e4f5a6b7c"  # another sandbox's key
HEADER = "x-loop-route"
ISTIO_RE2_LIMIT = 32768  # re2.max_program_size.error_level in Istio's Envoy bootstrap (Envoy alone: 100)


@dataclass(frozen=True)
class Case:
    id: str
    headers: tuple[tuple[str, str], ...]
    key: str | None  # what the router reads; the Istio route of a key takes the request iff it is that key


def case(id: str, key: str | None, *headers: tuple[str, str]) -> Case:
    return Case(id, tuple(headers), key)


def bag(value: str) -> tuple[str, str]:
    return ("baggage", value)


def ts(value: str) -> tuple[str, str]:
    return ("tracestate", value)


CASES = [
    case("baggage plain", K, bag(f"sd-routing-key={K}")),
    case("baggage spaces around =", K, bag(f"sd-routing-key = {K}")),
    case("baggage tabs around =", K, bag(f"sd-routing-key\t=\t{K}")),
    case("baggage OWS around the member", K, bag(f" \tsd-routing-key={K} \t")),
    case("baggage among members", K, bag(f"userId=7,sd-routing-key={K},team=a")),
    case("baggage OWS around commas", K, bag(f"userId=7 ,\tsd-routing-key={K} , team=a")),
    case("baggage with a property", K, bag(f"sd-routing-key={K};prop=1")),
    case("baggage with properties and OWS", K, bag(f"sd-routing-key={K} ; flag ;\tp = 2,a=b")),
    case("key as a property of another member", None, bag(f"a=1;sd-routing-key={K}")),
    case("key as a property, then more members", None, bag(f"a=1;sd-routing-key={K},b=2")),
    case("key as a property, then a real member", OTHER, bag(f"a=1;sd-routing-key={K},sd-routing-key={OTHER}")),
    case("percent-encoded value", K, bag(f"sd-routing-key=%33f%39a{K[4:]}")),
    case("percent-encoded letter, upper and lower hex", K, bag(f"sd-routing-key={K[:1]}%66{K[2:]}")),
    case("percent-encoded key elsewhere is another key", "3f9a%", bag("sd-routing-key=3f9a%25")),
    case("longer key is another key", K + "0", bag(f"sd-routing-key={K}0")),
    case("prefixed key is another key", "x" + K, bag(f"sd-routing-key=x{K}")),
    case("another entry name", None, bag(f"sd-routing-keys={K}")),
    case("entry name as a suffix", None, bag(f"xsd-routing-key={K}")),
    case("entry names are case-sensitive", None, bag(f"SD-ROUTING-KEY={K}")),
    case("no = after the entry name", None, bag(f"sd-routing-key;{K}")),
    case("space inside the value", None, bag(f"sd-routing-key={K} x")),
    case("quoted value is not a baggage value", None, bag(f'sd-routing-key="{K}"')),
    case("= inside the value", "=" + K, bag(f"sd-routing-key=={K}")),
    case("empty members skipped", K, bag(f",, ,sd-routing-key={K},")),
    case("first entry wins", OTHER, bag(f"sd-routing-key={OTHER},sd-routing-key={K}")),
    case("first entry wins (the key)", K, bag(f"sd-routing-key={K},sd-routing-key={OTHER}")),
    case("an empty first entry gives no baggage key", None, bag(f"sd-routing-key=,sd-routing-key={K}")),
    case("two baggage headers are one list", K, bag("userId=7"), bag(f"sd-routing-key={K}")),
    case("baggage before tracestate", OTHER, bag(f"sd-routing-key={OTHER}"), ts(f"sd-routing-key={K}")),
    case("tracestate when baggage has no key", K, bag("userId=7"), ts(f"sd-routing-key={K}")),
    case("tracestate when the baggage entry is empty", K, bag("sd-routing-key="), ts(f"sd-routing-key={K}")),
    case("tracestate among vendors", K, ts(f"congo=t61rcWkgMzE,rojo=00f067aa0ba902b7,sd-routing-key={K}")),
    case("tracestate with OWS", K, ts(f"rojo=00f067aa0ba902b7 , sd-routing-key = {K}")),
    case("tracestate value up to ;", K, ts(f"sd-routing-key={K};x")),
    case("tracestate is not percent-decoded", "%33" + K[1:], ts(f"sd-routing-key=%33{K[1:]}")),
    case("project header", K, (HEADER, K)),
    case("project header OWS trimmed", K, (HEADER, f" {K}\t")),
    case("project header sent twice", f"{K},{K}", (HEADER, K), (HEADER, K)),
    case("project header after baggage", OTHER, bag(f"sd-routing-key={OTHER}"), (HEADER, K)),
    case("project header after tracestate", OTHER, ts(f"sd-routing-key={OTHER}"), (HEADER, K)),
    case("project header when baggage has none", K, bag("a=1;sd-routing-key=zzz"), (HEADER, K)),
    case("empty project header", None, (HEADER, " ")),
    case("another header", None, ("x-other-route", K)),
    case("cookie", K, ("cookie", f"loop-route={K}")),
    case("cookie among others", K, ("cookie", f"session=abc; loop-route={K}; theme=dark")),
    case("quoted cookie", K, ("cookie", f'loop-route="{K}"')),
    case("first cookie wins", OTHER, ("cookie", f"loop-route={OTHER}; loop-route={K}")),
    case("another cookie name", None, ("cookie", f"xloop-route={K}")),
    case("cookie after the project header", OTHER, (HEADER, OTHER), ("cookie", f"loop-route={K}")),
    case("empty project header falls to the cookie", K, (HEADER, ""), ("cookie", f"loop-route={K}")),
    case("nothing", None),
]


def envoy_takes(matches: list[dict[str, Any]], headers: tuple[tuple[str, str], ...],
                compile: Callable[[str], Any]) -> bool:
    """Whether Envoy would take the request on one of Istio's HTTPMatchRequests (ORed): a regex matches a
    header's whole value, a repeated header is its values joined with ",", and `withoutHeaders` is an
    inverted match that treats a missing header as empty (Istio sets treat_missing_header_as_empty)."""
    values: dict[str, list[str]] = {}
    for name, value in headers:
        values.setdefault(name.lower(), []).append(value)

    def joined(name: str) -> str | None:
        return ",".join(values[name]) if name in values else None

    def takes(name: str, regex: str) -> bool:
        value = joined(name)
        return value is not None and compile(regex).fullmatch(value) is not None

    for match in matches:
        present = all(takes(name, spec["regex"]) for name, spec in match["headers"].items())
        absent = not any(compile(spec["regex"]).fullmatch(joined(name) or "")
                         for name, spec in match.get("withoutHeaders", {}).items())
        if present and absent:
            return True
    return False


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_the_router_parser_reads_the_table(case: Case) -> None:
    assert route_key_of(CIMultiDict(case.headers), HEADER) == case.key


@pytest.mark.parametrize("engine", [re.compile, re2.compile], ids=["re", "re2"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_the_istio_route_of_a_key_takes_exactly_the_requests_the_parser_gives_that_key(
        case: Case, engine: Callable[[str], Any]) -> None:
    for key in (K, OTHER):
        assert envoy_takes(istio_matches(key, HEADER), case.headers, engine) == (case.key == key), key


def _regexes(key: str) -> list[str]:
    return [regex for pair in header_regexes(key, HEADER).values() for regex in pair]


@pytest.mark.parametrize("key", [K, "Zz-9.k_~"])
def test_istio_regexes_are_plain_re2_within_istios_program_size(key: str) -> None:
    for regex in _regexes(key):
        assert not re.search(r"\(\?[=!<]|\(\?P=|\\[1-9]", regex), f"lookaround or backreference in {regex}"
        compiled = re2.compile(regex)  # RE2 refuses lookarounds and backreferences outright
        assert compiled.programsize < ISTIO_RE2_LIMIT, regex
        re.compile(regex)


def _fuzz_value(rng: random.Random, key: str, separator: str, name: str) -> str:
    """A list header built from the pieces the grammar cares about, in random combinations."""
    names = [name, name[:-1], name + "x", "x" + name, name.upper(), "a", ""]
    values = [key, OTHER, "", key + "0", f'"{key}"', f"{key} x", "=" + key,
              "".join(f"%{ord(c):02x}" if rng.random() < 0.4 else c for c in key)]
    ows = ["", " ", "\t", " \t "]
    items = []
    for _ in range(rng.randint(0, 4)):
        item = rng.choice(ows) + rng.choice(names) + rng.choice(ows)
        if rng.random() < 0.9:
            item += "=" + rng.choice(ows) + rng.choice(values) + rng.choice(ows)
        if separator == "," and rng.random() < 0.3:
            item += ";" + rng.choice(ows) + rng.choice([f"{name}={key}", "p", "p=1", ""])
        items.append(item)
    return separator.join(items)


@pytest.mark.parametrize("key", [K, "Zz-9.k_~"])
def test_random_headers_are_read_alike_by_the_parser_and_the_istio_route(key: str) -> None:
    rng = random.Random(13)
    matches = [(k, istio_matches(k, HEADER)) for k in (key, OTHER)]
    for _ in range(1500):  # a fixed, seeded sample: the same every run
        headers: list[tuple[str, str]] = []
        for header, separator, name in (("baggage", ",", "sd-routing-key"), ("tracestate", ",", "sd-routing-key"),
                                        ("cookie", ";", "loop-route")):
            for _ in range(rng.choice([0, 0, 1, 1, 2])):
                headers.append((header, _fuzz_value(rng, key, separator, name)))
        if rng.random() < 0.3:
            headers.append((HEADER, rng.choice([key, OTHER, " ", f" {key} "])))
        rng.shuffle(headers)
        read = route_key_of(CIMultiDict(headers), HEADER)
        for routed, match in matches:
            assert envoy_takes(match, tuple(headers), re2.compile) == (read == routed), (headers, read)


def test_the_virtual_service_route_uses_the_generated_matches() -> None:
    fork = {"metadata": {"name": "reviews-v1-loop-fix-1"}, "spec": {"ports": [{"port": 9080}]}}
    vs = k8s_manifests.with_route(None, host="reviews", namespace="shop", sandbox="fix-1", route_key=K,
                                  route_header="X-Loop-Route", fork_service_obj=fork)
    assert vs["spec"]["http"][0]["match"] == istio_matches(K, HEADER)


# -- the real router process, in front of two servers ------------------------------------------------


def _server(name: str) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"server": name}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


@pytest.fixture(scope="module")
def router() -> Iterator[tuple[str, int]]:
    servers = {name: _server(name) for name in ("baseline", "fork")}
    for server in servers.values():
        threading.Thread(target=server.serve_forever, daemon=True).start()
    urls = {name: f"http://127.0.0.1:{s.server_address[1]}" for name, s in servers.items()}
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOP_")}
    env.update(PORT="0", LOOP_ROUTER_HOST="127.0.0.1", LOOP_ROUTER_ROUTES=json.dumps({K: urls["fork"]}),
               LOOP_ROUTER_DEFAULT=urls["baseline"], LOOP_ROUTE_HEADER=HEADER)
    proc = subprocess.Popen([sys.executable, "-m", "agentloop.sandbox.router"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        port = None
        for line in proc.stderr:  # ends when the router exits, so a failed start cannot hang the test
            if found := re.search(r"router serving \S+=:(\d+)", line):
                port = int(found.group(1))
                break
        assert port is not None, "the router did not start"
        threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep its pipe drained
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        for server in servers.values():
            server.shutdown()
            server.server_close()


def _served_by(address: tuple[str, int], headers: tuple[tuple[str, str], ...]) -> str:
    # A raw request: header values go out byte for byte, repeated headers stay repeated.
    lines = ["GET /x HTTP/1.1", "Host: loop", "Connection: close", *(f"{n}: {v}" for n, v in headers)]
    with socket.create_connection(address, timeout=30) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return str(json.loads(body)["server"])


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_the_router_routes_by_the_table(router: tuple[str, int], case: Case) -> None:
    assert _served_by(router, case.headers) == ("fork" if case.key == K else "baseline")
