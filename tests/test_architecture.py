"""The shape of the code: a learner a newcomer reads in one sitting, callbacks that use the learner's public
attributes only, no import cycle (function-level imports included), and a docstring on everything public."""
import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest

from snapfit.core import EVENTS

PACKAGE = Path(__file__).resolve().parent.parent / "snapfit"


def modules():
    """``{dotted name: path}`` of every module of the package (``__init__`` files name their package)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imported(name, path, known):
    """The snapfit modules `name` imports anywhere in its file (function-level imports too), plus the packages
    those live in (importing ``a.b.c`` runs ``a.b``'s ``__init__``), except the root package and the packages
    `name` itself lives in (they are imported before it)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            while t and t != "snapfit":  # the module and the packages above it
                found.add(t)
                t = t.rpartition(".")[0]
    return found - own - {name}


def test_learner_reads_in_one_sitting():
    n = len((PACKAGE / "learner.py").read_text().splitlines())
    assert n <= 350, f"snapfit/learner.py has {n} lines"


def test_nothing_outside_the_learner_touches_its_private_attributes():
    reach = re.compile(r"\b(learn|learner)\._[a-zA-Z]")
    hits = [f"{p.relative_to(PACKAGE.parent)}:{i}: {line.strip()}" for p in PACKAGE.rglob("*.py")
            if p.name != "learner.py" for i, line in enumerate(p.read_text().splitlines(), 1) if reach.search(line)]
    assert hits == []


def test_no_import_cycles():
    known = modules()
    graph = {name: imported(name, path, known) for name, path in known.items() if name != "snapfit"}
    done, stack = set(), []

    def visit(node):
        if node in stack:
            cycle = stack[stack.index(node):] + [node]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if node in done or node not in graph:
            return
        stack.append(node)
        for nxt in sorted(graph[node]):
            visit(nxt)
        stack.pop()
        done.add(node)

    for name in sorted(graph):
        visit(name)


def test_the_cycle_check_sees_function_level_imports(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from ..learner import Learner\n")
    assert imported("snapfit.callbacks.m", path, modules()) == {"snapfit.learner"}


def test_every_public_name_has_a_docstring():
    missing = []
    for name in modules():
        mod = importlib.import_module(name)
        if not mod.__doc__:
            missing.append(name)
        for attr in getattr(mod, "__all__", []):
            obj = getattr(mod, attr)
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and obj.__module__ == name and not obj.__doc__:
                missing.append(f"{name}.{attr}")
            if inspect.isclass(obj) and obj.__module__ == name:
                missing += [f"{name}.{attr}.{m}" for m, f in vars(obj).items()
                            if not m.startswith("_") and m not in EVENTS and inspect.isfunction(f) and not f.__doc__
                            and not any(m in vars(base) for base in obj.__mro__[1:])]
    assert missing == []
