"""Benchmark of local sandboxes, printed as ratios from one run.

1. Time and memory (RSS of every process started) to make a sandbox forking one service, versus
   starting a full copy of an N-service system (what a per-run environment would cost without forks).
2. The router's added latency (p50, p99) and its throughput versus calling the service directly, with
   one keep-alive client sending sequential GETs.

Aims: a sandbox costs about 1/N of a full copy; the router adds under 1 ms at p50.
Run: `.venv/bin/python bench/sandbox.py [--services N] [--requests R]`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from agentloop import git
from agentloop.config import parse_config
from agentloop.processes import ProcessRecord
from agentloop.sandbox.local.backend import LocalSandboxBackend

_APP = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes
    def log_message(self, *args):
        pass
    def do_GET(self):
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


def _system(root: Path, count: int) -> None:
    services = {}
    for index in range(count):
        name = f"svc{index}"
        (root / name).mkdir()
        (root / name / "app.py").write_text(_APP)
        services[name] = {"path": name, "run": f"{sys.executable} {name}/app.py {{port}}", "health": "/"}
    (root / "loop.yaml").write_text(yaml.safe_dump({"base_branch": "main", "services": services}))
    for args in (["init", "-q", "-b", "main"], ["add", "."], ["-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "x"]):
        subprocess.run(["git", *args], cwd=root, check=True)


def _group_rss_kib(pgid: int) -> int:
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:
                continue
            status = (entry / "status").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total


def _rss(records: list[ProcessRecord | None]) -> int:
    return sum(_group_rss_kib(record.pid) for record in records if record is not None)


def _latencies(client: httpx.Client, url: str, count: int) -> tuple[list[float], float]:
    for _ in range(50):
        client.get(url)
    samples = []
    began = time.perf_counter()
    for _ in range(count):
        start = time.perf_counter()
        client.get(url).raise_for_status()
        samples.append((time.perf_counter() - start) * 1000)
    return samples, count / (time.perf_counter() - began)


def _pct(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100)[q - 1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--services", type=int, default=4)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "system"
        root.mkdir()
        _system(root, args.services)
        config = parse_config(yaml.safe_load((root / "loop.yaml").read_text()), root / "loop.yaml")
        backend = LocalSandboxBackend(root, config, Path(tmp) / "state")

        began = time.perf_counter()
        backend.baseline_up()
        full_seconds = time.perf_counter() - began
        baseline = backend.registry.read().baseline
        assert baseline is not None
        full_rss = _rss([baseline.router, *baseline.services.values()])

        tree = git.add_worktree(git.open_repo(root), Path(tmp) / "fork", branch="bench", commit="main")
        began = time.perf_counter()
        info = backend.create("bench", {"svc0": tree})
        fork_seconds = time.perf_counter() - began
        sandbox = backend.registry.read().sandboxes["bench"]
        fork_rss = _rss(list(sandbox.forks.values()))

        with httpx.Client(trust_env=False) as client:
            direct, direct_rps = _latencies(client, baseline.services["svc0"].url + "/", args.requests)
            routed, routed_rps = _latencies(client, info.service_urls["svc0"] + "/", args.requests)
            with_key = client.headers.copy()
            client.headers.update(info.routing_headers)
            forked, forked_rps = _latencies(client, info.service_urls["svc0"] + "/", args.requests)
            client.headers = with_key
        backend.remove("bench")
        backend.baseline_down()
        git.remove_worktree(git.open_repo(root), tree)

    n = args.services
    print(f"system of N={n} services, {args.requests} sequential keep-alive GETs per path")
    print(f"sandbox (1 fork) / full copy: time {fork_seconds / full_seconds:.2f} ({fork_seconds:.3f}s / "
          f"{full_seconds:.3f}s), memory {fork_rss / full_rss:.2f} ({fork_rss} / {full_rss} KiB); 1/N = {1 / n:.2f}")
    for label, samples, rps in (("router -> baseline", routed, routed_rps), ("router -> fork (key)", forked, forked_rps)):
        print(f"{label}: added latency p50 {_pct(samples, 50) - _pct(direct, 50):+.3f} ms, "
              f"p99 {_pct(samples, 99) - _pct(direct, 99):+.3f} ms "
              f"(direct p50 {_pct(direct, 50):.3f} / p99 {_pct(direct, 99):.3f} ms); "
              f"throughput {rps / direct_rps:.2f} of direct ({rps:.0f} vs {direct_rps:.0f} req/s)")


if __name__ == "__main__":
    main()
