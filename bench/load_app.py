#!/usr/bin/env python
"""Load check: N concurrent gradio_client clients, each sending M text queries to a running app.

    python app.py --work-dir work/demo &                   # in another shell
    python -m bench.load_app --url http://127.0.0.1:7860/ --clients 20 --queries 50

Prints the end-to-end latency (client call to result, as a user of the API sees it) at p50/p95/max,
the throughput and the number of failed calls. Exit status 1 when any call failed.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time

QUERIES = ["a red circle", "a blue square on a striped background", "two shapes side by side",
           "a small yellow star in the corner", "a dog running in the snow", "a man riding a bicycle",
           "children playing on the beach", "a green triangle on the left", "a black ring",
           "a large purple hexagon", "a woman in a red dress", "a crowd of people on a street"]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo, hi = int(pos), min(int(pos) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def run(url: str, clients: int, queries: int, k: int, seed: int = 0) -> dict:
    from gradio_client import Client

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    ready = threading.Barrier(clients)

    def worker(i: int) -> None:
        rng = random.Random(seed + i)
        try:
            client = Client(url, verbose=False)
        except Exception as err:  # noqa: BLE001 - a client that cannot connect fails all its queries
            with lock:
                errors.extend([f"connect: {type(err).__name__}: {err}"] * queries)
            ready.wait()
            return
        ready.wait()  # all clients start sending at once
        for _ in range(queries):
            q = rng.choice(QUERIES)
            t0 = time.perf_counter()
            try:
                hits = client.predict(query=q, k=k, api_name="/search")
                if not isinstance(hits, list) or len(hits) != k:
                    raise RuntimeError(f"expected {k} hits, got {hits!r:.200}")
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)
            except Exception as err:  # noqa: BLE001 - counted and reported
                with lock:
                    errors.append(f"{type(err).__name__}: {err}")

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {
        "clients": clients, "queries_per_client": queries, "calls": clients * queries, "ok": len(latencies),
        "errors": len(errors), "p50_ms": round(percentile(latencies, 50) * 1000, 1),
        "p95_ms": round(percentile(latencies, 95) * 1000, 1), "max_ms": round(max(latencies, default=0) * 1000, 1),
        "throughput_qps": round(len(latencies) / wall, 1), "wall_s": round(wall, 1),
        "first_errors": sorted(set(errors))[:5],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:7860/", help="the running app (default: %(default)s)")
    p.add_argument("--clients", type=int, default=20, help="concurrent clients (default: %(default)s)")
    p.add_argument("--queries", type=int, default=50, help="queries per client (default: %(default)s)")
    p.add_argument("--k", type=int, default=5, help="results per query (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    r = run(args.url, args.clients, args.queries, args.k)
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        print(f"{r['clients']} clients x {r['queries_per_client']} queries against {args.url}: "
              f"p50 {r['p50_ms']} ms, p95 {r['p95_ms']} ms, max {r['max_ms']} ms, "
              f"{r['throughput_qps']} queries/s, errors {r['errors']}/{r['calls']}")
        for e in r["first_errors"]:
            print(f"  error: {e}")
    return 1 if r["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
