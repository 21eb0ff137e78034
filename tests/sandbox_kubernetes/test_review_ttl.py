"""A published run's sandbox on Kubernetes, kept for its pull request's review: its expiry annotation is set
anew (`Extendable.extend`), so `gc` leaves it alone until then."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from agentloop.sandbox.base import Extendable
from agentloop.sandbox.kubernetes.backend import KubernetesSandboxBackend

from .fake_apiserver import FakeApiServer

Backend = Callable[..., KubernetesSandboxBackend]


def test_extend_keeps_a_sandbox_past_its_ttl_until_the_new_expiry(backend: Backend, repo: Path,
                                                                   apiserver: FakeApiServer) -> None:
    short = backend(ttl=0.001)
    assert isinstance(short, Extendable)
    made = short.create("under-review", {"reviews": repo})
    until = time.time() + 24 * 3600

    kept = short.extend("under-review", until)

    assert kept is not None and abs(kept.expires_at - until) < 0.01 and kept.route_key == made.route_key
    assert short.gc() == []
    assert [s.name for s in short.list()] == ["under-review"]
    assert short.extend("no-such-sandbox", until) is None
