"""The package's import graph: modules, their lines, who imports whom, and the import circles.

Reads every module of src/tarpo with `ast` (imports inside functions count too: a function-local import
that closes a circle is still a circle, only a lazier one). Imports under `if TYPE_CHECKING:` do not count:
they never run, they only name types for annotations.

    python tools/import_graph.py            # modules by size, then the circles
    python tools/import_graph.py --dot      # Graphviz: python tools/import_graph.py --dot | dot -Tsvg > imports.svg
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "tarpo"


def module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.AST) -> bool:
    """`if TYPE_CHECKING:` (or `typing.TYPE_CHECKING`)."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def import_graph(src: Path = SRC) -> tuple[dict[str, set[str]], dict[str, int]]:
    """({module: modules of the package it imports}, {module: lines})."""
    files = {module_name(p, src): p for p in sorted((src / PACKAGE).rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets: set[str] = set()
        tree = ast.parse(path.read_text())
        typing_only = {id(n) for block in ast.walk(tree) if _is_type_checking(block) for b in block.body
                       for n in ast.walk(b)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                candidates = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            targets |= {c for c in candidates if c in files and c != name}
        graph[name] = targets
    return graph, {name: len(path.read_text().splitlines()) for name, path in files.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(max(1000, 10 * len(graph)))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dot", action="store_true", help="print the graph in Graphviz's dot language")
    parser.add_argument("--src", type=Path, default=SRC, help="the directory holding the package (default: src)")
    args = parser.parse_args()
    graph, lines = import_graph(args.src)
    if args.dot:
        print("digraph imports {\n  rankdir=LR;")
        for v in sorted(graph):
            for w in sorted(graph[v]):
                print(f'  "{v}" -> "{w}";')
        print("}")
        return
    print(f"{len(graph)} modules, {sum(lines.values())} lines; largest:")
    for name, n in sorted(lines.items(), key=lambda kv: -kv[1])[:8]:
        print(f"  {n:5d}  {name}  (imports {len(graph[name])} of the package's modules)")
    found = circles(graph)
    print(f"import circles: {len(found)}")
    for component in found:
        print("  " + " <-> ".join(component))


if __name__ == "__main__":
    main()
