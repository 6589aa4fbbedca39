#!/usr/bin/env python
"""The on-disk index at 10 million photos: built by build_index.py from 10 shards, served by the app.

Vectors from real data: the shipped model's image head projects the real image features of
``--caches`` (feature caches of the shipped model's backbone; by default Flickr8k train+dev and the
web set's shards 00000-00003), and ``--rows`` photo vectors are drawn around them:
``normalise(a + u * b + 0.4 * g / sqrt(d))`` for random real projections a, b, u ~ U(0, 0.6) and
Gaussian g, so they spread over the region real photos occupy rather than sit on 22,000 points.
Queries: ``--queries`` held-out real captions (Flickr8k dev, never part of the index's training)
through the model's text encoder.

1. ``write``: a feature cache of ``--rows`` photos whose backbone features are a sparse file (the
   served engine never reads them: it reads the projections) and the projections where the engine
   keeps them (``ProjectionCache``'s file), generated shard by shard. The checkpoint is the shipped
   one without its querybank: the querybank biases of 10 million rows are a separate one-time cost.
2. ``build``: ``build_index.py`` trains IVF-PQ on a sample, fills ``--shards`` shards, merges them.
3. ``serve``: ``python app.py --index`` in a process of its own, its resident memory (VmRSS; VmHWM the
   peak) read from outside before and after ``--queries`` queries through its ``/search`` API; then
   the same engine opened here (``cli.open_engine``, as the app opens it) for each query's own time
   (``crossmodal.search.search``: text encoding, index, page of hits; p50/p95 of two later passes over
   the queries, as a server that has run a while answers them, and of the first), the same with
   PyTorch encoding the text instead of the index's ONNX Runtime export (passes taking turns), and
   recall@10 of the served index against exact search over all rows. The photo files are not there (ten million of
   them), so a page finds none of its candidates' files and holds no hits: each query checks its 30
   best rows' files (``search.GONE_MARGIN``) where a real page would check 10 and build their hits.

    python -m bench.bench_index_scale --work /big/folder [--rows 10000000]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from bench import _common as C  # first: it sets what torch reads when it loads

# isort: split
import numpy as np  # noqa: E402
import torch  # noqa: E402

SHIPPED = C.ROOT / "models" / "pretrained" / "model.pt"
KW = Path("/work/kw/pre")
DEFAULT_CACHES = [KW / "flickr8k" / "image_embeddings", KW / "web" / "image_embeddings"]
FLICKR = C.ROOT.parent / "shared" / "data" / "flickr8k"


def status_mb(field: str, pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def held_out_captions(n: int) -> list[str]:
    dev = set((FLICKR / "splits" / "dev.txt").read_text().split())
    caps = [line.split("\t", 1)[1].strip() for line in (FLICKR / "flickr8k.token").read_text().splitlines()
            if line.split("#", 1)[0] in dev]
    rng = np.random.default_rng(0)
    return [caps[i] for i in np.sort(rng.choice(len(caps), n, replace=False))]


def write(args) -> None:
    from crossmodal.atomic_io import atomic_write_json, atomic_write_text, file_digest
    from crossmodal.collection import DatasetCollection
    from crossmodal.features.cache import FEATURES_FILE, IDS_FILE, MANIFEST_FILE, full_identity, load_cache

    from model import load_checkpoint

    model, state = load_checkpoint(SHIPPED)
    state.pop("querybank", None)
    checkpoint = args.work / "model.pt"
    torch.save(state, checkpoint)
    real = []
    with torch.inference_mode():
        for cache_dir in args.caches:
            cache = load_cache(cache_dir)
            x = torch.from_numpy(np.asarray(cache.features[cache.valid_mask()], np.float32))
            real.append(model.encode_image(x).float().numpy())
    real = np.concatenate(real)
    print(f"{len(real):,} real photo projections from {', '.join(map(str, args.caches))}")

    feats = args.work / "image_embeddings"
    feats.mkdir(parents=True, exist_ok=True)
    names = [f"{s:05d}/{i:09d}.jpg" for s in range(args.shards) for i in range(args.rows // args.shards)]
    image = state["backbones"]["image"]
    identity = full_identity({"kind": "image", "backbone": image["backbone"], "weights": image["weights"],
                              "preprocess": image["preprocess"], "dim": image["dim"]}, names)
    np.lib.format.open_memmap(feats / FEATURES_FILE, mode="w+", dtype=np.float16, shape=(len(names), image["dim"]))
    atomic_write_text(feats / IDS_FILE, "".join(f"{n}\n" for n in names))
    atomic_write_json(feats / MANIFEST_FILE, {**identity, "failures": [], "format": 1, "images_dir": str(feats),
                                              "files": {"features": FEATURES_FILE, "ids": IDS_FILE}})
    collection = DatasetCollection.open(feats, feats)
    key = f"{collection.matrix_key}-{file_digest(checkpoint)}"
    proj = np.memmap(feats / f"projected-{key}.f16", dtype=np.float16, mode="w+", shape=(len(names), real.shape[1]))
    rng = np.random.default_rng(1)
    block = 1 << 18
    for start in range(0, len(names), block):
        m = min(block, len(names) - start)
        a, b = real[rng.integers(0, len(real), m)], real[rng.integers(0, len(real), m)]
        x = a + rng.uniform(0, 0.6, (m, 1)).astype(np.float32) * b
        x += 0.4 * rng.standard_normal(x.shape).astype(np.float32) / np.sqrt(x.shape[1])
        proj[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    proj.flush()
    print(f"{len(names):,} photo vectors written in {args.shards} shards of {len(names) // args.shards:,}")


def api_search(url: str, query: str, k: int = 10) -> list:
    """One query through the app's ``/search`` API as curl sends it: Gradio's two requests (the call,
    then its result as server-sent events). (gradio_client adds tens of milliseconds of its own.)"""
    request = urllib.request.Request(f"{url}gradio_api/call/search", data=json.dumps({"data": [query, k]}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as r:
        event = json.loads(r.read())["event_id"]
    with urllib.request.urlopen(f"{url}gradio_api/call/search/{event}") as r:
        lines = r.read().decode().splitlines()
    if "event: complete" not in lines:
        raise RuntimeError(f"/search failed for {query!r}: {lines[:4]}")
    return json.loads(lines[lines.index("event: complete") + 1].removeprefix("data: "))[0]


def serve(args) -> None:
    import app
    from crossmodal import cli
    from crossmodal.ondisk_index import exact_top
    from crossmodal.search import search
    from scripts.screenshot_app import stop, wait_until_up

    import config
    from model import load_checkpoint

    feats = args.work / "image_embeddings"
    flags = ["--image-features", str(feats), "--images", str(feats), "--checkpoint", str(args.work / "model.pt"),
             "--index", str(args.work / "index")]
    texts = held_out_captions(args.queries)

    # 1. The app itself (python app.py --index), its memory read from outside, the queries sent to its API.
    url = f"http://127.0.0.1:{args.port}/"
    log = open(args.work / "app.log", "w")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py", *flags, "--port", str(args.port)], cwd=C.ROOT,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_up(url, proc, timeout=600)
        steps = [(f"app.py up, page served ({time.perf_counter() - t0:.0f} s)", status_mb("VmRSS", proc.pid))]
        api_search(url, texts[0])  # the first query loads what queries share
        api_times = []
        for text in texts:
            t = time.perf_counter()
            api_search(url, text)
            api_times.append(time.perf_counter() - t)
        steps.append((f"after {len(texts):,} queries through its API", status_mb("VmRSS", proc.pid)))
        peak = status_mb("VmHWM", proc.pid)
    finally:
        stop(proc)
        log.close()

    # 2. The query itself, in this process: the same engine (cli.open_engine, as app.py opens it), then
    # recall of the served index against exact search over every row.
    engine = cli.open_engine(app.parse_args(flags), config, load_checkpoint).engine
    served_encoder = engine.query_text_encoder  # the index's ONNX Runtime export where it keeps one

    def one_pass() -> list[float]:
        seconds = []
        for text in texts:
            t = time.perf_counter()
            search(engine, text, k=10)
            seconds.append(time.perf_counter() - t)
        return seconds

    first = one_pass()  # maps FAISS's inverted lists into this process as queries reach them
    # The baseline: the same queries with PyTorch encoding their text, in passes taking turns with the
    # served encoder's, so that both see the same moments of a shared machine.
    times, torch_times = [], []
    for _ in range(2):
        times += one_pass()
        engine._query_text = engine.text_backbone  # (a bench's swap; the engine has no switch for it)
        torch_times += one_pass()
        engine._query_text = served_encoder
    view = engine.current()
    vectors = np.stack([engine.embed_text(t) for t in texts]).astype(np.float32)
    found = view.index.search(vectors, 10)[1]
    t = time.perf_counter()
    truth = exact_top(view.embeddings, vectors)
    exact_s = time.perf_counter() - t
    recall = float(np.mean([len(set(f) & set(r)) / 10 for f, r in zip(found, truth)]))

    def ms(values: list[float]) -> str:
        return f"p50 {statistics.median(values) * 1e3:.1f} ms, p95 {np.percentile(values, 95) * 1e3:.1f} ms"

    print(C.table(["app.py --index (a process of its own)", "resident MB"], [(s, round(mb)) for s, mb in steps]))
    print(f"\npeak resident of app.py (VmHWM): {peak:,.0f} MB")
    print(f"index: {engine.details()['index']}")
    print(f"query (text encoding, index, page of hits), {len(texts):,} held-out captions, served warm (two "
          f"passes): {ms(times)}; first pass: {ms(first)}; text encoded by {type(served_encoder).__name__}")
    print(f"the same queries with PyTorch encoding their text (passes taking turns with those): {ms(torch_times)}; "
          f"served / PyTorch p50: {statistics.median(torch_times) / statistics.median(times):.2f}x faster")
    print(f"the same through the app's /search API over HTTP (Gradio's queue and two requests added): "
          f"{ms(api_times)}")
    print(f"recall@10 of the served index against exact search on these {len(texts):,} queries: {recall:.3f} "
          f"(exact search over {len(view.embeddings):,} rows: {exact_s / len(texts) * 1e3:.0f} ms a query)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True, help="a folder with room (about 6 GB at 10M rows)")
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--shards", type=int, default=10)
    p.add_argument("--nlist", type=int, default=4096)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--caches", type=Path, nargs="+", default=DEFAULT_CACHES)
    p.add_argument("--step", choices=("all", "write", "build", "serve"), default="all")
    p.add_argument("--port", type=int, default=7911)
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.step in ("all", "write"):
        C.print_machine(f"On-disk index at scale: {args.rows:,} photos from real vectors, {args.shards} shards")
        seconds, _ = C.timed(lambda: write(args))
        print(f"written in {seconds:.0f} s\n")
    if args.step in ("all", "build"):
        feats = args.work / "image_embeddings"
        cmd = [sys.executable, "build_index.py", "--image-features", str(feats), "--images", str(feats),
               "--checkpoint", str(args.work / "model.pt"), "--index", str(args.work / "index"),
               "--nlist", str(args.nlist), "--force"]
        t = time.perf_counter()
        subprocess.run(cmd, cwd=C.ROOT, check=True)
        seconds = time.perf_counter() - t
        info = json.loads((args.work / "index" / "index.json").read_text())
        disk = sum(f.stat().st_size for f in (args.work / "index").iterdir())
        print(f"build_index.py: {seconds:.0f} s for {args.rows:,} rows ({seconds / args.rows * 1e6:.0f} s per million, "
              f"training, {args.shards} shards, merge and tuning included); {len(info['parts'])} part(s); "
              f"{disk / 2**20:,.0f} MB on disk ({disk / args.rows:.1f} bytes per photo)\n")
    if args.step in ("all", "serve"):
        serve(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
