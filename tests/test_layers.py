"""The package's rooms and the direction of its imports, read from the source (not from a list kept by hand
elsewhere): entry points above the engine, the engine above the adapters, the adapters above the ground.
A new module lands in a room by its folder; a test here fails when an import points up or closes a cycle."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import agentloop

PACKAGE = Path(agentloop.__file__).parent

# Lower numbers are further down; a module may import its own rank or below, never above.
RANKS: dict[str, int] = {
    "ground": 0,
    "runs": 1, "agent": 1, "sandbox": 1, "forge": 1,
    "validation": 2,
    "evidence": 3,
    "loop": 4,
    "batch": 5, "app": 5, "doctor": 5, "init": 5, "cleanup": 5, "pages": 5,
    "cli": 6,
}
ROOMS = set(RANKS) - {"ground"}
GROUND_PACKAGES = {"confine"}


def _room(module: str) -> str:
    parts = module.split(".")
    if len(parts) < 2:
        return "ground"
    return parts[1] if parts[1] in ROOMS else "ground"


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every agentloop module `path` imports, at any depth of the file (lazy imports count too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name.startswith("agentloop.") or name == "agentloop":
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def test_every_room_is_ranked_and_every_top_level_package_is_a_room_or_ground() -> None:
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert packages - ROOMS - GROUND_PACKAGES == set(), "a new package needs a rank in RANKS"


def test_no_import_points_up() -> None:
    upward = []
    for module, imported in _graph().items():
        for target in imported:
            if target == "agentloop":
                continue
            if RANKS[_room(target)] > RANKS[_room(module)]:
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_rooms_import_each_other_without_cycles() -> None:
    edges: dict[str, set[str]] = defaultdict(set)
    for module, imported in _graph().items():
        for target in imported:
            if _room(target) != _room(module):
                edges[_room(module)].add(_room(target))
    assert _cycles(edges) == []


def test_modules_import_each_other_without_cycles_at_import_time() -> None:
    """Lazy imports inside functions may close a loop (they run later); top-level ones may not."""
    modules = _modules()
    edges = {name: _top_level_imports(path, modules) - {name} for name, path in modules.items()}
    assert _cycles(edges) == []


def _top_level_imports(path: Path, modules: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If):  # `if TYPE_CHECKING:` imports never run
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("agentloop"):
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                if name not in modules:
                    name = node.module
                while name and name not in modules:
                    name = name.rpartition(".")[0]
                if name:
                    found.add(name)
    return found


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return cycles


def test_modules_stay_small() -> None:
    large = {str(path.relative_to(PACKAGE)): n for path in PACKAGE.rglob("*.py")
             if (n := len(path.read_text(encoding="utf-8").splitlines())) > 400}
    assert large == {}
