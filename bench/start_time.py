#!/usr/bin/env python
"""How soon `app.py --photos DIR` and `search.py --photos DIR` answer, from nothing and on a second start.

Each start is a new process, timed from the command to: the page answering HTTP, the first
answered query (``/search_photos`` through gradio_client), and, from nothing, the first query
answered over every photo (indexing done). The baseline, measured in the same run, is what any
start must pay before a line of this project runs: importing torch, the transformers BERT code
(the text backbone) and Gradio, each set in a fresh process.

    python -m bench.start_time [--photos DIR] [--repeats 3]

The default folder is the 200 full-size Flickr8k photos of ../shared/data (skipped when absent).
"""
from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench import _common as C  # noqa: E402  # isort: split

QUERY = "a dog running on the grass"
IMPORTS = {  # what a start imports before the project's own code runs; the last is the baseline
    "gradio alone": "import gradio",
    "torch": "import torch",
    "torch + transformers BERT": "import torch; from transformers.models.bert import modeling_bert",
    "torch + transformers BERT + gradio": "import torch; from transformers.models.bert import modeling_bert; "
                                          "import gradio",
}
BASELINE = "torch + transformers BERT + gradio"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def import_seconds(code: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - t0


def app_start(photos: Path, work: Path, log: Path, until_indexed: int | None = None) -> dict[str, float]:
    """Seconds from the command to the page (HTTP 200), the first answer and, with ``until_indexed``,
    the first answer over that many photos with indexing done."""
    from gradio_client import Client

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "app.py", "--photos", str(photos), "--work-dir", str(work),
                                 "--port", str(port)], cwd=C.ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"app.py exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(url, timeout=2).read()
                break
            except OSError:
                time.sleep(0.05)
        times = {"page": time.perf_counter() - t0}
        client = Client(url, verbose=False)
        while True:
            result = client.predict(query=QUERY, k=5, offset=0, like="", api_name="/search_photos")
            times.setdefault("first answer", time.perf_counter() - t0)
            if until_indexed is None or (result["indexing"] is None and result["total"] >= until_indexed):
                break
            time.sleep(0.5)
        if until_indexed is not None:
            times["answer over all photos"] = time.perf_counter() - t0
        return times
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def cli_start(photos: Path, work: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "search.py", QUERY, "--photos", str(photos), "--work-dir", str(work)],
                   cwd=C.ROOT, check=True, capture_output=True)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", type=Path, default=C.default_images_dir(), help="a folder of photos")
    p.add_argument("--repeats", type=int, default=3, help="second starts of each kind (the median is reported)")
    args = p.parse_args(argv)
    C.require(args.photos, "photo folder")
    n = sum(1 for f in args.photos.iterdir() if f.suffix.lower() in {".jpg", ".jpeg", ".png"})
    C.print_machine(f"Start-up: {n} photos in {args.photos}")

    floor = {what: min(import_seconds(code) for _ in range(args.repeats)) for what, code in IMPORTS.items()}
    with tempfile.TemporaryDirectory(prefix="start_time_") as tmp:
        work = Path(tmp) / "work"
        first = app_start(args.photos, work, Path(tmp) / "first.log", until_indexed=n)
        second = [app_start(args.photos, work, Path(tmp) / f"second{i}.log") for i in range(args.repeats)]
        cli = [cli_start(args.photos, work) for _ in range(args.repeats)]

    base = floor[BASELINE]
    rows = [(f"importing {what}, in a new process (best of {args.repeats})", secs, secs / base)
            for what, secs in floor.items()]
    rows += [(f"app.py, from nothing: {what}", secs, secs / base) for what, secs in first.items()]
    for what in ("page", "first answer"):
        secs = statistics.median(s[what] for s in second)
        rows.append((f"app.py, second start (median of {args.repeats}): {what}", secs, secs / base))
    rows.append((f"search.py --photos, second start (median of {args.repeats}): hits printed",
                 statistics.median(cli), statistics.median(cli) / base))
    print(C.table(["what", "seconds", f"x import of {BASELINE}"], rows))
    print("\n" + json.dumps({"imports": floor, "first": first, "second": second, "cli": cli}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
