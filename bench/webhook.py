"""Benchmark of `loop serve`'s webhook answer: latency and throughput at 50 deliveries in flight.

Starts a real `loop serve --workers 0` on loopback (the queue only stores jobs: nothing runs, so what is
measured is the answer -- verify the signature, record the delivery and queue its job in one
transaction, answer), once per queue backend (SQLite in a temporary directory; the PostgreSQL at
127.0.0.1:5432, in a schema of its own, dropped afterwards), and sends 1,000 signed `issues` deliveries
50 at a time: 70% new (each its own issue, so each queues a job), 20% redeliveries of one already sent,
10% with a bad signature. Prints p50, p99 and max latency as the client saw it, the throughput, the
server's CPU time per delivery, and checks the queue afterwards: one job per new delivery, none lost,
none twice.

Two clients are measured, each against a fresh server: httpx (one AsyncClient per connection: httpx's
shared pool slows down badly with 50 connections) and aiohttp. On a 2-core machine the client shares
the cores with the server, and a closed loop of 50 requests cannot answer faster than 50 / throughput:
httpx spends more CPU per request than the server does, so its figures are bounded by the client.

Aim: p99 <= 50 ms at 50 concurrent deliveries.
Run: `.venv/bin/python bench/webhook.py [--deliveries 1000] [--concurrency 50] [--backends sqlite postgres]
[--clients httpx aiohttp]`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import random
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from agentloop.app.queue import JobQueue

SECRET = "bench-webhook-secret"
PG = "postgresql://postgres@127.0.0.1:5432/test"


@dataclass(frozen=True)
class Delivery:
    delivery_id: str
    body: bytes
    signature: str
    kind: str  # "new", "again" or "bad"


def _payload(issue: int) -> bytes:
    return json.dumps({
        "action": "labeled", "label": {"name": "loop"},
        "issue": {"number": issue, "title": f"issue {issue}", "body": "total(2, 3) should be 5" * 20,
                  "labels": [{"name": "loop"}], "user": {"login": "octocat", "type": "User"}},
        "repository": {"full_name": "acme/shop", "name": "shop", "owner": {"login": "acme"}},
        "installation": {"id": 4242}, "sender": {"login": "octocat", "type": "User"},
    }).encode()


def _sign(body: bytes) -> str:
    return "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


def deliveries(count: int, seed: int = 7) -> list[Delivery]:
    rng = random.Random(seed)
    plan: list[Delivery] = []
    sent: list[Delivery] = []
    for index in range(count):
        roll = rng.random()
        if roll < 0.10:
            body = _payload(100_000 + index)
            plan.append(Delivery(str(uuid.UUID(int=rng.getrandbits(128))), body, "sha256=" + "0" * 64, "bad"))
        elif roll < 0.30 and sent:
            original = rng.choice(sent)
            plan.append(Delivery(original.delivery_id, original.body, original.signature, "again"))
        else:
            body = _payload(index + 1)
            fresh = Delivery(str(uuid.UUID(int=rng.getrandbits(128))), body, _sign(body), "new")
            plan.append(fresh)
            sent.append(fresh)
    return plan


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _start_server(queue: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    port = _free_port()
    env = {**os.environ, "GITHUB_APP_ID": "42", "GITHUB_APP_PRIVATE_KEY": key, "GITHUB_WEBHOOK_SECRET": SECRET,
           "GITHUB_API_URL": "http://127.0.0.1:9/api/v3"}
    env.pop("LOOP_TEST_CRASH_AT", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentloop.cli.main", "serve", "--port", str(port), "--queue", queue,
         "--workdir", str(workdir), "--workers", "0"],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=(workdir / "serve.log").open("wb"),
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"loop serve exited:\n{(workdir / 'serve.log').read_text()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("loop serve never answered /healthz")


Send = Callable[[Delivery], Awaitable[tuple[int, str]]]


async def _drive(url: str, plan: list[Delivery], concurrency: int, client: str) -> tuple[list[float], Counter[str], float]:
    """Send `plan` with `concurrency` connections; (latencies, answers counted, elapsed seconds)."""
    answers: Counter[str] = Counter()
    latencies: list[float] = []
    todo = iter(plan)
    senders, closers = await _senders(url, concurrency, client)

    async def one(send: Send) -> None:
        for delivery in todo:
            started = time.perf_counter()
            status, text = await send(delivery)
            latencies.append(time.perf_counter() - started)
            answer = json.loads(text) if text else {}
            answers[f"{status} {next(iter(answer), '')}"] += 1

    began = time.perf_counter()
    await asyncio.gather(*(one(send) for send in senders))
    elapsed = time.perf_counter() - began
    for close in closers:
        await close()
    return latencies, answers, elapsed


async def _senders(url: str, count: int, client: str) -> tuple[list[Send], list[Callable[[], Awaitable[None]]]]:
    """One connection per sender, all opened together (by a GET /healthz) just before the clock starts:
    one opened long before would be closed by the server's keep-alive timeout (5 s)."""
    senders: list[Send] = []
    closers: list[Callable[[], Awaitable[None]]] = []
    warm: list[Awaitable[object]] = []
    if client == "httpx":
        tls = ssl.create_default_context()  # unused on http://, but each client would build its own
        for _ in range(count):
            http = httpx.AsyncClient(base_url=url, timeout=30, verify=tls)

            async def send(d: Delivery, http: httpx.AsyncClient = http) -> tuple[int, str]:
                response = await http.post("/webhook", content=d.body, headers=_headers(d))
                return response.status_code, response.text

            senders.append(send)
            closers.append(http.aclose)
            warm.append(http.get("/healthz"))
    else:
        import aiohttp

        for _ in range(count):
            session = aiohttp.ClientSession(base_url=url, connector=aiohttp.TCPConnector(limit=1))

            async def send_aio(d: Delivery, session: aiohttp.ClientSession = session) -> tuple[int, str]:
                async with session.post("/webhook", data=d.body, headers=_headers(d)) as response:
                    return response.status, await response.text()

            async def warm_aio(session: aiohttp.ClientSession = session) -> None:
                async with session.get("/healthz") as response:
                    await response.read()

            senders.append(send_aio)
            closers.append(session.close)
            warm.append(warm_aio())
    await asyncio.gather(*warm)
    return senders, closers


def _headers(d: Delivery) -> dict[str, str]:
    return {"X-GitHub-Event": "issues", "X-GitHub-Delivery": d.delivery_id, "X-Hub-Signature-256": d.signature,
            "Content-Type": "application/json"}


def _percentile(sorted_values: list[float], fraction: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * fraction))]


def run_one(backend: str, client: str, plan: list[Delivery], concurrency: int) -> bool:
    root = Path(tempfile.mkdtemp(prefix="loop-bench-webhook-"))
    admin = None
    try:
        if backend == "sqlite":
            queue = str(root / "queue.sqlite3")
        else:
            import psycopg

            schema = f"loop_bench_{uuid.uuid4().hex[:10]}"
            admin = psycopg.connect(PG, connect_timeout=3, autocommit=True)
            admin.execute(f"CREATE SCHEMA {schema}")
            queue = f"{PG}?options=-csearch_path%3D{schema}"
        proc, url = _start_server(queue, root)
        try:
            cpu_before = _cpu_seconds(proc.pid)
            latencies, answers, elapsed = asyncio.run(_drive(url, plan, concurrency, client))
            cpu = _cpu_seconds(proc.pid) - cpu_before
        finally:
            proc.terminate()
            proc.wait(30)
        jobs = JobQueue.open(queue)
        try:
            queued = jobs.jobs(limit=len(plan) + 1)
        finally:
            jobs.close()
        return _report(backend, client, plan, latencies, answers, elapsed, cpu, queued)
    finally:
        if admin is not None:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")
            admin.close()
        shutil.rmtree(root, ignore_errors=True)


def _report(backend: str, client: str, plan: list[Delivery], latencies: list[float], answers: Counter[str],
            elapsed: float, cpu: float, queued: list[object]) -> bool:
    ms = sorted(value * 1000 for value in latencies)
    new = {d.delivery_id for d in plan if d.kind == "new"}
    jobs_by_delivery = Counter(getattr(job, "delivery_id", None) for job in queued)
    lost = len(new - set(jobs_by_delivery))
    twice = sum(1 for count in jobs_by_delivery.values() if count > 1)
    p99 = _percentile(ms, 0.99)
    print(f"{backend:8} {client:7} p50 {_percentile(ms, 0.50):6.1f} ms  p99 {p99:6.1f} ms  max {ms[-1]:6.1f} ms  "
          f"{len(plan) / elapsed:6.0f} deliveries/s  server CPU {cpu / len(plan) * 1000:.2f} ms/delivery  "
          f"jobs {len(queued)}/{len(new)} (lost {lost}, twice {twice})  p99 <= 50 ms: {'yes' if p99 <= 50 else 'NO'}")
    print(f"{'':17}answers: " + ", ".join(f"{key} x{count}" for key, count in sorted(answers.items())))
    return lost == 0 and twice == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgres"], choices=["sqlite", "postgres"])
    parser.add_argument("--clients", nargs="+", default=["httpx", "aiohttp"], choices=["httpx", "aiohttp"])
    args = parser.parse_args()
    plan = deliveries(args.deliveries)
    kinds = Counter(d.kind for d in plan)
    print(f"{args.deliveries} deliveries ({kinds['new']} new, {kinds['again']} redelivered, {kinds['bad']} badly "
          f"signed), {args.concurrency} at a time, on {os.cpu_count()} cores (load average before: "
          f"{os.getloadavg()[0]:.2f})")
    results = [run_one(backend, client, plan, args.concurrency) for backend in args.backends for client in args.clients]
    ok = all(results)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
