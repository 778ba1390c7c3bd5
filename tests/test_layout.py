"""The package's shape: the core never imports the experiment tooling, and the layout table (docs/layout.md) is true."""

import re
from pathlib import Path

import carafe_ultra
from tests.import_graph import import_graph

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(carafe_ultra.__file__).parent
TOOLING = "carafe_ultra.experiments"
COMMAND_LINE = "carafe_ultra.__main__"  # the package's command line offers the tools: it is no part of the core


def test_the_core_never_imports_the_experiment_tooling():
    graph = import_graph(PACKAGE)
    core = {name for name in graph if not name.startswith(TOOLING) and name != COMMAND_LINE}
    assert {"carafe_ultra.functional", "carafe_ultra.integration", "carafe_ultra.backends"} <= core
    offending = {name: sorted(t for t in graph[name] if t.startswith(TOOLING)) for name in core}
    assert {name: targets for name, targets in offending.items() if targets} == {}


def test_the_import_graph_sees_relative_and_function_local_imports():
    graph = import_graph(PACKAGE)
    assert "carafe_ultra.backends.torch_backend" in graph["carafe_ultra.backends"]
    assert "carafe_ultra.experiments.data" in graph["carafe_ultra.experiments.ablation"]
    assert "carafe_ultra.experiments.report" in graph["carafe_ultra.experiments.ablation"]  # imported in a function


def test_every_path_in_the_layout_table_exists():
    page = (ROOT / "docs" / "layout.md").read_text()
    table = page.split("| path | what |", 1)[1].split("\n\n", 1)[0]
    paths = [p for row in re.findall(r"^\| (.+?) \|", table, re.M) for p in re.findall(r"`([^`]+)`", row)]
    assert len(paths) >= 10
    missing = [p for p in paths if not (ROOT / p).exists()]
    assert missing == []


def test_the_package_imports_without_cycles():
    # The core reads bottom up (_checks -> backends -> functional -> modules -> integration -> yamls): no module
    # imports one that imports it back, directly or through others.
    graph = import_graph(PACKAGE)
    done, on_path = set(), []

    def visit(name):
        if name in on_path:
            raise AssertionError(" -> ".join(on_path[on_path.index(name):] + [name]))
        if name not in done:
            on_path.append(name)
            for target in graph[name]:
                visit(target)
            on_path.pop()
            done.add(name)

    for name in graph:
        visit(name)
