"""`baseline_held`: what every command that needs the baseline for a while does with it (`loop fix`, `batch`,
`verify`, `doctor`). A baseline it started is stopped when it is done -- normally, on an error, on Ctrl-C --
and one it found up is left running for whoever started it."""

from __future__ import annotations

import pytest

from agentloop.errors import DeployError, LoopError
from agentloop.sandbox.base import baseline_held


class _Baseline:
    """Stands in for a backend: only the baseline's calls, counted."""

    def __init__(self, *, up: bool, start_fails: bool = False) -> None:
        self.up = up
        self.start_fails = start_fails
        self.stops = 0

    def baseline_up(self) -> bool:
        if self.start_fails:
            raise DeployError("web did not get healthy", service="web")
        started, self.up = not self.up, True
        return started

    def baseline_down(self) -> None:
        self.stops += 1
        self.up = False


def test_a_baseline_started_here_is_stopped_at_the_end() -> None:
    baseline = _Baseline(up=False)
    with baseline_held(baseline) as started:  # type: ignore[arg-type]
        assert started and baseline.up
    assert baseline.stops == 1 and not baseline.up


def test_a_baseline_found_up_is_left_running() -> None:
    baseline = _Baseline(up=True)
    with baseline_held(baseline) as started:  # type: ignore[arg-type]
        assert not started
    assert baseline.stops == 0 and baseline.up


@pytest.mark.parametrize("stop", [LoopError("suite failed"), KeyboardInterrupt()], ids=["error", "ctrl-c"])
def test_an_error_or_ctrl_c_still_stops_what_was_started_and_is_not_swallowed(stop: BaseException) -> None:
    baseline = _Baseline(up=False)
    with pytest.raises(type(stop)), baseline_held(baseline):  # type: ignore[arg-type]
        raise stop
    assert baseline.stops == 1


def test_a_baseline_something_else_still_needs_is_left_running() -> None:
    baseline = _Baseline(up=False)
    with baseline_held(baseline, stop_if=lambda: False):  # type: ignore[arg-type]
        pass
    assert baseline.stops == 0 and baseline.up


def test_a_failed_start_is_the_error_and_nothing_is_stopped() -> None:
    baseline = _Baseline(up=False, start_fails=True)
    with pytest.raises(DeployError, match="web did not get healthy"), baseline_held(baseline):  # type: ignore[arg-type]
        pytest.fail("the block must not run")
    assert baseline.stops == 0


def test_no_backend_means_nothing_to_hold() -> None:
    with baseline_held(None) as started:
        assert started is False
