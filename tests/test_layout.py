"""The package's layout keeps its promises: no import circle, and frappe imported by the adapter alone.

Every import counts: at the top, inside a function, or only for type checking.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "rq_orchestrator"
FRAPPE_MODULES = {"rq_orchestrator.frappe_adapter"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module (or package) that ``path`` imports, wherever the import stands."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py") if "tests" not in p.parts}
    edges = {}
    for name, path in modules.items():
        edges[name] = {m for m in imported_modules(path) if m in modules and m != name}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in edges:
        if node not in index:
            visit(node)
    return found


def test_the_checker_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circle_in_the_package():
    edges = graph()
    assert len(edges) > 30  # the whole package was read
    assert cycles(edges) == []


def test_only_the_adapter_imports_frappe():
    importers = {
        module_name(p) for p in PACKAGE.rglob("*.py")
        if "tests" not in p.parts and any(m == "frappe" or m.startswith("frappe.") for m in imported_modules(p))
    }
    assert importers == FRAPPE_MODULES


def test_lower_rooms_never_import_higher_ones():
    """policy and infra know nothing of the master, the worker or the surfaces; the worker nothing of the master."""
    forbidden = {
        "policy": ("master", "worker", "cli", "commands", "frappe_adapter"),
        "infra": ("policy", "master", "worker", "cli", "commands", "frappe_adapter"),
        "worker": ("master", "cli", "commands", "frappe_adapter"),
        "master": ("cli", "commands", "frappe_adapter"),
    }
    wrong = []
    for name, targets in graph().items():
        room = name.split(".")[1] if name.count(".") else ""
        for target in targets:
            target_room = target.split(".")[1] if target.count(".") else ""
            if target_room in forbidden.get(room, ()):
                wrong.append(f"{name} -> {target}")
    assert wrong == []
