"""Where the time went, from a run record's events, transcript and suite results (written here as a run
writes them): the model and the tests split out of their steps, a review's wait cut out, text escaped."""

from __future__ import annotations

import json
from pathlib import Path

from agentloop.pages.timeline import build_timeline, timeline_svg


def _write(run_dir: Path) -> None:
    events = [
        ("intake", 1, 100.0, 1.0), ("edit", 1, 101.0, 10.0), ("deploy", 1, 111.0, 4.0),
        ("validate", 1, 115.0, 20.0),
        ("publish", 1, 3735.0, 2.0),  # an hour later: the run waited for review
    ]
    lines = []
    for node, iteration, start, duration in events:
        lines.append({"time": start, "node": node, "event": "start", "iteration": iteration})
        lines.append({"time": start + duration, "node": node, "event": "end", "iteration": iteration,
                      "duration": duration, "outcome": "ok"})
    (run_dir / "events.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n{not json")
    transcript = [{"time": 101.5, "kind": "request", "iteration": 1}, {"time": 107.5, "kind": "response", "iteration": 1},
                  {"time": 108.0, "kind": "tool", "iteration": 1}]
    (run_dir / "transcript.jsonl").write_text("\n".join(json.dumps(line) for line in transcript))
    results = run_dir / "iterations" / "1" / "validate"
    results.mkdir(parents=True)
    (results / "results.json").write_text(json.dumps({"results": [{"name": "unit", "duration": 12.0}]}))


def test_the_model_tests_and_base_run_are_told_apart_and_a_review_wait_is_not_drawn(tmp_path: Path) -> None:
    _write(tmp_path)
    timeline = build_timeline(tmp_path)
    assert timeline.totals == {"setup": 1.0, "model": 6.0, "agent tools": 4.0, "service start": 4.0, "tests": 12.0,
                               "base run & comparison": 8.0, "publish": 2.0}
    assert timeline.paused == 3600.0
    assert timeline.span == 37.0  # the work, end to end, without the hour's wait
    svg = timeline_svg(timeline)
    assert "not drawn: 3600s paused" in svg and svg.count('class="segment"') == 7


def test_segment_labels_are_escaped(tmp_path: Path) -> None:
    line = {"time": 5.0, "node": "<script>x</script>", "event": "end", "iteration": 0, "duration": 1.0}
    (tmp_path / "events.jsonl").write_text(json.dumps(line))
    svg = timeline_svg(build_timeline(tmp_path))
    assert "<script" not in svg and "&lt;script&gt;x&lt;/script&gt;: 1.00s" in svg
