"""Rules of the house, checked on the code itself: no import cycle inside the packages, no module over
500 lines, no dataset named outside kdem_tf/datasets/, no library module importing a command line, no
private name used across modules. Each check reads the source with `ast` (nothing is imported)."""
from __future__ import annotations

import ast
import os
from typing import Dict, List, Set

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("kdem_tf", "serving", "pipeline")
MAX_LINES = 500
# Command-line modules (`python -m ...`): the library never imports them.
COMMAND_LINES = {"kdem_tf.evaluate", "kdem_tf.train", "kdem_tf.data.synthetic", "kdem_tf.visualize",
                 "kdem_tf.import_checkpoint"}


def modules() -> Dict[str, str]:
    """{dotted module name: path} of every module of the packages (a package under its own name)."""
    out = {}
    for package in PACKAGES:
        for root, _, names in os.walk(os.path.join(REPO, package)):
            for name in names:
                if name.endswith(".py"):
                    path = os.path.join(root, name)
                    dotted = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                    out[dotted[:-9] if dotted.endswith(".__init__") else dotted] = path
    return out


def imports_of(path: str, known: Dict[str, str]) -> Set[str]:
    """The project modules a file imports, at any depth (function-level imports count)."""
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m in known}


def graph() -> Dict[str, Set[str]]:
    """Module → imported modules, packages' __init__ left out as targets (importing a submodule runs its
    package, which is no dependency on the package's other modules)."""
    known = modules()
    inits = {m for m, p in known.items() if p.endswith("__init__.py")}
    return {m: imports_of(p, known) - inits - {m} for m, p in known.items()}


def cycles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    found: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_inside_the_packages():
    assert cycles(graph()) == []


def test_no_module_over_the_size_limit():
    long = {m: n for m, p in modules().items() if (n := sum(1 for _ in open(p))) > MAX_LINES}
    assert long == {}, f"modules over {MAX_LINES} lines: {long}"


def test_no_library_module_imports_a_command_line():
    edges = graph()
    offenders = {m: sorted(edges[m] & COMMAND_LINES) for m in edges
                 if m.startswith("kdem_tf") and m not in COMMAND_LINES and edges[m] & COMMAND_LINES}
    assert offenders == {}


def test_no_private_name_is_used_across_modules():
    known = modules()
    offenders = []
    for module, path in known.items():
        tree = ast.parse(open(path).read())
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                for alias in node.names:
                    target = f"{node.module}.{alias.name}"
                    if node.module in known and alias.name.startswith("_") and not alias.name.startswith("__"):
                        offenders.append(f"{module}: from {node.module} import {alias.name}")
                    if target in known:
                        aliases[alias.asname or alias.name] = target
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in known and alias.asname:
                        aliases[alias.asname] = alias.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                offenders.append(f"{module}: {node.value.id}.{node.attr}")
    assert offenders == []


def test_no_dataset_is_named_outside_the_datasets_package():
    """A string literal equal to a registered dataset's name (or a split name of one) is a branch on a
    dataset: it belongs in that dataset's module. Docstrings are prose and do not count."""
    from kdem_tf import datasets

    names = set(datasets.names()) - {"manifest"}  # "manifest" also names index manifests (manifest.json)
    offenders = []
    for module, path in modules().items():
        if module.startswith("kdem_tf.datasets"):
            continue
        tree = ast.parse(open(path).read())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                      and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings \
                    and node.value in names:
                offenders.append(f"{module}:{node.lineno}: {node.value!r}")
    assert offenders == []


@pytest.mark.parametrize("module", ["kdem_tf.config", "kdem_tf.architecture", "kdem_tf.artifacts",
                                    "kdem_tf.image_contract"])
def test_the_leaves_import_nothing_of_the_project_that_imports_them_back(module):
    edges = graph()
    reach, todo = set(), [module]
    while todo:
        for nxt in edges.get(todo.pop(), ()):
            if nxt not in reach:
                reach.add(nxt)
                todo.append(nxt)
    assert module not in reach
