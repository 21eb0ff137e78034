"""`loop verify`'s reading of `report.md`: every number in it (the verdict word, iterations, each suite's
and plan's counts and time, the headline's totals, diff stats, tokens, cost) taken again from the
hashed artifacts (JUnit XML, plan step records, diff.patch) and `evidence.json`, naming each that
disagrees. The report is rendered from the evidence, so an untouched run has none."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agentloop.evidence.counts import recount, rerun_passes
from agentloop.evidence.report import MARKS
from agentloop.verdict_words import WORDS, count_summary, verdict_word

_WORD = "|".join(WORDS)
_HEADLINE = re.compile(rf"^## (?P<mark>.+?)(?: after (?P<iterations>\d+) iterations?)? — (?P<word>{_WORD}): (?P<summary>.*)$")
_ROW = re.compile(r"^\| (?P<mark>\S+) \| (?P<kind>suite|plan) `(?P<name>.*)` \| (?P<passed>\d+) \| (?P<failed>\d+) \| "
                  r"(?P<skipped>\d+) \| (?P<flaky>\d+) \| (?P<time>[\d.]+)s \|$")
_LAST = re.compile(rf"^(?:Fixed in iteration (?P<fixed>\d+) by changing|Iteration (?P<other>\d+) \((?:{_WORD})\) changed)")
_FOOTER = re.compile(r"· (?P<files>\d+) files, \+(?P<insertions>\d+)/-(?P<deletions>\d+) · "
                     r"(?P<tokens>\d+) tokens, \$(?P<cost>[\d.]+) ·")
_NUMBER = re.compile(r"(\d+) (suites?|plans?|passed|failed|error|skipped|flaky)\b")


def check_report(run_dir: Path, evidence: Mapping[str, Any], diff: Mapping[str, Any]) -> list[str]:
    """What `report.md` says that the artifacts and the evidence do not (`diff`: diff.patch's stats)."""
    path = run_dir / "report.md"
    if not path.is_file() or "word" not in (evidence.get("verdict") or {}):
        return []  # named as a missing artifact already; or a record from before reports could be checked
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    verdict = evidence.get("verdict") or {}
    iteration = int(verdict.get("iteration") or len(evidence.get("iterations") or []) or 1)
    results, unreadable = _derived_results(run_dir, iteration, verdict.get("results") or [])
    problems = [*_check_headline(lines, evidence, results), *_check_table(lines, results),
                *_check_word(verdict, results), *_check_footer(lines, evidence, diff)]
    return unreadable + [f"report.md: {problem}" for problem in problems]


def _derived_results(run_dir: Path, iteration: int,
                     recorded: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Each result with its counts from its artifact (`source` names where they came from)."""
    results, problems = [], []
    for result in recorded:
        flaky = list(result.get("flaky") or [])
        # the table shows failed and error together, so which of the two a flaky test was does not matter
        counted = recount(run_dir, iteration, result, ["failed"] * len(flaky))
        if counted is None:
            if result.get("counted_from"):
                problems.append(f"{result['counted_from']}: missing or unreadable, so the counts of "
                                f"{result.get('kind', 'suite')} `{result.get('name')}` cannot be taken again")
            counts, source = dict(result.get("counts") or {}), "evidence.json"
        else:
            counts, source = counted
        passes = rerun_passes(run_dir, iteration, result) if flaky else None
        if flaky and passes is not None and passes < len(flaky):
            problems.append(f"{_label(result)}: {len(flaky)} flaky tests in evidence.json, but only {passes} "
                            "passed when its failures were rerun")
        results.append({**result, "counts": counts, "source": source})
    return results, problems


def _check_headline(lines: Sequence[str], evidence: Mapping[str, Any], results: Sequence[Mapping[str, Any]]) -> list[str]:
    match = _HEADLINE.match(lines[0]) if lines else None
    if match is None:
        return ["the headline (first line) is not one loop writes, so its verdict and counts cannot be checked"]
    word = verdict_word(evidence.get("verdict"))
    iterations = len(evidence.get("iterations") or [])
    problems = _differ("the verdict word", match["word"], word, "evidence.json")
    if match["word"] == word and match["mark"] != MARKS[word]:
        problems += _differ("the headline's mark", match["mark"], MARKS[word], "evidence.json")
    shown = int(match["iterations"]) if match["iterations"] else 0
    problems += _differ("iterations", shown, iterations, "evidence.json")
    expected = dict(_numbers(count_summary(results)))
    for key, value in _numbers(match["summary"]):
        problems += _differ(f"the headline's {key}", value, expected.pop(key, 0), _sources(results))
    problems += [f"the headline leaves out {value} {key} (per {_sources(results)})" for key, value in expected.items()]
    for line in lines:
        last = _LAST.match(line)
        if last:
            problems += _differ("the last iteration", int(last["fixed"] or last["other"]), iterations, "evidence.json")
    return problems


def _check_table(lines: Sequence[str], results: Sequence[Mapping[str, Any]]) -> list[str]:
    rows = [match for match in map(_ROW.match, lines) if match]
    problems = []
    if len(rows) != len(results):
        problems.append(f"the table has {len(rows)} suites and plans, evidence.json {len(results)}")
    for row, result in zip(rows, results, strict=False):
        label = _label(result)
        if (row["kind"], row["name"]) != (result.get("kind", "suite"), result.get("name")):
            problems.append(f"the table's row {row['kind']} `{row['name']}` stands where evidence.json has {label}")
            continue
        counts = result["counts"]
        expected = {"passed": counts.get("passed", 0), "failed": counts.get("failed", 0) + counts.get("error", 0),
                    "skipped": counts.get("skipped", 0), "flaky": counts.get("flaky", 0)}
        for key, value in expected.items():
            problems += _differ(f"{label} {key}", int(row[key]), value, result["source"])
        problems += _differ(f"{label} time", row["time"], f"{float(result.get('duration') or 0):.1f}", "evidence.json")
        failing = expected["failed"] or result.get("error")
        mark = "⏭" if not result.get("ran", True) else "❌" if failing else "✅"
        problems += _differ(f"{label} mark", row["mark"], mark, result["source"])
    return problems


def _check_word(verdict: Mapping[str, Any], results: Sequence[Mapping[str, Any]]) -> list[str]:
    """The word may be stricter than the artifacts require (`require: all`, a change that needs review),
    never kinder: "passed" or "unproven" with failures the base run does not explain is named."""
    word = verdict_word(verdict)
    if word == "failed":
        return []
    comparison = verdict.get("comparison") or {}
    problems = []
    for result in results:
        failing = result["counts"].get("failed", 0) + result["counts"].get("error", 0)
        explained = sum(1 for name in comparison.get("preexisting") or [] if name.startswith(f"{result.get('name')}: "))
        if failing > explained:
            problems.append(f"the verdict is {word!r}, but {result['source']} has {failing} failing tests in "
                            f"{_label(result)} and only {explained} fail in the base run too")
        if result.get("ran", True) and result.get("error"):
            problems.append(f"the verdict is {word!r}, but {_label(result)} did not run to a result")
    if comparison.get("regressions"):
        problems.append(f"the verdict is {word!r}, but evidence.json lists regressions")
    if word == "passed" and not comparison.get("fixed"):
        problems.append("the verdict is 'passed', but no test fails in the base run and passes in the sandbox")
    return problems


def _check_footer(lines: Sequence[str], evidence: Mapping[str, Any], diff: Mapping[str, Any]) -> list[str]:
    match = next((m for m in map(_FOOTER.search, lines) if m), None)
    if match is None:
        return ["the footer (diff stats, tokens, cost) is not one loop writes"]
    usage = evidence.get("usage") or {}
    tokens = sum(int(usage.get(key) or 0) for key in
                 ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"))
    problems = []
    for key in ("files", "insertions", "deletions"):
        problems += _differ(f"diff {key}", int(match[key]), int(diff.get("files_changed" if key == "files" else key, 0)),
                            "diff.patch")
    problems += _differ("tokens", int(match["tokens"]), tokens, "evidence.json")
    problems += _differ("cost", match["cost"], f"{float(usage.get('cost_usd') or 0.0):.2f}", "evidence.json")
    return problems


def _differ(what: str, shown: object, derived: object, where: str) -> list[str]:
    return [] if shown == derived else [f"{what} is {shown} in the report, {derived} in {where}"]


def _numbers(summary: str) -> list[tuple[str, int]]:
    return [(key.rstrip("s") if key.startswith(("suite", "plan")) else key, int(value))
            for value, key in _NUMBER.findall(summary)]


def _label(result: Mapping[str, Any]) -> str:
    return f"{result.get('kind', 'suite')} `{result.get('name')}`"


def _sources(results: Sequence[Mapping[str, Any]]) -> str:
    return ", ".join(sorted({str(r["source"]) for r in results})) or "evidence.json"
