"""The package's layers: imports only go down, and no module imports itself round a cycle.

Every ``import`` in every module counts, including those inside functions (a lazy import is still
a dependency a reader has to hold in their head)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pwfn_viz"

# Lowest first. A module may import from its own subpackage and from any lower rank.
# (cli.py reads its parser from cli_parser.py: one level, the parser first)
RANK = {"constants": 0, "registry": 0, "files": 0, "kernels": 1, "core": 2, "models": 3, "data": 3, "baselines": 4,
        "record": 4, "train": 5, "analysis": 6, "viz": 7, "widgets": 8, "cli_parser": 9, "cli": 9.5,
        "__main__": 10, "__init__": 10}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_package(name: str) -> bool:
    return (PACKAGE.parent / name.replace(".", "/") / "__init__.py").exists()


def exists(name: str) -> bool:
    return is_package(name) or (PACKAGE.parent / (name.replace(".", "/") + ".py")).exists()


def imports_of(path: Path) -> set[str]:
    """The pwfn_viz modules that ``path`` imports (``from X import y`` counts y when y is a module)."""
    name = module_name(path)
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("pwfn_viz"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                target = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("pwfn_viz"):
                target = node.module
            else:
                continue
            subs = [f"{target}.{a.name}" for a in node.names if exists(f"{target}.{a.name}")]
            found.update(subs if subs and len(subs) == len(node.names) else [target] + subs)
    found.discard(name)
    return found


def layer(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


GRAPH = {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_has_a_layer():
    assert {layer(m) for m in GRAPH} <= set(RANK), sorted({layer(m) for m in GRAPH} - set(RANK))


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_only_go_down(module):
    here = layer(module)
    upward = sorted(t for t in GRAPH[module] if layer(t) != here and RANK[layer(t)] >= RANK[here] and here != "__init__")
    assert not upward, f"{module} (layer {here}) imports {upward} from the same or a higher layer"


def test_no_import_cycles():
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(GRAPH.get(m, ())):
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t in GRAPH and not state.get(t):
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if not state.get(m):
            visit(m)


def test_the_root_stays_small():
    modules = [p.name for p in PACKAGE.glob("*.py")]
    assert len(modules) <= 8, modules


def test_the_checker_catches_a_cycle_and_an_upward_import():
    """The walk above finds what it is meant to find (a checker that cannot fail proves nothing)."""
    graph = {"pwfn_viz.core.a": {"pwfn_viz.train.b"}, "pwfn_viz.train.b": {"pwfn_viz.core.a"}}
    globals_backup = dict(GRAPH)
    try:
        GRAPH.clear()
        GRAPH.update(graph)
        with pytest.raises(AssertionError, match="cycle"):
            test_no_import_cycles()
        with pytest.raises(AssertionError, match="higher layer"):
            test_imports_only_go_down("pwfn_viz.core.a")
    finally:
        GRAPH.clear()
        GRAPH.update(globals_backup)
