"""Shared bits of the benchmark scripts: process settings, machine description, Markdown tables, data checks.

Speed is only ever reported as ratios against a baseline measured in the same process; the
absolute seconds are printed for context, never asserted.
"""
from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from crossmodal.cli import prepare_process

prepare_process()  # as the stage scripts do, before torch loads
ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars cost time and clutter the tables (read at import)

SHARED_DATA = ROOT.parent / "shared" / "data"
# Where the lead copies the 200 full-resolution JPEGs for the GPU machine (see bench/gpu_extract.sh).
BENCH_DATA = ROOT / "bench_data"


def default_images_dir() -> Path:
    carried = BENCH_DATA / "fullres"
    if carried.is_dir() and any(carried.glob("*.jpg")):
        return carried
    return SHARED_DATA / "flickr8k-fullres-sample" / "images"


def require(path: Path, what: str) -> None:
    """Exit 0 with a clear message when the data is absent (benchmarks skip, they do not fail)."""
    if not path.exists():
        print(f"SKIP: {what} not found at {path}; pass --data to point elsewhere")
        sys.exit(0)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_lines() -> list[str]:
    import torch
    lines = [
        f"- CPU: {cpu_model()}, {os.cpu_count()} logical cores "
        f"(affinity {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'})",
        f"- torch {torch.__version__}, torch threads {torch.get_num_threads()}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, python {platform.python_version()}",
    ]
    try:
        load = os.getloadavg()
        lines.append(f"- load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
                     "(other jobs make timings noisy)")
    except OSError:
        pass
    if torch.cuda.is_available():
        lines.append(f"- GPU: {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})")
    else:
        lines.append("- GPU: none")
    return lines


def print_machine(title: str) -> None:
    print(f"\n## {title}\n")
    for line in machine_lines():
        print(line)
    print()


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v)
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(out)


def timed(fn: Callable[[], object], sync: Callable[[], None] | None = None) -> tuple[float, object]:
    if sync:
        sync()
    t0 = time.perf_counter()
    result = fn()
    if sync:
        sync()
    return time.perf_counter() - t0, result


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (DataLoader workers), user + system."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def best_of(fn: Callable[[], object], repeats: int, sync: Callable[[], None] | None = None) -> float:
    """Fastest of ``repeats`` runs: on a shared, noisy machine the minimum is the least disturbed."""
    return min(timed(fn, sync)[0] for _ in range(max(1, repeats)))


SYNTHETIC_DIM = 256  # the synthetic photos' vectors: bench_search.clustered rows, as the heads' 256-d space


def write_synthetic_cache(folder: Path, n: int, seed: int = 0, captions_per_image: int = 0) -> None:
    """A feature cache of ``n`` clustered synthetic unit vectors (``bench_search.clustered``, float16)
    in ``folder``/image_embeddings, and with ``captions_per_image`` a caption file beside it."""
    import numpy as np

    from bench.bench_search import clustered
    from crossmodal.features.cache import write_cache

    names = [f"{i:012d}.jpg" for i in range(n)]
    identity = {"kind": "image", "backbone": "synthetic", "weights": "clustered", "preprocess": {},
                "dim": SYNTHETIC_DIM}
    write_cache(folder / "image_embeddings", names, clustered(n, d=SYNTHETIC_DIM, seed=seed, dtype=np.float16),
                identity, [])
    if captions_per_image:  # Flickr-like captions: ~65 characters each
        with open(folder / "captions.token", "w", encoding="utf-8") as f:
            for name in names:
                for j in range(captions_per_image):
                    f.write(f"{name}#{j}\tcaption {j} of photo {name}: a person walks a dog along a snowy street\n")


def synthetic_engine(folder: Path, text_backbone, index_kind: str = "auto", seed: int = 0, querybank: bool = True):
    """A SearchEngine over the synthetic cache in ``folder`` (``write_synthetic_cache``) with random
    text heads for ``text_backbone``. The image head is the identity, so the searched vectors are the
    clustered ones themselves: latency and recall do not depend on trained values. ``querybank``: a
    bank of 2,000 synthetic rows, as the shipped model ranks sentences with one."""
    import torch
    import torch.nn.functional as F

    from crossmodal.collection import DatasetCollection
    from crossmodal.engine import SearchEngine

    from model import RetrievalModel

    class IdentityImageHead(RetrievalModel):
        def encode_image(self, x: torch.Tensor) -> torch.Tensor:
            return F.normalize(x.float(), dim=-1)

    model = IdentityImageHead(image_dim=SYNTHETIC_DIM, text_dim=text_backbone.dim, embed_dim=SYNTHETIC_DIM).eval()
    torch.manual_seed(seed)  # the random text head the benches have always drawn (a Lite0-width model's)
    model.text_head.load_state_dict(RetrievalModel(image_dim=1280, text_dim=text_backbone.dim).text_head.state_dict())
    state = {"backbones": {"image": {"backbone": "synthetic", "weights": "clustered", "preprocess": {}},
                           "text": {"backbone": text_backbone.name, "weights": text_backbone.weights}}}
    if querybank:
        from bench.bench_search import clustered

        bank = torch.from_numpy(clustered(2000, d=SYNTHETIC_DIM, seed=seed + 1)).half()
        state["querybank"] = {"text": bank, "beta": 1 / 0.045}
    checkpoint = folder / "synthetic.pt"
    torch.save({"model_config": model.config_dict(), "model": model.state_dict(), **state}, checkpoint)
    captions = folder / "captions.token"
    collection = DatasetCollection.open(folder / "image_embeddings", folder,
                                        captions if captions.is_file() else None)
    return SearchEngine(collection, model, state, checkpoint, device="cpu", index_kind=index_kind,
                        text_backbone=text_backbone)
