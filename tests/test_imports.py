"""The project's modules import one another without a circle, and dependencies point one way.

Read from the source (every ``import``, at module level or inside a function, since a deferred import that closes
a circle is still one), so the check costs no import of torch.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the repository's packages, by the name their modules import them with
PACKAGES = {"gcl_zoo": "gcl_zoo", "train": "gcl_zoo_train", "serve": "gcl_zoo_serve"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(path): path for folder in PACKAGES for path in (ROOT / folder).rglob("*.py")}


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports (relative imports resolved; ``from package import module`` counts
    the module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    installed = {value: key for key, value in PACKAGES.items()}
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            top, _, rest = target.partition(".")
            target = ".".join(filter(None, [installed.get(top, top), rest]))
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for child in graph[node]:
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in on_stack:
                low[node] = min(low[node], index[child])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imported(name, path, set(modules)) for name, path in modules.items()}


def test_no_import_circle_among_the_projects_modules():
    graph = import_graph()
    # packages import their own modules (``__init__`` re-exports); a circle through a package's __init__ counts too
    assert not circles(graph), f"import circles: {circles(graph)}"


def test_the_library_imports_neither_application():
    graph = import_graph()
    wrong = {name: sorted(m for m in targets if m.split(".")[0] in ("train", "serve"))
             for name, targets in graph.items() if name.startswith("gcl_zoo")}
    assert not any(wrong.values()), {k: v for k, v in wrong.items() if v}


def test_the_circle_finder_finds_a_deferred_import(tmp_path):
    assert circles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert circles({"a": {"b"}, "b": set()}) == []
