"""Helper scripts under scripts/ that make README figures."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def report(rsum: float, r1: float, querybank: bool) -> dict:
    row = {"rsum": rsum, "t2i_r1": r1}
    rows = {"chance": {"rsum": 3.0, "t2i_r1": 0.1}, "trained (best.pt, epoch 3)": row}
    if querybank:
        rows["trained (best.pt, epoch 3) + querybank normalisation"] = {"rsum": rsum + 10, "t2i_r1": r1 + 2}
    return {"results": rows}


def test_plot_dev_results_reads_reports_and_writes_a_png(tmp_path):
    plot = load_script("plot_dev_results")
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(report(300.0, 20.0, False)))
    b.write_text(json.dumps(report(350.0, 30.0, True)))
    assert plot.trained_rows(json.loads(b.read_text()))[1]["rsum"] == 360.0
    assert plot.trained_rows(json.loads(a.read_text()))[1] is None
    out = tmp_path / "fig.png"
    assert plot.main([f"one={a}", f"two\\nlines={b}", "--target", "370", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit):
        plot.main([str(a), "--out", str(out)])  # a report without a LABEL=
