"""The package's imports point one way: no module imports one that imports it back, counting
the imports inside functions (lazy ones) as much as those at the top. Every module imports."""
import ast
import importlib
from pathlib import Path

import pytest

import edgegru

PACKAGE = Path(edgegru.__file__).resolve().parent


def modules():
    """{dotted name: path} of every module of the package (a package as its __init__)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(name, path, known):
    """[(imported module, line)]: every import statement anywhere in the module, top level or
    inside a function, resolved to the package's modules (``from edgegru import aot`` is
    edgegru.aot, ``from edgegru import load`` the package itself)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                       for alias in node.names]
        else:
            continue
        edges += [(t, node.lineno) for t in targets if t in known and t != name]
    return edges


def graph():
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}, known


def find_cycle(edges):
    """One import cycle as [a, b, ..., a], or None."""
    state = {}                      # name -> "open" while on the path, "done" after

    def visit(name, path):
        state[name] = "open"
        for target, _ in edges[name]:
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target, path + [target])
                if cycle:
                    return cycle
        state[name] = "done"
        return None

    for name in sorted(edges):
        if name not in state:
            cycle = visit(name, [name])
            if cycle:
                return cycle
    return None


def test_no_import_cycle_lazy_imports_included():
    edges, known = graph()
    cycle = find_cycle(edges)
    if cycle:
        steps = []
        for a, b in zip(cycle, cycle[1:]):
            line = next(line for target, line in edges[a] if target == b)
            steps.append(f"{a} -> {b} ({known[a].relative_to(PACKAGE.parent)}:{line})")
        pytest.fail("import cycle: " + "; ".join(steps))


def test_the_cycle_finder_finds_a_lazy_back_edge(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "low.py").write_text("def f():\n    from pkg import high\n")
    (pkg / "high.py").write_text("from pkg.low import f\n")
    known = {"pkg": pkg / "__init__.py", "pkg.low": pkg / "low.py", "pkg.high": pkg / "high.py"}
    edges = {name: imports(name, path, known) for name, path in known.items()}
    assert edges["pkg.low"] == [("pkg.high", 2)]
    assert find_cycle(edges) == ["pkg.high", "pkg.low", "pkg.high"]


@pytest.mark.parametrize("name", sorted(set(modules()) - {"edgegru.__main__"}))
def test_every_module_imports_and_says_what_it_is_for(name):
    module = importlib.import_module(name)
    doc = (module.__doc__ or "").strip()
    assert doc and len(doc.splitlines()[0]) > 20, f"{name}: no docstring saying what it is for"
