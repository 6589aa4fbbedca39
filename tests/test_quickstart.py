"""The quick start ends by serving the page: its app.py command line must be one app.py accepts
(the stages before it run in every fresh-clone check; this one is skipped there with NO_APP=1)."""
from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_quick_start_serves_with_flags_app_py_accepts(tmp_path):
    script = (ROOT / "quickstart.sh").read_text(encoding="utf-8")
    line = next(s.strip() for s in script.splitlines() if s.strip().startswith("python app.py"))
    argv = shlex.split(line.replace('"$W', f'"{tmp_path}'))[2:]
    assert "$" not in " ".join(argv), argv  # every variable in it is one this test fills in
    run = subprocess.run([sys.executable, "-c", "import sys, app; app.parse_args(sys.argv[1:])", *argv],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
