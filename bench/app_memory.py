#!/usr/bin/env python
"""Resident memory of the search page at a given collection size (default 31,000 photos, MiniLM).

Builds what ``app.py`` builds, in this process: the text backbone, a search engine over a feature
cache of N photos (the clustered synthetic vectors of ``bench_search.py``, float16, written by a child
process; the engine projects them into its memory-mapped projection cache) with 5 synthetic captions
per photo, the Gradio page, launched on 127.0.0.1, then answers ``--queries`` text queries. Prints resident
memory (VmRSS) after each step and the peak (VmHWM), beside the cost of the imports alone, so
the share of torch / transformers / gradio is visible.

    python -m bench.app_memory [--images 31000] [--queries 50]
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import _common as C  # noqa: E402


def status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=31_000)
    p.add_argument("--queries", type=int, default=50)
    p.add_argument("--backbone", default="minilm")
    p.add_argument("--captions-per-image", type=int, default=5)
    p.add_argument("--port", type=int, default=7899)
    p.add_argument("--no-querybank", action="store_true", help="no querybank (the shipped model has one)")
    p.add_argument("--as-before", action="store_true",
                   help="skip cli.prepare_process(serving=True) (malloc arenas, Triton hidden), to measure what it "
                        "saves")
    args = p.parse_args(argv)

    steps = [("python start", status_mb("VmRSS"))]
    import torch
    import transformers  # noqa: F401
    steps.append(("import numpy, torch, transformers", status_mb("VmRSS")))
    steps.append(("import gradio", status_mb("VmRSS")))

    from crossmodal import cli
    from crossmodal.backbones import create_text_backbone
    from crossmodal.page import serve
    from crossmodal.search import search

    torch.set_num_threads(1)  # the app's default (--threads 1)
    if not args.as_before:
        cli.prepare_process(serving=True)  # what app.py does before loading
    backbone = create_text_backbone(args.backbone)
    backbone.model.eval()
    steps.append((f"text backbone {backbone.name} loaded", status_mb("VmRSS")))
    # Written by a child process: the generator's temporaries would otherwise count in this process's peak.
    tmp = Path(tempfile.mkdtemp(prefix="app_memory_"))
    subprocess.run([sys.executable, "-c", (
        "import sys; from pathlib import Path; from bench._common import write_synthetic_cache; "
        "write_synthetic_cache(Path(sys.argv[1]), int(sys.argv[2]), captions_per_image=int(sys.argv[3]))"),
        str(tmp), str(args.images), str(args.captions_per_image)], check=True, cwd=C.ROOT)
    engine = C.synthetic_engine(tmp, backbone, querybank=not args.no_querybank)
    cli.release_free_memory()  # as cli.open_engine does
    steps.append((f"engine over {args.images:,} photos ({engine.current().index.kind})", status_mb("VmRSS")))
    demo = serve(engine, "127.0.0.1", args.port, block=False, quiet=True)
    steps.append(("page built and launched", status_mb("VmRSS")))
    t0 = time.perf_counter()
    for i in range(args.queries):
        search(engine, f"a dog number {i} running through the snow", k=5)
    steps.append((f"after {args.queries} queries ({(time.perf_counter() - t0) / args.queries * 1e3:.0f} ms each)",
                  status_mb("VmRSS")))
    peak = status_mb("VmHWM")
    demo.close()
    shutil.rmtree(tmp, ignore_errors=True)

    C.print_machine(f"App resident memory, {args.backbone}, {args.images:,} photos")
    print(C.table(["step", "resident MB"], [[s, round(mb)] for s, mb in steps]))
    print(f"\npeak resident: {peak:.0f} MB ({peak / 1024:.2f} GB); target <= 1024 MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
