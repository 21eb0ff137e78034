"""The files that run `loop serve` somewhere else: the Dockerfile's `serve` target and deploy/'s Kubernetes objects.

No Docker engine or cluster runs here, so they are checked statically: the Dockerfile parsed into stages, the
manifests read into the kubernetes client's models (a misspelt field would not survive the round trip), and
what they run checked against the real `loop` command line and the real server."""

from __future__ import annotations

import json
import re
import shlex
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from forge.fake_github import start_asgi, stop_asgi
from kubernetes.client import ApiClient

from agentloop.app.queue import JobQueue
from agentloop.app.server import AppSettings, create_app
from agentloop.cli.main import main
from agentloop.cli.serve import build_app

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
MODELS = {"Deployment": "V1Deployment", "Service": "V1Service", "Secret": "V1Secret", "ConfigMap": "V1ConfigMap"}


# -- the Dockerfile ---------------------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def last(self, keyword: str) -> str | None:
        found = [args for word, args in self.instructions if word == keyword]
        return found[-1] if found else None


def dockerfile_stages(text: str) -> list[Stage]:
    """Instructions by stage: comments dropped, `\\` continuations joined."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("#") and not pending:
            continue
        line = raw.rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        if (pending + line).strip():
            logical.append(pending + line)
        pending = ""
    stages: list[Stage] = []
    for line in logical:
        word, _, args = line.strip().partition(" ")
        if word.upper() == "FROM":
            parts = args.split()
            stages.append(Stage(base=parts[0], name=parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else ""))
        else:
            stages[-1].instructions.append((word.upper(), args.strip()))
    return stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return dockerfile_stages((ROOT / "Dockerfile").read_text(encoding="utf-8"))


def _inherited(stages: list[Stage], stage: Stage, keyword: str) -> str | None:
    """An instruction's value in `stage` or the stage it is built FROM (CMD, USER and EXPOSE carry over)."""
    by_name = {s.name: s for s in stages if s.name}
    current: Stage | None = stage
    while current is not None:
        value = current.last(keyword)
        if value is not None:
            return value
        current = by_name.get(current.base)
    return None


def exec_form(value: str | None) -> list[str]:
    assert value is not None
    parsed = json.loads(value)
    assert isinstance(parsed, list) and all(isinstance(part, str) for part in parsed), value
    return parsed


def loop_help(args: list[str], capfd: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`loop ARGS --help` through the real entry point: an unknown option or command fails even with --help."""
    sigterm = signal.getsignal(signal.SIGTERM)
    capfd.readouterr()
    try:
        with pytest.raises(SystemExit) as exited:
            main([*args, "--help"])
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    out, err = capfd.readouterr()
    return int(exited.value.code or 0), out + err


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_serve_target_runs_loop_serve_on_the_port_its_health_check_asks(
        stages: list[Stage], capfd: pytest.CaptureFixture[str]) -> None:
    serve = next(s for s in stages if s.name == "serve")
    cmd = exec_form(_inherited(stages, serve, "CMD"))
    assert cmd[:2] == ["loop", "serve"]
    assert option(cmd, "--host") == "0.0.0.0"  # reachable from outside the container
    port = option(cmd, "--port")
    code, output = loop_help(cmd[1:], capfd)
    assert code == 0 and "--port" in output, output
    healthcheck = serve.last("HEALTHCHECK")
    assert healthcheck is not None
    urls = re.findall(r"https?://[^'\" ]+", healthcheck)
    assert urls == [f"http://127.0.0.1:{port}/healthz"], healthcheck
    assert (_inherited(stages, serve, "EXPOSE") or "").split() == [port]
    assert _inherited(stages, serve, "USER") == "loop"


def test_the_health_check_command_passes_against_a_live_server_and_fails_without_one(
        stages: list[Stage], tmp_path: Path) -> None:
    healthcheck = next(s for s in stages if s.name == "serve").last("HEALTHCHECK") or ""
    command = exec_form(healthcheck.split(" CMD ", 1)[1].strip())
    assert command[0] == "python"
    server, thread, url = start_asgi(create_app(AppSettings(webhook_secret="s", max_body=1024),
                                                JobQueue.open(tmp_path / "queue.sqlite3")))
    try:
        live = [sys.executable, *[part.replace("http://127.0.0.1:8080", url) for part in command[1:]]]
        assert subprocess.run(live, capture_output=True, timeout=60, check=False).returncode == 0
    finally:
        stop_asgi(server, thread)
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    dead = [sys.executable, *[part.replace("http://127.0.0.1:8080", closed) for part in command[1:]]]
    assert subprocess.run(dead, capture_output=True, timeout=60, check=False).returncode != 0


def test_the_default_target_is_still_the_job_image(stages: list[Stage]) -> None:
    """`docker build .` (no --target) must keep building what `loop batch --executor kubernetes` runs."""
    default = stages[-1]
    assert default.name != "serve" and default.last("HEALTHCHECK") is None
    assert exec_form(_inherited(stages, default, "CMD")) == ["loop", "--help"]
    assert "serve" in {s.base for s in stages} | {s.name for s in stages}


# -- deploy/ -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def objects() -> dict[str, dict[str, Any]]:
    """Every object under deploy/, by kind, each read into the kubernetes client's model and back unchanged."""
    client = ApiClient()
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(DEPLOY.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            kind = document["kind"]
            model = client._ApiClient__deserialize(document, MODELS[kind])  # type: ignore[attr-defined]
            assert client.sanitize_for_serialization(model) == document, f"{path}: {kind} has unknown fields"
            assert kind not in found, f"two {kind} objects"
            found[kind] = document
    assert set(found) == set(MODELS)
    return found


def container(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    containers = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


def test_the_deployment_runs_a_real_loop_serve_command(
        objects: dict[str, dict[str, Any]], capfd: pytest.CaptureFixture[str]) -> None:
    spec = container(objects)
    args = [*spec["command"], *spec["args"]]
    assert args[:2] == ["loop", "serve"]
    code, output = loop_help(args[1:], capfd)
    assert code == 0, output
    assert option(args, "--queue") == "$(LOOP_DATABASE_URL)"  # the PostgreSQL queue, filled in from the Secret
    assert option(args, "--host") == "0.0.0.0"


def test_probes_and_service_reach_the_port_loop_serve_listens_on(
        objects: dict[str, dict[str, Any]], stages: list[Stage]) -> None:
    spec = container(objects)
    port = int(option(spec["args"], "--port"))
    ports = {p["name"]: p["containerPort"] for p in spec["ports"]}
    assert ports == {"http": port}
    serve_cmd = exec_form(_inherited(stages, next(s for s in stages if s.name == "serve"), "CMD"))
    assert int(option(serve_cmd, "--port")) == port  # the image and the Deployment agree
    for probe in ("readinessProbe", "livenessProbe"):
        assert spec[probe]["httpGet"]["path"] == "/healthz"
        assert spec[probe]["httpGet"]["port"] in ("http", port)
    service = objects["Service"]["spec"]
    assert [p["targetPort"] for p in service["ports"]] in (["http"], [port])
    labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= labels.items()
    assert objects["Deployment"]["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_secrets_come_from_the_secret_whose_template_holds_no_values(objects: dict[str, dict[str, Any]]) -> None:
    spec = container(objects)
    secret = objects["Secret"]
    assert {"secretRef": {"name": secret["metadata"]["name"]}} in spec["envFrom"]
    assert {"configMapRef": {"name": objects["ConfigMap"]["metadata"]["name"]}} in spec["envFrom"]
    values = secret.get("stringData", {}) | secret.get("data", {})
    assert "LOOP_DATABASE_URL" in values
    assert all(value == "" for value in values.values()), "the template must carry no secret"
    assert not any(name in objects["ConfigMap"]["data"] for name in values)  # secrets stay out of the ConfigMap


def test_what_the_secret_and_configmap_hold_is_all_loop_serve_needs(
        objects: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    filled = {"GITHUB_APP_ID": "123", "GITHUB_APP_PRIVATE_KEY": key, "GITHUB_WEBHOOK_SECRET": "w" * 40}
    env = {**objects["ConfigMap"]["data"], **{name: filled.get(name, "x") for name in objects["Secret"]["stringData"]}}
    assert build_app(env=env, workers=0, workdir=tmp_path / "serve") is not None
    state = next(m["mountPath"] for m in container(objects)["volumeMounts"])
    assert objects["ConfigMap"]["data"]["LOOP_STATE_DIR"] == state  # clones go to the writable volume


def test_the_pod_runs_as_the_images_unprivileged_user_with_resources(objects: dict[str, dict[str, Any]]) -> None:
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    spec = container(objects)
    assert spec["securityContext"]["allowPrivilegeEscalation"] is False
    assert spec["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= set(spec["resources"]["requests"]) and "memory" in spec["resources"]["limits"]
    assert shlex.join(spec["command"]) == "loop"
