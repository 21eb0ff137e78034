"""What a client sees through the router is what it would see talking to the service directly.

The router is started as the local backend starts it (`process.spawn_router` on a registry file), in front
of a deliberately misbehaving upstream on loopback (fidelity_upstream.py) registered both as the baseline
and as a sandbox's fork. The tests look only at the client side (httpx, raw sockets), at what reached the
upstream, and at the request records, so they hold for any data plane behind `spawn_router`.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h11
import httpx
import pytest
from fidelity_upstream import BIG, Upstream, big_body_digest, pattern

from agentloop import processes
from agentloop.processes import ProcessRecord
from agentloop.sandbox.local import process
from agentloop.sandbox.local.registry import (
    BaselineRecord,
    Registry,
    RegistryData,
    SandboxRecord,
    ServiceProcess,
)

KEY = "fidelity-key"
WAIT = 20.0  # generous bound for anything the test waits on; never a measure of speed


@dataclass
class RouterUnderTest:
    record: ProcessRecord
    ports: dict[str, int]
    requests: Path

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def records(self, path: str, key: str | None = None) -> dict[str, object]:
        """The latest request record for `path` (written once the exchange is over, so poll for it)."""
        log = self.requests / f"{key or '_baseline'}.jsonl"
        deadline = time.monotonic() + WAIT
        while True:
            if log.is_file():
                found = [r for r in map(json.loads, log.read_text().splitlines()) if r["path"] == path]
                if found:
                    return found[-1]  # type: ignore[no-any-return]
            assert time.monotonic() < deadline, f"no request record for {path} in {log}"
            time.sleep(0.02)


def _start_router(root: Path, services: dict[str, str], fork: dict[str, str],
                  upstream_timeout: float | None = None) -> RouterUnderTest:
    registry = Registry(root / "local")
    sockets = {name: process.listening_socket() for name in services}
    ports = {name: sock.getsockname()[1] for name, sock in sockets.items()}

    def proc(name: str, url: str) -> ServiceProcess:
        return ServiceProcess(pid=os.getpid(), service=name, port=int(url.rsplit(":", 1)[1]), url=url,
                              source=str(root), log_path=str(root / f"{name}.log"))

    registry.write(RegistryData(
        baseline=BaselineRecord(commit="0" * 40, worktree=str(root), started_at=time.time(), ready=True,
                                router_ports=ports, services={n: proc(n, u) for n, u in services.items()}),
        sandboxes={"fidelity": SandboxRecord(
            name="fidelity", route_key=KEY, created_at=time.time(), expires_at=time.time() + 3600,
            log_dir=str(root), ready=True, forks={n: proc(n, u) for n, u in fork.items()})},
    ))
    try:
        record = process.spawn_router(registry=registry.path, requests_dir=root / "requests",
                                      route_header="x-loop-route", sockets=sockets,
                                      log_path=root / "router.log", upstream_timeout=upstream_timeout)
    finally:
        for sock in sockets.values():
            sock.close()
    router = RouterUnderTest(record, ports, root / "requests")
    with httpx.Client(trust_env=False, timeout=WAIT) as probe:
        assert probe.get(f"{router.url(next(iter(services)))}/__loop/health").status_code == 200
    return router


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


@pytest.fixture(scope="module")
def router(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterUnderTest]:
    refused = process.free_port()  # nothing listens there
    started = _start_router(tmp_path_factory.mktemp("router"),
                            {"svc": upstream.url, "down": f"http://127.0.0.1:{refused}"}, {"svc": upstream.url})
    yield started
    processes.stop(started.record)


def _raw(port: int, request: bytes) -> bytes:
    """Send `request` on a fresh connection and read until the router closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data


def _head_and_body(raw: bytes) -> tuple[list[str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return head.decode("latin-1").split("\r\n"), body


def _header(lines: list[str], name: str) -> str | None:
    values = [line.split(":", 1)[1].strip() for line in lines[1:] if line.split(":", 1)[0].lower() == name.lower()]
    return values[0] if values else None


@pytest.mark.parametrize("key", [None, KEY], ids=["baseline", "fork"])
def test_a_body_cut_short_of_its_content_length_fails_at_the_client(
        router: RouterUnderTest, client: httpx.Client, key: str | None) -> None:
    headers = {"baggage": f"sd-routing-key={key}"} if key else {}
    with pytest.raises(httpx.RemoteProtocolError):
        client.get(f"{router.url('svc')}/mid-body-length", headers=headers)

    route = f"baggage: sd-routing-key={key}\r\n" if key else ""
    lines, body = _head_and_body(_raw(router.ports["svc"],
                                      f"GET /mid-body-length HTTP/1.1\r\nHost: x\r\n{route}\r\n".encode()))
    assert lines[0].startswith("HTTP/1.1 200")
    assert _header(lines, "content-length") == "1000"
    assert body == b"a" * 400, "the client sees the short body, then the connection closes"

    record = router.records("/mid-body-length", key)
    assert record["status"] == 200 and record["target"] == ("fork" if key else "baseline")
    assert "mid-body after 400 bytes" in str(record["error"])


def test_a_chunked_body_cut_off_has_no_last_chunk(router: RouterUnderTest, client: httpx.Client) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        client.get(f"{router.url('svc')}/mid-body-chunked")

    lines, body = _head_and_body(_raw(router.ports["svc"], b"GET /mid-body-chunked HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert lines[0].startswith("HTTP/1.1 200") and _header(lines, "transfer-encoding") == "chunked"
    assert b"first" in body and b"second" in body
    assert not body.endswith(b"0\r\n\r\n"), "no terminating chunk: the body must not look complete"
    assert b"HTTP/1.1" not in body, "the router's own error never becomes the body"
    assert "mid-body after 11 bytes" in str(router.records("/mid-body-chunked")["error"])


def test_an_upstream_reset_before_headers_is_a_502_naming_service_and_cause(
        router: RouterUnderTest, client: httpx.Client) -> None:
    response = client.get(f"{router.url('svc')}/reset")
    assert response.status_code == 502
    assert "'svc'" in response.text and "reset" in response.text.lower()
    record = router.records("/reset")
    assert record["status"] == 502 and "reset" in str(record["error"])


def test_a_refused_connection_is_a_502_naming_service_and_cause(router: RouterUnderTest, client: httpx.Client) -> None:
    response = client.get(f"{router.url('down')}/anything")
    assert response.status_code == 502
    assert "'down'" in response.text and "refused" in response.text.lower()
    assert router.records("/anything")["status"] == 502


def test_an_upstream_that_never_answers_is_a_504(upstream: Upstream, tmp_path: Path, client: httpx.Client) -> None:
    slow = _start_router(tmp_path, {"svc": upstream.url}, {}, upstream_timeout=1)
    try:
        response = client.get(f"{slow.url('svc')}/no-answer")
        assert response.status_code == 504
        assert "'svc'" in response.text and "1 s" in response.text
        record = slow.records("/no-answer")
        assert record["status"] == 504 and "no response headers" in str(record["error"])
    finally:
        upstream.events["no-answer"].set()
        processes.stop(slow.record)


def test_a_stream_reaches_the_client_as_it_is_produced(
        router: RouterUnderTest, upstream: Upstream, client: httpx.Client) -> None:
    with client.stream("GET", f"{router.url('svc')}/stream", timeout=WAIT) as response:
        # The headers arrive while the upstream still holds back its first chunk...
        assert response.status_code == 200 and response.headers["content-type"] == "text/event-stream"
        upstream.events["stream-first"].set()
        chunks = response.iter_raw()
        seen = b""
        while b"data: first\n\n" not in seen:
            seen += next(chunks)
        # ...and the first chunk before the upstream is even allowed to produce the last one.
        assert not upstream.events["stream-last"].is_set()
        upstream.events["stream-last"].set()
        seen += b"".join(chunks)
    assert seen == b"data: first\n\ndata: last\n\n"
    assert "error" not in router.records("/stream")


def _peak_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])


def test_50_mb_pass_both_ways_without_the_router_holding_them(
        router: RouterUnderTest, upstream: Upstream, client: httpx.Client) -> None:
    before = _peak_rss_kib(router.record.pid)
    digest = hashlib.sha256()
    size = 0
    with client.stream("GET", f"{router.url('svc')}/big") as response:
        assert response.headers["content-length"] == str(BIG)
        for chunk in response.iter_raw():
            digest.update(chunk)
            size += len(chunk)
    assert size == BIG and digest.hexdigest() == big_body_digest()

    piece = pattern(64 * 1024)
    upload = client.post(f"{router.url('svc')}/upload", content=(piece for _ in range(BIG // len(piece))),
                         headers={"content-length": str(BIG)})
    assert upload.text == f"POST /upload {BIG} {big_body_digest()}"
    assert upstream.last("/upload").values("content-length") == [str(BIG)]
    grown_mib = (_peak_rss_kib(router.record.pid) - before) / 1024
    assert grown_mib < 30, f"the router's peak memory grew by {grown_mib:.0f} MiB moving 50 MB bodies"


def test_a_client_gone_mid_body_is_recorded_and_the_upstream_let_go(
        router: RouterUnderTest, upstream: Upstream) -> None:
    with socket.create_connection(("127.0.0.1", router.ports["svc"]), timeout=WAIT) as sock:
        sock.sendall(b"GET /big-abandoned HTTP/1.1\r\nHost: svc\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(65536)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # hang up with a reset
    record = router.records("/big-abandoned")
    assert record["status"] == 200 and "client closed mid-body" in str(record["error"])
    assert upstream.events["/big-abandoned abandoned"].wait(WAIT), "the upstream connection is closed, not drained"


def test_head_204_304_and_keep_alive_on_one_connection(router: RouterUnderTest, upstream: Upstream) -> None:
    exchanges = [("GET", "/echo/1", 200), ("HEAD", "/head", 200), ("GET", "/no-content", 204),
                 ("GET", "/not-modified", 304), ("POST", "/echo/2", 200)]
    seen_before = len(upstream.received)
    conn = h11.Connection(h11.CLIENT)
    with socket.create_connection(("127.0.0.1", router.ports["svc"]), timeout=WAIT) as sock:
        for method, path, status in exchanges:
            body = b"payload" if method == "POST" else b""
            headers = [("Host", "svc"), ("Content-Length", str(len(body)))] if body else [("Host", "svc")]
            wire = conn.send(h11.Request(method=method, target=path, headers=headers)) or b""
            if body:
                wire += conn.send(h11.Data(data=body)) or b""
            sock.sendall(wire + (conn.send(h11.EndOfMessage()) or b""))
            response, received = None, b""
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(sock.recv(65536))
                elif isinstance(event, h11.Response):
                    response = event
                elif isinstance(event, h11.Data):
                    received += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
            assert response is not None and response.status_code == status, path
            fields = {k.decode().lower(): v.decode() for k, v in response.headers}
            if path == "/head":
                assert fields["content-length"] == "12345" and received == b""
            elif status in (204, 304):
                assert received == b"" and "transfer-encoding" not in fields
                assert fields.get("etag", '"v1"') == '"v1"' and fields.get("x-kind", "empty") == "empty"
                assert fields.get("content-length") in ((None, "7") if status == 304 else (None,))
            else:
                assert received.startswith(f"{method} {path} ".encode())
            # DONE, not MUST_CLOSE: the response neither asked to close the connection nor overran its end.
            assert conn.our_state is h11.DONE and conn.their_state is h11.DONE, path
            conn.start_next_cycle()
    assert [(r.method, r.path) for r in upstream.received[seen_before:]] == [(m, p) for m, p, _ in exchanges]


def test_expect_100_continue_upload(router: RouterUnderTest, upstream: Upstream) -> None:
    body = pattern(300_000)
    with socket.create_connection(("127.0.0.1", router.ports["svc"]), timeout=WAIT) as sock:
        sock.sendall(b"PUT /continue HTTP/1.1\r\nHost: svc\r\nExpect: 100-continue\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
        interim = b""
        while b"\r\n\r\n" not in interim:  # a strict client: no body before the 100
            interim += sock.recv(1)
        assert interim.startswith(b"HTTP/1.1 100 ")
        sock.sendall(body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    lines, text = _head_and_body(answer)
    assert lines[0].startswith("HTTP/1.1 200")
    assert text == f"PUT /continue {len(body)} {hashlib.sha256(body).hexdigest()}".encode()
    seen = upstream.last("/continue")
    assert seen.complete
    made_up = {"accept", "accept-encoding", "user-agent", "content-type"} & {k.lower() for k, _ in seen.headers}
    assert not made_up, f"the upstream got headers the client never sent: {made_up}"


def test_repeated_and_hop_by_hop_headers(router: RouterUnderTest, upstream: Upstream, client: httpx.Client) -> None:
    response = client.get(f"{router.url('svc')}/headers", headers=[
        ("Connection", "keep-alive, X-Hop-In"), ("X-Hop-In", "secret"), ("Keep-Alive", "timeout=9"),
        ("TE", "trailers"), ("Proxy-Connection", "keep-alive"), ("X-Repeat", "a"), ("X-Repeat", "b"),
    ])
    assert response.status_code == 200 and response.text == "ok"
    assert response.headers.get_list("set-cookie") == ["a=1; Path=/", "b=2; Path=/"]
    assert response.headers["x-end-to-end"] == "kept"
    for hop in ("x-hop-out", "keep-alive"):
        assert hop not in response.headers, hop
    assert "content-type" not in response.headers, "nothing the upstream did not send is made up"

    seen = upstream.last("/headers")
    assert ", ".join(seen.values("X-Repeat")) == "a, b"
    for hop in ("X-Hop-In", "Keep-Alive", "TE", "Proxy-Connection"):
        assert seen.values(hop) == [], hop
    assert "X-Hop-In" not in ",".join(seen.values("Connection"))


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_an_upload_cut_short_never_reaches_the_upstream_complete(
        router: RouterUnderTest, upstream: Upstream, framing: str) -> None:
    path = f"/cut-upload-{framing}"
    part = b"b" * 300_000
    if framing == "chunked":
        request = f"POST {path} HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        request += b"%x\r\n%s\r\n" % (len(part), part)
    else:
        request = f"POST {path} HTTP/1.1\r\nHost: svc\r\nContent-Length: 1000000\r\n\r\n".encode() + part
    with socket.create_connection(("127.0.0.1", router.ports["svc"]), timeout=WAIT) as sock:
        sock.sendall(request)
        deadline = time.monotonic() + WAIT
        while not [r for r in upstream.received if r.path == path] and time.monotonic() < deadline:
            time.sleep(0.02)  # cut only once the upload is under way (a buffering proxy never starts it)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass
    record = router.records(path)
    assert record["status"] != 200 and "mid-upload" in str(record["error"])
    for seen in [r for r in upstream.received if r.path == path]:
        assert seen.done.wait(WAIT)
        assert not seen.complete, "the upstream must not see a complete-looking request"
