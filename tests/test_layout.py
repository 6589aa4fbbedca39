"""The layout's rules, checked on the source: the library never imports a top-level module, and
serving never imports training code."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOP_LEVEL = {p.stem for p in ROOT.glob("*.py")}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_library_never_imports_a_top_level_module():
    offenders = {str(p.relative_to(ROOT)): sorted(imported_modules(p) & TOP_LEVEL)
                 for p in (ROOT / "crossmodal").rglob("*.py")}
    assert not {k: v for k, v in offenders.items() if v}


def test_serving_does_not_load_training_code():
    code = ("import sys, app, search, index_folder; from crossmodal import retrieval, photos, cli; "
            "print(sorted(m for m in ('train', 'loss', 'smart_sampler', 'data_loader') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
