"""The Python side of a repository: a `setup:` step that makes the project's own virtualenv from its
dependency files (requirements*.txt, pyproject.toml and its test extras or groups, lockfiles as cache
inputs), and the pytest suites, split into the ones that need running services and the rest.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from agentloop.init.draft import Noted, SetupDraft, SuiteDraft, one_line
from agentloop.init.reading import RepoReader

_TEST_FILE = re.compile(r"test_.*\.py|.*_test\.py")
# Tests under such a directory talk to running services; loop runs them against a sandbox.
_SERVICE_DIRS = frozenset({"integration", "integration_tests", "e2e", "api", "acceptance", "live", "smoke",
                           "end_to_end", "end2end", "system"})
_READS_SANDBOX = re.compile(r"LOOP_(?:URL_\w+|SANDBOX_URL|ROUTE_KEY|ROUTING_HEADERS)")
_READS_URL = re.compile(r"""(?:environ(?:\.get)?\s*[\[(]|getenv\s*\()\s*["']([A-Z][A-Z0-9_]*(?:URL|HOST|ENDPOINT))["']""")
_PYTEST = re.compile(r"(?<![\w-])pytest(?![\w-])", re.IGNORECASE)
_TEST_EXTRAS = ("test", "tests", "testing", "dev")
_LOCKS = ("uv.lock", "poetry.lock", "Pipfile.lock", "pdm.lock")
_VERSION = re.compile(r"(3\.\d{1,2})(?!\d)")
_MAX_LISTED = 20


@dataclass
class _Tests:
    roots: list[str] = field(default_factory=list)
    unit: list[str] = field(default_factory=list)  # test files that run without services
    live: list[str] = field(default_factory=list)  # dirs or files that need services
    reads: dict[str, str] = field(default_factory=dict)  # env variable -> a test file reading it
    origin: str = ""


def pytest_suites(reader: RepoReader, service_dirs: list[str], todo: list[str]) -> list[SuiteDraft]:
    tests = _find_tests(reader, service_dirs)
    if not tests.roots:
        return []
    suites: list[SuiteDraft] = []
    quoted = " ".join(shlex.quote(root) for root in tests.roots)
    if tests.unit and tests.live:
        ignores = " ".join(f"--ignore={shlex.quote(p)}" for p in tests.live[:_MAX_LISTED])
        suites.append(SuiteDraft("unit", Noted(f"python -m pytest -q {quoted} {ignores}",
                                               f"{tests.origin}; without the tests that need services")))
    elif tests.unit:
        suites.append(SuiteDraft("unit", Noted(f"python -m pytest -q {quoted}", tests.origin)))
    if tests.live:
        listed = " ".join(shlex.quote(p) for p in tests.live[:_MAX_LISTED])
        why = "under a directory named like integration/e2e/api, or reading service addresses"
        suites.append(SuiteDraft("integration", Noted(f"python -m pytest -q {listed}", f"{tests.origin}; {why}"),
                                 sandbox=Noted(True, "these tests talk to running services")))
    if len(tests.live) > _MAX_LISTED:
        todo.append(f"more than {_MAX_LISTED} test paths need services; only the first are in the integration suite")
    for variable, where in sorted(tests.reads.items())[:5]:
        todo.append(f"{where} reads {variable}: a sandbox suite gets LOOP_URL_<SERVICE> and LOOP_SANDBOX_URL; "
                    f"set {variable} under the suite's `env:` or read those")
    return suites


def _find_tests(reader: RepoReader, service_dirs: list[str]) -> _Tests:
    tests = _Tests()
    configured, origin = _testpaths(reader)
    if configured:
        tests.roots, tests.origin = configured, f"testpaths in {origin}"
    else:
        candidates = [posixpath.normpath(posixpath.join(base, name))
                      for base in [".", *service_dirs] for name in ("tests", "test")]
        tests.roots = [path for path in dict.fromkeys(candidates) if reader.is_dir(path)]
        tests.origin = "test directories: " + ", ".join(tests.roots) if tests.roots else ""
        if not tests.roots and any(_TEST_FILE.fullmatch(name) for name in reader.listdir(".")):
            tests.roots, tests.origin = ["."], "test files at the top of the repository"
    for root in tests.roots:
        for rel in reader.walk(root, depth=0 if root == "." else 6):
            name = posixpath.basename(rel)
            if not _TEST_FILE.fullmatch(name):
                continue
            live = _service_dir(root, rel)
            if live is not None:
                if live not in tests.live:
                    tests.live.append(live)
                continue
            head = reader.head(rel)
            reads = _READS_URL.findall(head)
            for variable in reads:
                tests.reads.setdefault(variable, rel)
            if _READS_SANDBOX.search(head) or reads:
                tests.live.append(rel)
            else:
                tests.unit.append(rel)
    if not tests.unit and not tests.live:
        tests.roots = []
    return tests


def _service_dir(root: str, rel: str) -> str | None:
    """The outermost directory named like integration/e2e/api holding the test file `rel`, if any."""
    if posixpath.basename(root).lower() in _SERVICE_DIRS:
        return root
    below = posixpath.relpath(rel, root).split("/")[:-1]
    for depth, part in enumerate(below):
        if part.lower() in _SERVICE_DIRS:
            return posixpath.normpath(posixpath.join(root, *below[: depth + 1]))
    return None


def _testpaths(reader: RepoReader) -> tuple[list[str], str]:
    """pytest's own `testpaths`, from the file pytest itself would read first."""
    for rel, section in (("pytest.ini", "pytest"), ("pyproject.toml", ""), ("tox.ini", "pytest"),
                         ("setup.cfg", "tool:pytest")):
        if not reader.is_file(rel):
            continue
        value: Any = None
        if rel == "pyproject.toml":
            options = _table(reader.toml(rel), "tool", "pytest", "ini_options")
            value = options.get("testpaths")
            if not options:
                continue
        else:
            parser = reader.ini(rel)
            if parser is None or not parser.has_section(section):
                continue
            value = parser.get(section, "testpaths", fallback=None)
        paths = value.split() if isinstance(value, str) else [str(v) for v in value] if isinstance(value, list) else []
        kept = [posixpath.normpath(p) for p in paths if reader.is_dir(posixpath.normpath(p))]
        return kept, rel
    return [], ""


def _table(data: Any, *keys: str) -> dict[str, Any]:
    for key in keys:
        data = data.get(key) if isinstance(data, dict) else None
    return data if isinstance(data, dict) else {}


def python_setup(
    reader: RepoReader, service_dirs: list[str], *, needs_pytest: bool, notes: list[str]
) -> tuple[SetupDraft, Noted] | None:
    """A setup step making the project's virtualenv, and the `path` entry for its bin directory; None for
    a repository with no Python dependencies and no pytest suite."""
    requirements: list[str] = []
    editable: list[str] = []
    described: list[str] = []
    groups: list[str] = []
    inputs: list[str] = []
    text = ""
    for base in dict.fromkeys([".", *service_dirs]):
        found = _requirements(reader, base)
        requirements += found
        text += "".join(reader.text(rel, "requirements file") or "" for rel in found)
        spec, project_inputs, extra_groups, declared = _project(reader, base)
        if spec is not None:
            editable.append(spec)
            described.append(project_inputs[0] if project_inputs else spec)
            inputs += project_inputs
            groups += extra_groups
            text += declared
        inputs += [posixpath.normpath(posixpath.join(base, lock)) for lock in _LOCKS
                   if reader.is_file(posixpath.normpath(posixpath.join(base, lock)))]
    if not requirements and not editable and not needs_pytest:
        return None
    venv, interpreter, why = _interpreter(reader)
    args = [f"-r {shlex.quote(rel)}" for rel in requirements] + [f"-e {shlex.quote(spec)}" for spec in editable]
    args += [f"--group {shlex.quote(group)}" for group in dict.fromkeys(groups)]
    added_pytest = needs_pytest and not _PYTEST.search(text)
    if added_pytest:
        args.append("pytest")
    steps = [f"{interpreter} -m venv {venv}"]
    if groups:  # dependency groups (PEP 735) need pip 25.1 or later
        steps.append(f"{venv}/bin/pip install -q 'pip>=25.1'")
    steps.append(f"{venv}/bin/pip install -q " + " ".join(args))
    sources = ", ".join([*requirements, *described]) or "the pytest suites"
    note = f"from {sources}; {why}" + ("; pytest added: no dependency file names it" if added_pytest else "")
    if any(lock.endswith("uv.lock") for lock in inputs):
        notes.append("uv.lock found: `uv sync --frozen` is the exact install, if uv is installed")
    if any(lock.endswith("poetry.lock") for lock in inputs):
        notes.append("poetry.lock found: pip installs the project's main dependencies, not poetry's groups")
    step = SetupDraft(run=Noted(" && ".join(steps), one_line(note, 300)),
                      inputs=list(dict.fromkeys([*requirements, *inputs])), creates=[venv])
    return step, Noted([f"{venv}/bin"], f"the virtualenv the setup step makes ({venv})")


def _requirements(reader: RepoReader, base: str) -> list[str]:
    """requirements.txt and its dev/test siblings (requirements-dev.txt, requirements/test.txt ...)."""
    chosen: list[str] = []
    for folder, pattern in ((base, re.compile(r"(?:(dev|test|tests|testing)[-_])?requirements"
                                              r"(?:[-_](dev|test|tests|testing|base|common))?\.txt")),
                            (posixpath.join(base, "requirements"), re.compile(r"(base|common|dev|test|tests|testing)\.txt"))):
        for name in reader.listdir(posixpath.normpath(folder)):
            rel = posixpath.normpath(posixpath.join(folder, name))
            if pattern.fullmatch(name) and reader.is_file(rel):
                chosen.append(rel)
    return chosen


def _project(reader: RepoReader, base: str) -> tuple[str | None, list[str], list[str], str]:
    """(the pip install spec of the project in `base`, its files, dependency groups, declared deps text)."""
    pyproject = posixpath.normpath(posixpath.join(base, "pyproject.toml"))
    setup_py = posixpath.normpath(posixpath.join(base, "setup.py"))
    data = reader.toml(pyproject) if reader.is_file(pyproject) else None
    project = _table(data, "project")
    installable = bool(project) or bool(_table(data, "tool", "poetry")) or reader.is_file(setup_py)
    if not installable:
        return None, [], [], ""
    extras = _table(data, "project", "optional-dependencies")
    chosen = [name for name in _TEST_EXTRAS if name in extras][:1]
    declared_groups = _table(data, "dependency-groups")
    groups = [name for name in _TEST_EXTRAS if name in declared_groups][:1]
    declared = repr([project.get("dependencies"), *(extras.get(n) for n in chosen),
                     *(declared_groups.get(n) for n in groups), _table(data, "tool", "poetry")])
    target = "." if base == "." else base
    spec = f"{target}[{','.join(chosen)}]" if chosen else target
    files = [path for path in (pyproject, setup_py, posixpath.normpath(posixpath.join(base, "setup.cfg")))
             if reader.is_file(path)]
    return spec, files, groups, declared


def _interpreter(reader: RepoReader) -> tuple[str, str, str]:
    """(the virtualenv's directory, the interpreter making it, why): an existing virtualenv of the
    repository names both; `.python-version` names the version."""
    for venv in (".venv", "venv"):
        config = f"{venv}/pyvenv.cfg"
        if reader.is_file(config):
            text = reader.text(config, "pyvenv.cfg") or ""
            version = re.search(r"^\s*version(?:_info)?\s*=\s*(\S+)", text, re.MULTILINE)
            match = _VERSION.match(version.group(1)) if version else None
            if match:
                return venv, f"python{match.group(1)}", f"like the existing {venv} (Python {match.group(1)})"
            return venv, "python3", f"like the existing {venv}"
    if reader.is_file(".python-version"):
        first = (reader.text(".python-version", ".python-version") or "").strip().splitlines()[:1]
        match = _VERSION.match(first[0].strip()) if first else None
        if match:
            return ".venv", f"python{match.group(1)}", f"Python {match.group(1)} from .python-version"
    return ".venv", "python3", "a new .venv"
