"""The package's own import graph, read with ast: which carafe_ultra module imports which (function-local imports too)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = "carafe_ultra"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE, *parts])


def _resolve(name: str, known: set[str]) -> str | None:
    """The longest prefix of a dotted name that is one of the package's modules."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(root: Path) -> dict[str, set[str]]:
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    known = set(files)
    graph: dict[str, set[str]] = {}
    for name, path in sorted(files.items()):
        is_package = path.name == "__init__.py"
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                candidates = [f"{stem}.{alias.name}" for alias in node.names]
            else:
                continue
            targets.update(t for t in (_resolve(c, known) for c in candidates) if t and t != name)
        graph[name] = targets
    return graph


def short(name: str) -> str:
    return name.removeprefix(PACKAGE + ".") if name != PACKAGE else "(package)"


def main(root: str) -> None:
    for source, targets in import_graph(Path(root)).items():
        print(f"{short(source):<28} -> {', '.join(sorted(short(t) for t in targets)) or '-'}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "carafe_ultra")
