"""The import graph keeps the layers pointing one way (docs/architecture.md).

``protocol`` (the pure contract) <- ``providers`` and ``redisio`` <- ``ingress`` and ``worker``
<- ``voicegrid`` (the command line); ``bench`` may use everything. Every import statement counts,
also those inside functions and under ``TYPE_CHECKING``: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

#: package -> the top-level packages of this project it may import
ALLOWED: dict[str, set[str]] = {
    "protocol": set(),
    "providers": {"protocol"},
    "redisio": {"protocol"},
    "ingress": {"protocol", "providers", "redisio"},
    "worker": {"protocol", "providers", "redisio"},
    "voicegrid": {"protocol", "providers", "redisio", "ingress", "worker"},
    "bench": {"protocol", "providers", "redisio", "ingress", "worker", "voicegrid"},
}
#: third-party modules that do network I/O: the contract package stays free of them
NETWORK_MODULES = {"websockets", "redis", "arq", "socket", "http", "urllib.request", "aiohttp"}


def _modules() -> Iterator[tuple[str, Path]]:
    for package in ALLOWED:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            yield ".".join(parts), path


def _imports(module: str, path: Path) -> set[str]:
    """Absolute names of every module ``module`` imports."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts)
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.add(target)
            # ``from pkg import submodule`` imports the submodule
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


MODULES = dict(_modules())
GRAPH = {
    name: {imp for imp in _imports(name, path) if imp in MODULES and imp != name}
    for name, path in MODULES.items()
}


def test_the_graph_sees_every_package() -> None:
    assert {name.split(".")[0] for name in MODULES} == set(ALLOWED)
    assert "worker.session" in GRAPH and "redisio.pumps" in GRAPH["worker.session"]


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_only_the_layers_below(package: str) -> None:
    wrong = sorted(
        f"{name} imports {imp}"
        for name, imports in GRAPH.items()
        if name.split(".")[0] == package
        for imp in imports
        if imp.split(".")[0] != package and imp.split(".")[0] not in ALLOWED[package]
    )
    assert not wrong, f"{package} may import only {sorted(ALLOWED[package])}: {wrong}"


def test_protocol_does_no_network_io() -> None:
    wrong = sorted(
        f"{name} imports {imp}"
        for name, path in MODULES.items()
        if name.split(".")[0] == "protocol"
        for imp in _imports(name, path)
        if imp in NETWORK_MODULES or imp.split(".")[0] in NETWORK_MODULES
    )
    assert not wrong, wrong


def _cycle_from(start: str) -> list[str] | None:
    """A path start -> ... -> start inside ``start``'s package, if there is one."""
    package = start.split(".")[0]
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        for nxt in GRAPH[node]:
            if nxt.split(".")[0] != package:
                continue
            # a submodule importing its own package's __init__ is how Python imports it anyway
            if start.startswith(nxt + ".") or nxt == start.rpartition(".")[0]:
                continue
            if nxt == start:
                return [*path, nxt]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def test_no_import_cycle_between_modules_of_one_package() -> None:
    cycles = [cycle for name in sorted(GRAPH) if (cycle := _cycle_from(name)) is not None]
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_a_new_cycle_is_caught() -> None:
    GRAPH["worker.runtime"].add("worker.session")
    GRAPH["worker.session"].add("worker.runtime")
    try:
        assert _cycle_from("worker.session") is not None
    finally:
        GRAPH["worker.session"].discard("worker.runtime")
    assert _cycle_from("worker.session") is None
