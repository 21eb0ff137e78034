"""Benchmark of `loop batch` (local executor) on the bundled shop example with the scripted agent.

For 1, 2, 4 and 8 runs of the same issue (each its own run, worktree, sandbox and forks on one
baseline), prints the wall time and the peak memory, both as ratios to one run. Memory is the sum of
the RSS of every process of the batch, sampled every 0.1 s: the `loop` processes, the baseline, the
router, the forks and the suites (every process whose working directory is under the benchmark's
temporary directory, plus the batch's descendants). Linux only (reads /proc).

Aims: memory grows by the forks alone, not by copies of the system; 4 runs take well under 4 times
one run's wall time.
Run: `.venv/bin/python bench/batch.py [--runs 1 2 4 8]`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from agentloop.cli.demo import examples_dir, make_demo_repo

_GIT_ENV = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost",
            "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@localhost"}


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _batch_processes(root_pid: int, under: Path) -> set[int]:
    found: set[int] = set()
    todo = [root_pid]
    while todo:  # the batch's descendants
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(_children(pid))
    for entry in Path("/proc").iterdir():  # and whatever runs in its directories (services are detached)
        if entry.name.isdigit():
            try:
                if Path(os.readlink(entry / "cwd")).is_relative_to(under):
                    found.add(int(entry.name))
            except OSError:
                continue
    return found


class _PeakMemory(threading.Thread):
    def __init__(self, pid: int, under: Path):
        super().__init__(daemon=True)
        self.pid, self.under, self.peak_kib = pid, under, 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.1):
            total = sum(_rss_kib(pid) for pid in _batch_processes(self.pid, self.under))
            self.peak_kib = max(self.peak_kib, total)


def _repo(root: Path, runs: int) -> tuple[Path, Path]:
    repo = make_demo_repo(root)
    issue = (repo / ".loop" / "issues" / "1.md").read_text()
    for number in range(2, runs + 1):
        (repo / ".loop" / "issues" / f"{number}.md").write_text(issue)
    for args in (["add", "-A"], ["commit", "-q", "--allow-empty", "-m", "the same issue, once per run"]):
        subprocess.run(["git", *args], cwd=repo, env={**os.environ, **_GIT_ENV}, check=True)
    cassettes = root / "cassettes"
    cassettes.mkdir()
    for number in range(1, runs + 1):
        shutil.copy(examples_dir() / "cassettes" / "shop-issue-1.json", cassettes / f"{number}.json")
    return repo, cassettes


def measure(runs: int) -> tuple[float, int, dict[str, object]]:
    with tempfile.TemporaryDirectory(prefix="loop-bench-batch-") as tmp:
        root = Path(tmp)
        repo, cassettes = _repo(root, runs)
        command = [sys.executable, "-m", "agentloop.cli.main", "batch", *map(str, range(1, runs + 1)),
                   "--parallel", str(runs), "--model", f"replay:{cassettes}/{{issue}}.json", "--repo", str(repo)]
        started = time.perf_counter()
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        sampler = _PeakMemory(proc.pid, root)
        sampler.start()
        _, errors = proc.communicate(timeout=900)
        wall = time.perf_counter() - started
        sampler.done.set()
        sampler.join()
        record = json.loads(next((repo / ".loop" / "runs").glob("batch-*.json")).read_text())
        if proc.returncode != 0:
            raise SystemExit(f"batch of {runs} failed ({proc.returncode}):\n{errors}")
        return wall, sampler.peak_kib, record["totals"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, nargs="+", default=[1, 2, 4, 8])
    args = parser.parse_args()
    results = {runs: measure(runs) for runs in args.runs}
    one_wall, one_peak, _ = results[min(results)]
    print(f"{'runs':>4}  {'wall':>7}  {'x one':>6}  {'peak MiB':>8}  {'x one':>6}  {'speed-up':>8}  resolved")
    for runs, (wall, peak, totals) in results.items():
        print(f"{runs:>4}  {wall:6.1f}s  {wall / one_wall:6.2f}  {peak / 1024:8.0f}  {peak / one_peak:6.2f}  "
              f"{totals['speedup']:>8}  {totals['resolved']}/{runs}")


if __name__ == "__main__":
    main()
