"""A Kubernetes API server on loopback, speaking the real REST protocol for the kinds `loop` uses.

The Kubernetes API server itself cannot run here, so the tests point the real `kubernetes` Python
client at this HTTP server instead. It keeps objects in memory and implements, for apps/v1
Deployments (and their /status), v1 Services, Pods (and pods/log), Events and Istio
VirtualServices, batch/v1 Jobs and Secrets: list (with labelSelector and fieldSelector), get, create,
replace (with resourceVersion conflicts), JSON merge / strategic merge patch (as merge patch), delete
and deletecollection, with the real Status error bodies; an object whose metadata.namespace is not the
request's is refused, as the real server refuses it.

Jobs run for real when a `job_runner` is set: the container's command and args become a local
process with the Job's env and its envFrom Secrets; the Job's status follows the exit code. Deleting a
Job with Foreground propagation sends the process SIGTERM (as the kubelet does) and the Job object goes
away once the process has exited.

A tiny "controller" plays the kubelet: every Deployment write replaces its pods with new ones whose
state follows the image's scripted behaviour (`ImageBehaviour`): running, crash-looping or stuck
pending. A healthy Deployment reports available replicas only from its second status read, so the
client's rollout wait really polls.
"""

from __future__ import annotations

import base64
import copy
import itertools
import json
import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

Obj = dict[str, Any]

_PATH = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
    r"/namespaces/(?P<ns>[^/]+)/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?(?:/(?P<sub>status|log))?$"
)
_KINDS = {"deployments": "Deployment", "services": "Service", "pods": "Pod", "events": "Event",
          "virtualservices": "VirtualService", "jobs": "Job", "secrets": "Secret"}
# Plays a Job's container: given the command line and the environment the kubelet would give it, start it
JobRunner = Callable[[list[str], dict[str, str]], "subprocess.Popen[bytes]"]


@dataclass
class ImageBehaviour:
    """What pods running an image do: `running`, `crash` (CrashLoopBackOff) or `pending`."""

    state: str = "running"
    log_lines: list[str] = field(default_factory=lambda: ["listening"])


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def _label_match(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _field_match(obj: Obj, selector: str) -> bool:
    for term in filter(None, selector.split(",")):
        path, value = term.replace("==", "=").split("=", 1)
        current: Any = obj
        for part in path.split("."):
            current = current.get(part) if isinstance(current, dict) else None
        if str(current if current is not None else "") != value:
            return False
    return True


class FakeApiServer:
    """Start with `start()`, stop with `stop()`; `url` is the `Configuration.host` to use."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str, str], Obj] = {}
        self.images: dict[str, ImageBehaviour] = {}
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.RLock()
        self._versions = itertools.count(1)
        self._status_reads: dict[str, int] = {}
        self.job_runner: JobRunner | None = None
        self._job_processes: dict[tuple[str, str], subprocess.Popen[bytes]] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeApiServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        for proc in list(self._job_processes.values()):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # -- direct access for tests --------------------------------------------------------------
    def put(self, obj: Obj) -> Obj:
        """Store an object as if `kubectl apply` had made it (the baseline)."""
        plural = obj["kind"].lower() + "s"
        ns = obj["metadata"].get("namespace", "default")
        return self._create(plural, ns, copy.deepcopy(obj))

    def items(self, plural: str, namespace: str = "default") -> list[Obj]:
        with self._lock:
            return [copy.deepcopy(o) for (p, ns, _, _), o in sorted(self.objects.items())
                    if p == plural and ns == namespace]

    def get(self, plural: str, name: str, namespace: str = "default") -> Obj | None:
        with self._lock:
            for (p, ns, n, _), obj in self.objects.items():
                if (p, ns, n) == (plural, namespace, name):
                    return copy.deepcopy(obj)
        return None

    # -- storage -------------------------------------------------------------------------------
    def _key(self, plural: str, ns: str, name: str) -> tuple[str, str, str, str]:
        return (plural, ns, name, "")

    @staticmethod
    def _same_namespace(ns: str, obj: Obj) -> None:
        if obj.get("metadata", {}).get("namespace", ns) != ns:  # as the real server checks it
            raise _ApiError(400, "BadRequest", "the namespace of the provided object does not match the "
                                               "namespace sent on the request")

    def _create(self, plural: str, ns: str, obj: Obj) -> Obj:
        with self._lock:
            self._same_namespace(ns, obj)
            meta = obj.setdefault("metadata", {})
            if "generateName" in meta and "name" not in meta:
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            key = self._key(plural, ns, meta["name"])
            if key in self.objects:
                raise _ApiError(409, "AlreadyExists", f'{plural} "{meta["name"]}" already exists')
            meta.update(namespace=ns, uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1,
                        resourceVersion=str(next(self._versions)))
            obj.setdefault("kind", _KINDS.get(plural, plural))
            self.objects[key] = obj
            if plural == "deployments":
                self._reconcile(ns, obj)
            if plural == "jobs":
                obj["status"] = {"active": 1, "startTime": _now()}
                if self.job_runner is not None:
                    self._run_job(ns, obj)
            return copy.deepcopy(obj)

    def _write(self, plural: str, ns: str, name: str, obj: Obj, *, check_version: bool) -> Obj:
        with self._lock:
            key = self._key(plural, ns, name)
            old = self.objects.get(key)
            if old is None:
                raise _ApiError(404, "NotFound", f'{plural} "{name}" not found')
            self._same_namespace(ns, obj)
            sent = obj.get("metadata", {}).get("resourceVersion")
            if check_version and sent and sent != old["metadata"]["resourceVersion"]:
                raise _ApiError(409, "Conflict", f'Operation cannot be fulfilled on {plural} "{name}": '
                                "the object has been modified; please apply your changes to the latest version")
            meta = obj.setdefault("metadata", {})
            for kept in ("uid", "creationTimestamp", "namespace", "name"):
                meta[kept] = old["metadata"][kept]
            spec_changed = obj.get("spec") != old.get("spec")
            meta["generation"] = old["metadata"]["generation"] + (1 if spec_changed else 0)
            meta["resourceVersion"] = str(next(self._versions))
            if "status" in old and "status" not in obj:
                obj["status"] = old["status"]
            self.objects[key] = obj
            if plural == "deployments" and spec_changed:
                self._reconcile(ns, obj)
            return copy.deepcopy(obj)

    def _delete(self, plural: str, ns: str, name: str, options: Obj | None = None) -> None:
        options = options or {}
        proc = self._job_processes.get((ns, name)) if plural == "jobs" else None
        if proc is not None and proc.poll() is None and options.get("propagationPolicy") == "Foreground":
            # the Job stays, marked for deletion, until its pod's process has exited
            with self._lock:
                self.objects[self._key(plural, ns, name)]["metadata"]["deletionTimestamp"] = _now()
            proc.send_signal(signal.SIGKILL if str(options.get("gracePeriodSeconds")) == "0" else signal.SIGTERM)
            return
        with self._lock:
            obj = self.objects.pop(self._key(plural, ns, name), None)
            if obj is None:
                raise _ApiError(404, "NotFound", f'{plural} "{name}" not found')
            if plural == "deployments":
                for pod in self.items("pods", ns):
                    if pod["metadata"].get("labels", {}).get("fake/owner") == name:
                        self.objects.pop(self._key("pods", ns, pod["metadata"]["name"]), None)

    # -- the Job controller and kubelet --------------------------------------------------------
    def _run_job(self, ns: str, job: Obj) -> None:
        assert self.job_runner is not None
        container = job["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e["value"] for e in container.get("env", [])}
        for source in container.get("envFrom", []):
            secret = self.get("secrets", source["secretRef"]["name"], ns)
            if secret is None:
                raise _ApiError(422, "Invalid", f'secret "{source["secretRef"]["name"]}" not found')
            env |= {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
            env |= secret.get("stringData", {})
        proc = self.job_runner([*container.get("command", []), *container.get("args", [])], env)
        name = job["metadata"]["name"]
        self._job_processes[(ns, name)] = proc
        threading.Thread(target=self._finish_job, args=(ns, name, proc), daemon=True).start()

    def _finish_job(self, ns: str, name: str, proc: subprocess.Popen[bytes]) -> None:
        code = proc.wait()
        with self._lock:
            job = self.objects.get(self._key("jobs", ns, name))
            if job is None:
                return
            if "deletionTimestamp" in job["metadata"]:
                self.objects.pop(self._key("jobs", ns, name))
                return
            job["status"] = {"succeeded": 1} if code == 0 else {"failed": 1}
            job["status"]["completionTime"] = _now()
            job["metadata"]["resourceVersion"] = str(next(self._versions))

    # -- the controller -----------------------------------------------------------------------
    def _reconcile(self, ns: str, deployment: Obj) -> None:
        name = deployment["metadata"]["name"]
        for pod in self.items("pods", ns):
            if pod["metadata"].get("labels", {}).get("fake/owner") == name:
                self.objects.pop(self._key("pods", ns, pod["metadata"]["name"]), None)
        template = deployment["spec"]["template"]
        container = template["spec"]["containers"][0]
        behaviour = self.images.get(container.get("image", ""), ImageBehaviour())
        replicas = deployment["spec"].get("replicas", 1)
        for _ in range(replicas):
            self._start_pod(ns, name, template, behaviour)
        available = replicas if behaviour.state == "running" else 0
        deployment["status"] = {
            "observedGeneration": deployment["metadata"]["generation"], "replicas": replicas,
            "updatedReplicas": replicas, "readyReplicas": available, "availableReplicas": available,
            "unavailableReplicas": replicas - available,
        }
        self._status_reads[f"{ns}/{name}"] = 0

    def _start_pod(self, ns: str, owner: str, template: Obj, behaviour: ImageBehaviour) -> None:
        pod_name = f"{owner}-{uuid.uuid4().hex[:5]}"
        container = template["spec"]["containers"][0]
        status: Obj = {"phase": "Running"}
        if behaviour.state == "crash":
            status["containerStatuses"] = [{
                "name": container["name"], "image": container.get("image", ""), "ready": False,
                "restartCount": 3, "imageID": "", "image_id": "",
                "state": {"waiting": {"reason": "CrashLoopBackOff",
                                      "message": "back-off 40s restarting failed container"}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}},
            }]
            event = ("BackOff", "Warning", "Back-off restarting failed container")
        elif behaviour.state == "pending":
            status = {"phase": "Pending"}
            event = ("FailedScheduling", "Warning", "0/1 nodes are available: 1 Insufficient cpu.")
        else:
            status["containerStatuses"] = [{"name": container["name"], "image": container.get("image", ""),
                                            "ready": True, "restartCount": 0, "imageID": "",
                                            "state": {"running": {"startedAt": _now()}}}]
            event = ("Started", "Normal", f"Started container {container['name']}")
        labels = {**template.get("metadata", {}).get("labels", {}), "fake/owner": owner}
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod_name, "labels": labels},
               "spec": copy.deepcopy(template["spec"]), "status": status,
               "fake/log": [(time.time(), line) for line in behaviour.log_lines]}
        self._create("pods", ns, pod)
        reason, kind, message = event
        self._create("events", ns, {
            "apiVersion": "v1", "kind": "Event", "metadata": {"name": f"{pod_name}.{uuid.uuid4().hex[:6]}"},
            "involvedObject": {"kind": "Pod", "name": pod_name, "namespace": ns},
            "reason": reason, "type": kind, "message": message, "count": 1,
        })

    def append_log(self, pod: str, line: str, at: float, namespace: str = "default") -> None:
        with self._lock:
            self.objects[self._key("pods", namespace, pod)]["fake/log"].append((at, line))

    def _status_read(self, ns: str, obj: Obj) -> Obj:
        """Report a healthy Deployment as available only from its second read: a real rollout wait."""
        key = f"{ns}/{obj['metadata']['name']}"
        reads = self._status_reads.get(key, 1)
        self._status_reads[key] = reads + 1
        if reads == 0 and obj.get("status", {}).get("availableReplicas"):
            obj = copy.deepcopy(obj)
            obj["status"].update(availableReplicas=0, readyReplicas=0, unavailableReplicas=obj["status"]["replicas"])
        return obj

    # -- HTTP ----------------------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in two writes; no 40 ms delayed-ACK stalls

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _serve(self, method: str) -> None:
                url = urlparse(self.path)
                server.requests.append((method, url.path))
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                try:
                    code, payload = server._route(method, url.path, query, body)
                except _ApiError as exc:
                    code, payload = exc.code, exc.status()
                if isinstance(payload, str):
                    data, kind = payload.encode(), "text/plain"
                else:
                    data, kind = json.dumps(payload).encode(), "application/json"
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def do_PUT(self) -> None:
                self._serve("PUT")

            def do_PATCH(self) -> None:
                self._serve("PATCH")

            def do_DELETE(self) -> None:
                self._serve("DELETE")

        return Handler

    def _route(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Obj | str]:
        match = _PATH.match(path)
        if not match or match["plural"] not in _KINDS:
            raise _ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        ns, plural, name, sub = match["ns"], match["plural"], match["name"], match["sub"]
        api_version = "v1" if match["core"] else f"{match['group']}/{match['version']}"
        with self._lock:
            if name is None:
                return self._collection(method, plural, ns, api_version, query, body)
            if method == "GET" and sub == "log":
                return 200, self._log(ns, name, query)
            if method == "GET":
                obj = self._public(self._must(plural, ns, name))
                return 200, self._status_read(ns, obj) if sub == "status" else obj
            if method == "PUT":
                return 200, self._public(self._write(plural, ns, name, body, check_version=True))
            if method == "PATCH":
                merged = _merge_patch(self._must(plural, ns, name), body)
                return 200, self._public(self._write(plural, ns, name, merged, check_version=False))
            if method == "DELETE":
                gone = self._public(self._must(plural, ns, name))
                self._delete(plural, ns, name, {**query, **(body or {})})  # delete options come either way
                if plural in ("services", "virtualservices"):  # as the real server: the deleted object
                    return 200, gone
                return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
        raise _ApiError(405, "MethodNotAllowed", f"{method} not allowed on {path}")

    def _collection(self, method: str, plural: str, ns: str, api_version: str, query: dict[str, str],
                    body: Any) -> tuple[int, Obj]:
        if method == "POST":
            return 201, self._public(self._create(plural, ns, body))
        selected = [o for o in self.items(plural, ns)
                    if _label_match(o["metadata"].get("labels", {}), query.get("labelSelector", ""))
                    and _field_match(o, query.get("fieldSelector", ""))]
        if method == "DELETE":
            for obj in selected:
                self._delete(plural, ns, obj["metadata"]["name"])
        items = [self._public(o) for o in selected]
        kind = _KINDS[plural] + "List"
        return 200, {"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": "1"}, "items": items}

    def _must(self, plural: str, ns: str, name: str) -> Obj:
        obj = self.get(plural, name, ns)
        if obj is None:
            raise _ApiError(404, "NotFound", f'{plural} "{name}" not found')
        return obj

    @staticmethod
    def _public(obj: Obj) -> Obj:
        return {k: v for k, v in obj.items() if not k.startswith("fake/")}

    def _log(self, ns: str, name: str, query: dict[str, str]) -> str:
        lines: list[tuple[float, str]] = self._must("pods", ns, name)["fake/log"]
        if "sinceSeconds" in query:
            lines = [(t, line) for t, line in lines if t >= time.time() - int(query["sinceSeconds"])]
        if "tailLines" in query:
            lines = lines[-int(query["tailLines"]):]
        if query.get("timestamps") == "true":
            return "".join(
                f"{datetime.fromtimestamp(t, UTC).strftime('%Y-%m-%dT%H:%M:%S.%fZ')} {line}\n"
                for t, line in lines)
        return "".join(f"{line}\n" for _, line in lines)


class _ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def status(self) -> Obj:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "code": self.code}


def running(server: FakeApiServer) -> Iterator[FakeApiServer]:
    """Generator for a pytest fixture: the server runs for the test and is always stopped."""
    server.start()
    try:
        yield server
    finally:
        server.stop()
