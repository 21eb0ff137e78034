"""Where a run's time went, from its record: node start/end in `events.jsonl`, the model's request and
response times in `transcript.jsonl`, the suites' durations in each iteration's `validate/results.json`.

An edit is split into the model's time and the agent's tools; a validation into the sandbox's tests
and the rest (the base run at the base commit and the comparison with it); the baseline and deploy
are service start; intake is setup."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

from pydantic import BaseModel

CATEGORIES: dict[str, str] = {  # category -> colour, in the legend's order
    "setup": "#8c8c8c",
    "model": "#7b4fd6",
    "agent tools": "#b79cf0",
    "service start": "#e08a1e",
    "tests": "#2f8f46",
    "base run & comparison": "#7cc48c",
    "diagnose": "#c0504d",
    "publish": "#2f6fb5",
    "other": "#bbbbbb",
}
_NODE_CATEGORY = {"intake": "setup", "baseline": "service start", "deploy": "service start", "diagnose": "diagnose",
                  "publish": "publish", "report_failure": "publish"}


class Segment(BaseModel):
    label: str
    category: str
    start: float  # seconds since the run's first event
    duration: float
    iteration: int = 0


class Timeline(BaseModel):
    segments: list[Segment]
    totals: dict[str, float]
    span: float
    paused: float = 0.0  # seconds between steps longer than PAUSE (a review, a stop and resume): not drawn


PAUSE = 5.0


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    found = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue  # a line being written as we read
        if isinstance(item, dict):
            found.append(item)
    return found


def _model_seconds(transcript: list[dict[str, Any]]) -> dict[int, float]:
    """Per iteration: the time between each request to the model and its response."""
    seconds: dict[int, float] = {}
    asked: float | None = None
    for item in transcript:
        if item.get("kind") == "request":
            asked = float(item.get("time") or 0.0)
        elif item.get("kind") == "response" and asked is not None:
            iteration = int(item.get("iteration") or 0)
            seconds[iteration] = seconds.get(iteration, 0.0) + max(0.0, float(item.get("time") or 0.0) - asked)
            asked = None
    return seconds


def _test_seconds(run_dir: Path | None, iteration: int) -> float:
    if run_dir is None:
        return 0.0
    path = run_dir / "iterations" / str(iteration) / "validate" / "results.json"
    try:
        results = json.loads(path.read_text(encoding="utf-8")).get("results") or []
    except (OSError, ValueError, AttributeError):
        return 0.0
    return sum(float(r.get("duration") or 0.0) for r in results if isinstance(r, dict))


def _split(label: str, start: float, duration: float, iteration: int, first: tuple[str, float],
           rest: str) -> list[Segment]:
    """A node's span as two parts: `first` (category, seconds; capped at the span) then the rest."""
    head = min(duration, max(0.0, first[1]))
    parts = [Segment(label=f"{label}: {first[0]}", category=first[0], start=start, duration=head, iteration=iteration)]
    if duration - head > 0:
        parts.append(Segment(label=f"{label}: {rest}", category=rest, start=start + head, duration=duration - head,
                             iteration=iteration))
    return parts


def build_timeline(run_dir: Path | None, events: list[dict[str, Any]] | None = None) -> Timeline:
    """The run's segments in time order, the seconds per category and the whole span. Without `run_dir`
    (a run known only from the shared store's events) edits and validations are not split."""
    if events is None:
        events = _read_jsonl(run_dir / "events.jsonl") if run_dir is not None else []
    model = _model_seconds(_read_jsonl(run_dir / "transcript.jsonl")) if run_dir is not None else {}
    times = [float(e["time"]) for e in events if isinstance(e.get("time"), (int, float))]
    origin = min(times) if times else 0.0
    segments: list[Segment] = []
    for event in events:
        if event.get("event") != "end" or not isinstance(event.get("duration"), (int, float)):
            continue
        node, duration = str(event.get("node")), float(event["duration"])
        iteration = int(event.get("iteration") or 0)
        start = float(event.get("time") or origin) - duration - origin
        label = f"{node} #{iteration}" if iteration else node
        if run_dir is None and node in ("edit", "validate"):  # nothing to split them by: said so in the label
            category, parts = ("model", "model and tools") if node == "edit" else ("tests", "tests and base run")
            segments.append(Segment(label=f"{label} ({parts}, not split)", category=category, start=start,
                                    duration=duration, iteration=iteration))
        elif node == "edit":
            segments += _split(label, start, duration, iteration, ("model", model.get(iteration, 0.0)), "agent tools")
        elif node == "validate":
            tests = _test_seconds(run_dir, iteration)
            segments += _split(label, start, duration, iteration, ("tests", tests), "base run & comparison")
        else:
            segments.append(Segment(label=label, category=_NODE_CATEGORY.get(node, "other"), start=start,
                                    duration=duration, iteration=iteration))
    segments, paused = _without_pauses(segments)
    totals = {name: round(sum(s.duration for s in segments if s.category == name), 3) for name in CATEGORIES}
    span = max((s.start + s.duration for s in segments), default=0.0)
    return Timeline(segments=segments, totals={k: v for k, v in totals.items() if v > 0}, span=round(span, 3),
                    paused=round(paused, 3))


def _without_pauses(segments: list[Segment]) -> tuple[list[Segment], float]:
    """The segments with every wait between steps longer than PAUSE cut out (a run paused for review
    waits hours: drawn, it would leave the work a sliver); the seconds cut."""
    shifted, cut, end = [], 0.0, 0.0
    for segment in sorted(segments, key=lambda s: s.start):
        start = segment.start - cut
        if start - end > PAUSE:
            cut += start - end
            start = end
        shifted.append(segment.model_copy(update={"start": start}))
        end = max(end, start + segment.duration)
    return shifted, cut


def timeline_svg(timeline: Timeline, width: int = 760) -> str:
    """An inline SVG: one row per category, a bar per segment at its time; every text escaped."""
    rows = [name for name in CATEGORIES if name in timeline.totals] or ["setup"]
    left, row_height, top = 215, 22, 8
    scale = (width - left - 10) / timeline.span if timeline.span > 0 else 0.0
    height = top + row_height * len(rows) + 40
    parts = [(f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" width="{width}" height="{height}" '
              'role="img" aria-label="where the time went">')]
    for index, name in enumerate(rows):
        y = top + index * row_height
        total = timeline.totals.get(name, 0.0)
        parts.append(f'<text x="4" y="{y + 15}" font-size="12">{escape(name)} ({total:.1f}s)</text>')
    for segment in timeline.segments:
        if segment.category not in rows:
            continue
        y = top + rows.index(segment.category) * row_height
        x = left + segment.start * scale
        bar = max(1.0, segment.duration * scale)
        parts.append(f'<rect class="segment" x="{x:.1f}" y="{y + 3}" width="{bar:.1f}" height="{row_height - 6}" '
                     f'fill="{CATEGORIES[segment.category]}"><title>{escape(segment.label)}: '
                     f'{segment.duration:.2f}s</title></rect>')
    axis_y = top + row_height * len(rows) + 14
    parts.append(f'<text x="{left}" y="{axis_y}" font-size="11">0s</text>')
    parts.append(f'<text x="{width - 10}" y="{axis_y}" font-size="11" text-anchor="end">{timeline.span:.1f}s</text>')
    if timeline.paused:
        parts.append(f'<text x="{left}" y="{axis_y + 16}" font-size="11">not drawn: {timeline.paused:.0f}s paused '
                     'between steps (waiting for review, or stopped and resumed)</text>')
    parts.append("</svg>")
    return "".join(parts)
