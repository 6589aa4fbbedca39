"""The layout's rules, checked on the source: the library never imports a top-level module, its
modules import each other in one direction only (no import cycles), and serving never imports
training code."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOP_LEVEL = {p.stem for p in ROOT.glob("*.py")}


def imported_modules(path: Path, full: bool = False) -> set[str]:
    """The modules a file imports, anywhere in it (inside functions too): top-level names, or with
    ``full`` the dotted names, each ``from a.b import c`` giving ``a.b`` and ``a.b.c``."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name if full else a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if full:
                names.add(node.module)
                names |= {f"{node.module}.{a.name}" for a in node.names}
            else:
                names.add(node.module.split(".")[0])
    return names


def library_graph() -> dict[str, set[str]]:
    """crossmodal module -> the crossmodal modules it imports (a package counts as its __init__)."""
    modules = {}
    for path in (ROOT / "crossmodal").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        imported = {m for m in imported_modules(path, full=True) if m in modules and m != name}
        # importing a package's module runs the package's __init__ first: an edge to it too, unless
        # the importer lives inside that package
        imported |= {p for m in imported for p in _parents(m) if p in modules and not name.startswith(p + ".")}
        graph[name] = imported - {name}
    return graph


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (a list of modules, first repeated last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_library_never_imports_a_top_level_module():
    offenders = {str(p.relative_to(ROOT)): sorted(imported_modules(p) & TOP_LEVEL)
                 for p in (ROOT / "crossmodal").rglob("*.py")}
    assert not {k: v for k, v in offenders.items() if v}


def test_the_library_has_no_import_cycles():
    graph = library_graph()
    assert "crossmodal.engine" in graph and "crossmodal.backbones.registry" in graph
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
    # the registry is a leaf of the backbones: it imports none of them
    assert not {m for m in graph["crossmodal.backbones.registry"] if m.startswith("crossmodal.backbones")}


def test_the_cycle_check_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_serving_does_not_load_training_code():
    code = ("import sys, app, search, index_folder; from crossmodal import engine, page, photos, cli; "
            "print(sorted(m for m in ('train', 'loss', 'smart_sampler', 'data_loader') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
