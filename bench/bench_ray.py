#!/usr/bin/env python
"""Image extraction on a local Ray cluster against the in-process extraction, in one run.

Both extract the same full-size JPEGs with the same backbone into a fresh cache (``force``), the
in-process stage with its defaults (``extract.extract_image_features``: decoding workers beside the
model) and the Ray stage with its defaults (``on_ray.extract_images_on_ray``: CPU tasks decoding and
embedding their units, one backbone per worker process) on a cluster of ``--cpus`` CPUs started once before timing (its
start is printed apart). The Ray runs come first, then the in-process ones. Each path's first run
is timed apart; then ``--rounds`` rounds each time the set once and twice, and the median round is
reported.

Images/s is end to end: a run's fixed start is in it. The first Ray run of a driver also starts its
workers (Ray Data's start, importing torch and torchvision, building the backbone); later runs reuse
them, as the in-process rounds reuse the driver's loaded modules and backbone (built before timing).
The marginal rate, (2N - N) images over the difference of the times of a run over the set twice and
once, leaves the fixed start out: what a large run approaches.

    python -m bench.bench_ray [--data DIR] [--rounds 3]
    python -m bench.bench_ray --cpus 16 --repeat 25 --workers 15 --rounds 2   # a GPU machine: bench/gpu_ray.sh

On a machine with a GPU both embed on it: in-process with ``--workers`` decoding processes, on Ray with
one GPU actor while the other CPUs decode in Ray tasks; with ``--decode gpu`` the CPUs only read the
files and nvJPEG decodes them on the GPU, in both paths. ``--repeat`` repeats the photo set (a GPU
needs thousands of photos for a steady rate).
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench import _common as C  # first: it sets what torch reads when it loads

# isort: split
import numpy as np  # noqa: E402

from crossmodal.backbones import create_image_backbone  # noqa: E402
from crossmodal.features import extract, on_ray  # noqa: E402
from crossmodal.ray_cluster import connect  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=C.default_images_dir())
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeat", type=int, default=1, help="the photo set this many times")
    p.add_argument("--workers", type=int, default=None, help="in-process decoding workers (default: its own)")
    p.add_argument("--decode", choices=("cpu", "gpu"), default="cpu", help="gpu: nvJPEG (a GPU machine)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    C.require(args.data, "full-size JPEGs")
    names = sorted(n.name for n in args.data.iterdir() if n.suffix.lower() in (".jpg", ".jpeg")) * args.repeat
    C.print_machine(f"Ray extraction vs in-process: {len(names)} photos of {args.data}, {args.backbone}, "
                    f"decoded on the {args.decode.upper()}")
    backbone = create_image_backbone(args.backbone)
    t0 = time.perf_counter()
    connect("local", num_cpus=args.cpus)
    print(f"Ray local cluster of {args.cpus} CPUs started in {time.perf_counter() - t0:.1f} s (not timed below)\n")
    spec = on_ray.BackboneSpec.of(args.backbone)

    def in_process(items: list[str], out: Path) -> object:
        workers = {} if args.workers is None else {"num_workers": args.workers}
        return extract.extract_image_features(backbone, args.data, items, out, decode=args.decode, force=True,
                                              **workers)

    def ray(items: list[str], out: Path) -> object:
        return on_ray.extract_images_on_ray(backbone, spec, args.data, items, out, decode=args.decode, force=True)

    times: dict[tuple[str, int], list[float]] = {}
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        # Every Ray round first: a Ray run after the in-process path forked its decoding workers in
        # this (Ray driver) process hung; a stage script runs one of the two per process.
        first = {}
        for label, run in (("Ray", ray), ("in-process", in_process)):
            first[label], cache = C.timed(lambda: run(names, Path(tmp) / f"{label}-first"))
            rows[label] = np.asarray(cache.features, np.float32)
            print(f"{label} first run: {first[label]:.2f} s", file=sys.stderr)
            for r in range(args.rounds):
                for copies in (1, 2):
                    out = Path(tmp) / f"{label}-{copies}-{r}"
                    seconds, _ = C.timed(lambda: run(names * copies, out))
                    times.setdefault((label, copies), []).append(seconds)
                print(f"{label} round {r + 1}: x1 {times[(label, 1)][-1]:.2f} s, x2 {times[(label, 2)][-1]:.2f} s",
                      file=sys.stderr)
    n = len(names)
    table, rates = [], {}
    for label in ("in-process", "Ray"):
        once, twice = (statistics.median(times[(label, c)]) for c in (1, 2))
        rates[label] = (n / once, n / max(twice - once, 1e-9), n / first[label])
        table.append((label, rates[label][0], " ".join(f"{t:.2f}" for t in times[(label, 1)]), rates[label][1],
                      rates[label][2]))
    print(C.table(["path", "images/s end to end (median)", "seconds per round", "marginal images/s",
                   "images/s, first run"], table))
    print()
    ratio = [rates["Ray"][i] / rates["in-process"][i] for i in range(3)]
    print(f"Ray / in-process: {ratio[0]:.2f}x end to end, {ratio[1]:.2f}x marginal; "
          f"first run (Ray starting its workers) {ratio[2]:.2f}x")
    diff = np.abs(rows["Ray"] - rows["in-process"])
    print(f"rows: max |Ray - in-process| = {diff.max():.2e} over {diff.size:,} values "
          f"({(diff == 0).mean():.1%} bit-equal; float16 storage)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
