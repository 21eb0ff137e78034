"""The backend against a Kubernetes API server on loopback (fake_apiserver.py: the real REST protocol,
spoken to by the real `kubernetes` client): create, route, update on a new iteration, rollout failure,
logs, rm and TTL gc."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agentloop.errors import DeployError
from agentloop.sandbox.base import SandboxBackend
from agentloop.sandbox.kubernetes.backend import KubernetesSandboxBackend

from .fake_apiserver import FakeApiServer, ImageBehaviour

Backend = Callable[..., KubernetesSandboxBackend]
FORK = "reviews-v1-loop-fix-1"


def _image(server: FakeApiServer, name: str = FORK) -> str:
    deployment = server.get("deployments", name)
    assert deployment is not None
    return str(deployment["spec"]["template"]["spec"]["containers"][0]["image"])


def test_create_forks_the_service_and_routes_its_route_key(
        backend: Backend, apiserver: FakeApiServer, repo: Path, tmp_path: Path) -> None:
    sandboxes = backend()
    assert isinstance(sandboxes, SandboxBackend)
    info = sandboxes.create("fix-1", {"reviews": repo})

    assert info.backend == "kubernetes" and info.link == "https://fix-1.preview.example.com"
    assert info.routing_headers["baggage"] == f"sd-routing-key={info.route_key}"
    assert info.routing_headers["x-loop-route"] == info.route_key
    assert info.forks["reviews"].source == _image(apiserver)
    assert info.forks["reviews"].url == f"http://{FORK}.default.svc.cluster.local:9080"
    assert "reviews registry.local/reviews:" in (tmp_path / "built.txt").read_text(), "the build command ran"
    # The wait really polled: the fake reports the rollout available only from the second status read.
    status_reads = [p for m, p in apiserver.requests if p.endswith(f"/deployments/{FORK}/status")]
    assert len(status_reads) >= 2

    reviews = apiserver.get("virtualservices", "reviews")
    assert reviews is not None
    assert [r.get("name") for r in reviews["spec"]["http"]] == ["loop-fix-1", None]
    fork_pods = [p for p in apiserver.items("pods") if p["metadata"]["labels"].get("loop.dev/sandbox") == "fix-1"]
    assert len(fork_pods) == 1
    assert fork_pods[0]["metadata"]["labels"].get("app") != "reviews"
    assert sandboxes.get("fix-1") == info and [s.name for s in sandboxes.list()] == ["fix-1"]
    untouched = apiserver.get("deployments", "reviews-v1")
    assert untouched is not None and untouched["metadata"]["generation"] == 1, "baseline not modified"


def test_two_sandboxes_share_the_virtual_service_and_rm_takes_only_its_own(
        backend: Backend, apiserver: FakeApiServer, repo: Path) -> None:
    sandboxes = backend()
    sandboxes.create("fix-1", {"reviews": repo, "ratings": repo})
    sandboxes.create("fix-2", {"reviews": repo})
    reviews = apiserver.get("virtualservices", "reviews")
    assert reviews is not None
    assert [r.get("name") for r in reviews["spec"]["http"]] == ["loop-fix-2", "loop-fix-1", None]

    sandboxes.remove("fix-1")

    reviews = apiserver.get("virtualservices", "reviews")
    assert reviews is not None
    assert [r.get("name") for r in reviews["spec"]["http"]] == ["loop-fix-2", None]
    assert apiserver.get("virtualservices", "loop-ratings") is None, "the VirtualService loop made is gone"
    leftovers = [o["metadata"]["name"] for kind in ("deployments", "services", "pods")
                 for o in apiserver.items(kind) if o["metadata"].get("labels", {}).get("loop.dev/sandbox") == "fix-1"]
    assert leftovers == []
    assert [s.name for s in sandboxes.list()] == ["fix-2"]
    assert apiserver.get("deployments", "reviews-v1") is not None


def test_update_rolls_out_a_new_image_and_keeps_the_route_key(
        backend: Backend, apiserver: FakeApiServer, repo: Path) -> None:
    sandboxes = backend()
    first = sandboxes.create("fix-1", {"reviews": repo})
    generation = apiserver.get("deployments", FORK)["metadata"]["generation"]  # type: ignore[index]

    assert sandboxes.update("fix-1", {"reviews": repo}) == first, "nothing changed, nothing rolled out"
    assert apiserver.get("deployments", FORK)["metadata"]["generation"] == generation  # type: ignore[index]

    (repo / "services" / "reviews" / "app.py").write_text("print('fixed')\n")
    second = sandboxes.update("fix-1", {"reviews": repo})
    assert second.route_key == first.route_key
    assert second.forks["reviews"].source != first.forks["reviews"].source
    assert _image(apiserver) == second.forks["reviews"].source
    assert apiserver.get("deployments", FORK)["metadata"]["generation"] == generation + 1  # type: ignore[index]


def test_crash_looping_fork_reports_status_events_and_logs(
        backend: Backend, apiserver: FakeApiServer, repo: Path) -> None:
    sandboxes = backend(image="registry.local/{service}:broken")
    apiserver.images["registry.local/reviews:broken"] = ImageBehaviour(
        "crash", ["Traceback (most recent call last):", "KeyError: 'RATINGS_URL'"])
    with pytest.raises(DeployError) as caught:
        sandboxes.create("fix-1", {"reviews": repo})
    error = caught.value
    assert error.service == "reviews" and FORK in str(error)
    assert "CrashLoopBackOff" in error.log_tail
    assert "Back-off restarting failed container" in error.log_tail
    assert "KeyError: 'RATINGS_URL'" in error.log_tail


def test_rollout_that_never_becomes_available_times_out(
        backend: Backend, apiserver: FakeApiServer, repo: Path) -> None:
    sandboxes = backend(image="registry.local/{service}:big", rollout_timeout=0.3)
    apiserver.images["registry.local/reviews:big"] = ImageBehaviour("pending", [])
    with pytest.raises(DeployError, match="no available replica after") as caught:
        sandboxes.create("fix-1", {"reviews": repo})
    assert "FailedScheduling" in caught.value.log_tail and "phase Pending" in caught.value.log_tail


def test_failed_build_is_a_deploy_error_with_its_output(backend: Backend, repo: Path, apiserver: FakeApiServer) -> None:
    sandboxes = backend(build="echo 'no space left on device' >&2; exit 3")
    with pytest.raises(DeployError) as caught:
        sandboxes.create("fix-1", {"reviews": repo})
    assert caught.value.process_exit_code == 3 and "no space left" in caught.value.log_tail
    assert apiserver.get("deployments", FORK) is None, "nothing applied after a failed build"


def test_logs_of_a_fork_are_sliced_by_time(backend: Backend, apiserver: FakeApiServer, repo: Path) -> None:
    sandboxes = backend()
    sandboxes.create("fix-1", {"reviews": repo})
    pod = next(p["metadata"]["name"] for p in apiserver.items("pods")
               if p["metadata"]["labels"].get("loop.dev/sandbox") == "fix-1")
    now = time.time()
    apiserver.append_log(pod, "GET /reviews/0 500 KeyError", at=now + 10)
    apiserver.append_log(pod, "later line", at=now + 30)

    window = sandboxes.logs("fix-1", "reviews", since=now + 5, until=now + 20)
    assert window == "GET /reviews/0 500 KeyError\n"
    assert "listening" in sandboxes.logs("fix-1", "reviews")
    assert "listening" in sandboxes.logs("fix-1", "ratings"), "unforked services read the baseline's pods"


def test_gc_removes_sandboxes_past_their_ttl_and_stray_routes(
        make_config: Callable[..., object], backend: Backend, apiserver: FakeApiServer, repo: Path) -> None:
    backend(ttl=0.001).create("old", {"reviews": repo})
    keeper = backend()
    keeper.create("fresh", {"reviews": repo})
    # A route whose sandbox is gone (its objects deleted by hand) is an orphan too.
    reviews = apiserver.get("virtualservices", "reviews")
    assert reviews is not None
    reviews["spec"]["http"].insert(0, {"name": "loop-ghost", "route": [{"destination": {"host": "nowhere"}}]})
    apiserver.objects[("virtualservices", "default", "reviews", "")] = reviews

    assert keeper.gc() == ["old"]
    assert [s.name for s in keeper.list()] == ["fresh"]
    routes = [r.get("name") for r in apiserver.get("virtualservices", "reviews")["spec"]["http"]]  # type: ignore[index]
    assert routes == ["loop-fresh", None]


def test_baseline_is_checked_not_started(backend: Backend, apiserver: FakeApiServer) -> None:
    sandboxes = backend(service_map={"reviews": {"deployment": "reviews-v1", "service": "reviews"},
                                     "ratings": "ratings-v9"})
    with pytest.raises(DeployError, match="ratings"):
        sandboxes.baseline_up()  # there is no Deployment named ratings-v9
    sandboxes = backend(service_map={"reviews": {"deployment": "reviews-v1", "service": "reviews"},
                                     "ratings": {"deployment": "ratings-v1", "service": "ratings"}})
    assert sandboxes.baseline_up() is False
    status = sandboxes.baseline_status()
    assert status["services"]["reviews"]["deployment"] == "reviews-v1"  # type: ignore[index]
    sandboxes.baseline_down()
    assert apiserver.get("deployments", "reviews-v1") is not None
