"""Runs the bundled shop for the example's own tests: real service processes on loopback, started
the way `loop.yaml` starts them (`python -m services.<name>.app`, cwd = the shop's root), each on a
port the OS picks (`--port 0`; the port is read back from the service's first log line)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SHOP = Path(__file__).resolve().parents[2] / "examples" / "shop"
CASSETTE = SHOP.parent / "cassettes" / "shop-issue-1.json"
_LISTENING = re.compile(r"listening on (http://[\d.]+:\d+)")
_START_TIMEOUT = 15.0


@dataclass
class RunningShop:
    root: Path
    urls: dict[str, str] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    def log(self, service: str) -> str:
        return self.logs[service].read_text(encoding="utf-8")

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.urls["gateway"] + path, data=data, method=method, headers=headers or {}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())


def copy_shop(destination: Path) -> Path:
    shutil.copytree(SHOP, destination, ignore=shutil.ignore_patterns("data", "__pycache__", ".pytest_cache", ".venv"))
    return destination


def clean_env(**extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith(("LOOP_", "PYTEST_"))}
    env.update(extra)
    return env


@contextmanager
def _service(root: Path, name: str, env: dict[str, str], log_dir: Path) -> Iterator[tuple[str, Path]]:
    log_path = log_dir / f"{name}.log"
    with log_path.open("w", encoding="utf-8") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}.app", "--port", "0"],
            cwd=root,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        deadline = time.monotonic() + _START_TIMEOUT
        while not (match := _LISTENING.search(log_path.read_text(encoding="utf-8"))):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start:\n{log_path.read_text(encoding='utf-8')}")
            time.sleep(0.05)
        yield match.group(1), log_path
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@contextmanager
def running_shop(root: Path, log_dir: Path, inventory_db: Path | None = None) -> Iterator[RunningShop]:
    """inventory, then orders, then gateway, each pointed straight at the others (no router)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    shop = RunningShop(root)
    with ExitStack() as stack:
        inventory_env = clean_env(**({"LOOP_DB_PATH": str(inventory_db)} if inventory_db else {}))
        shop.urls["inventory"], shop.logs["inventory"] = stack.enter_context(
            _service(root, "inventory", inventory_env, log_dir)
        )
        orders_env = clean_env(INVENTORY_URL=shop.urls["inventory"])
        shop.urls["orders"], shop.logs["orders"] = stack.enter_context(
            _service(root, "orders", orders_env, log_dir)
        )
        gateway_env = clean_env(ORDERS_URL=shop.urls["orders"], INVENTORY_URL=shop.urls["inventory"])
        shop.urls["gateway"], shop.logs["gateway"] = stack.enter_context(
            _service(root, "gateway", gateway_env, log_dir)
        )
        yield shop


def run_pytest(root: Path, target: str, **env: str) -> subprocess.CompletedProcess[str]:
    # The shop's tests need bare pytest; loading this venv's plugins (langsmith, anyio...) costs seconds.
    env.setdefault("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", target],
        cwd=root,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=600,  # the whole suite; a loaded CI disk makes each SQLite commit slow
        check=False,
    )


def cassette_iterations() -> list[list[dict[str, Any]]]:
    """The cassette's responses grouped into edit turns: each turn ends with an `end_turn` response."""
    responses = json.loads(CASSETTE.read_text(encoding="utf-8"))["responses"]
    iterations: list[list[dict[str, Any]]] = [[]]
    for response in responses:
        iterations[-1].append(response)
        if response["stop_reason"] == "end_turn":
            iterations.append([])
    return [turn for turn in iterations if turn]


def apply_edits(root: Path, turn: list[dict[str, Any]]) -> list[str]:
    """Apply a turn's text-editor calls as the editor tool would; return the bash commands it ran."""
    commands: list[str] = []
    for block in (b for response in turn for b in response["content"] if b["type"] == "tool_use"):
        arguments = block["input"]
        if block["name"] == "bash":
            commands.append(arguments["command"])
            continue
        target = root / arguments["path"]
        command = arguments["command"]
        if command == "view":
            assert target.exists(), f"the cassette views {arguments['path']}, which does not exist"
        elif command == "create":
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(arguments["file_text"], encoding="utf-8")
        elif command == "str_replace":
            text = target.read_text(encoding="utf-8")
            assert text.count(arguments["old_str"]) == 1, f"old_str is not unique in {arguments['path']}"
            target.write_text(text.replace(arguments["old_str"], arguments["new_str"]), encoding="utf-8")
        elif command == "insert":
            lines = target.read_text(encoding="utf-8").splitlines(keepends=True)
            lines.insert(arguments["insert_line"], arguments["insert_text"])
            target.write_text("".join(lines), encoding="utf-8")
        else:
            raise AssertionError(f"unknown editor command {command!r}")
    return commands
