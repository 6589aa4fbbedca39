#!/usr/bin/env python
"""Near-duplicate groups (crossmodal.duplicates) on real photos: pairwise precision and recall
against the similarity threshold, for backbone features and for projected search embeddings.

From each of the 200 full-size Flickr8k sample photos, in a temporary folder outside the
repository: the original file, an exact copy, a JPEG re-encode (quality 60-85), 50% and 25%
resizes, a crop of 5-10% of each dimension (split at random between the two edges) and a
brightened copy (x1.10-1.25); resized, cropped and brightened copies are saved as JPEG quality 90.
Their features come from the project's own extraction (``extract_image_features``, EfficientNet-
Lite0, the offline default). Hard negatives: for each original, its ``--negatives`` most similar
photos (by the same vectors) among the 7,000 Flickr8k photos of a trained work folder's image
cache, leaving out every photo of the sample (the same photos at 224 px would be duplicates).

A pair of photos is positive when both derive from the same original. A threshold's pairs are all
pairs within one group (groups are connected components, so a chain of links counts). The
threshold is chosen on the even-numbered originals, in the middle of the thresholds that reach
both targets there (precision >= 0.95, recall >= 0.9), and checked on the odd-numbered ones.

    python -m bench.bench_duplicates --work-dir work/flickr8k
"""
from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from pathlib import Path

from bench import _common as C  # first: it sets what torch reads when it loads

# isort: split
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageEnhance  # noqa: E402

from crossmodal.backbones import create_image_backbone  # noqa: E402
from crossmodal.cli import setup_logging  # noqa: E402
from crossmodal.duplicates import DUPLICATE_THRESHOLD, find_duplicate_groups  # noqa: E402
from crossmodal.features.cache import load_cache  # noqa: E402
from crossmodal.features.extract import extract_image_features  # noqa: E402
from crossmodal.paths import Layout  # noqa: E402

from model import load_checkpoint  # noqa: E402

log = logging.getLogger("bench_duplicates")
VARIANTS = ("original", "copy", "jpeg", "resize50", "resize25", "crop", "bright")
TARGET_PRECISION = 0.95
TARGET_RECALL = 0.9


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=C.default_images_dir(), help="folder of full-size JPEGs")
    p.add_argument("--work-dir", type=Path, default=C.ROOT / "work" / "flickr8k",
                   help="trained Flickr8k work folder: image_embeddings/ (the negatives), checkpoints/best.pt")
    p.add_argument("--tmp", type=Path, default=None,
                   help="where the variants and their features go (default: a temporary folder, removed after)")
    p.add_argument("--negatives", type=int, default=10, help="nearest different photos per original")
    p.add_argument("--thresholds", default=",".join(f"{t / 100:.2f}" for t in [*range(70, 90), *range(90, 100, 2)]))
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def make_variants(src: Path, out: Path, stem: str, rng: np.random.Generator) -> list[str]:
    """The variants of one photo in ``out``, named ``stem__variant.jpg``, in ``VARIANTS`` order."""
    names = [f"{stem}__{v}.jpg" for v in VARIANTS]
    shutil.copyfile(src, out / names[0])
    shutil.copyfile(src, out / names[1])
    with Image.open(src) as im:
        im = im.convert("RGB")
        w, h = im.size
        im.save(out / names[2], quality=int(rng.integers(60, 86)))
        im.resize((w // 2, h // 2), Image.LANCZOS).save(out / names[3], quality=90)
        im.resize((w // 4, h // 4), Image.LANCZOS).save(out / names[4], quality=90)
        fx, fy = rng.uniform(0.05, 0.10, 2)
        left, top = rng.uniform(0, fx) * w, rng.uniform(0, fy) * h
        box = (round(left), round(top), round(left + (1 - fx) * w), round(top + (1 - fy) * h))
        im.crop(box).save(out / names[5], quality=90)
        ImageEnhance.Brightness(im).enhance(rng.uniform(1.10, 1.25)).save(out / names[6], quality=90)
    return names


def pair_counts(groups: list[list[int]], labels: np.ndarray) -> tuple[int, int]:
    """(pairs within groups, of which positive): items with equal non-negative labels are positive."""
    predicted = positive = 0
    for g in groups:
        predicted += len(g) * (len(g) - 1) // 2
        _, counts = np.unique(labels[g][labels[g] >= 0], return_counts=True)
        positive += int((counts * (counts - 1) // 2).sum())
    return predicted, positive


def evaluate(vectors: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    groups = find_duplicate_groups(vectors, threshold)
    predicted, tp = pair_counts(groups, labels)
    _, counts = np.unique(labels[labels >= 0], return_counts=True)
    positives = int((counts * (counts - 1) // 2).sum())
    return {"groups": len(groups), "pairs": predicted, "tp": tp, "precision": tp / predicted if predicted else 1.0,
            "recall": tp / positives, "group_list": groups}


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging()
    lay = Layout(args.work_dir)
    C.require(args.data, "the full-size sample photos")
    C.require(lay.image_features, "a Flickr8k image cache (--work-dir)")
    C.require(lay.best_checkpoint, "a trained checkpoint (--work-dir)")
    thresholds = [float(t) for t in args.thresholds.split(",")]
    sources = sorted(args.data.glob("*.jpg"))
    rng = np.random.default_rng(args.seed)
    tmp = args.tmp or Path(tempfile.mkdtemp(prefix="bench_duplicates_"))
    try:
        photos = tmp / "photos"
        photos.mkdir(parents=True, exist_ok=True)
        names = [n for i, src in enumerate(sources) for n in make_variants(src, photos, f"{i:03d}", rng)]
        backbone = create_image_backbone("efficientnet_lite0")
        cache = extract_image_features(backbone, photos, names, tmp / "features", device="cpu", stack_views=False)
        assert cache.ids == names and not cache.manifest["failures"]
        backbone_set = np.asarray(cache.features, dtype=np.float32)
    finally:
        if args.tmp is None:
            shutil.rmtree(tmp, ignore_errors=True)

    flickr = load_cache(lay.image_features, {"backbone": backbone.name, "weights": backbone.weights})
    if flickr.manifest.get("views"):
        raise SystemExit(f"{lay.image_features} holds several views per photo; use a one-view cache")
    sample_names = {s.name for s in sources}
    valid = flickr.valid_mask()
    pool = np.array([i for i, n in enumerate(flickr.ids) if valid[i] and n not in sample_names])
    backbone_pool = np.asarray(flickr.features[pool], dtype=np.float32)
    model, state = load_checkpoint(lay.best_checkpoint)
    if state["backbones"]["image"]["weights"] != backbone.weights:
        raise SystemExit(f"{lay.best_checkpoint} was trained on another image backbone")
    with torch.inference_mode():
        def project(x: np.ndarray) -> np.ndarray:
            return model.eval().encode_image(torch.from_numpy(x)).float().numpy()
        kinds = {"backbone features (1280-d)": (backbone_set, backbone_pool),
                 f"projected embeddings ({model.config_dict()['embed_dim']}-d)": (project(backbone_set),
                                                                                   project(backbone_pool))}

    n_src = len(sources)
    source_of = np.repeat(np.arange(n_src), len(VARIANTS))
    variant_of = np.tile(np.arange(len(VARIANTS)), n_src)
    print(f"\n## bench_duplicates: near-duplicate groups on {n_src} real photos x {len(VARIANTS)} versions\n")
    print(f"- versions: {', '.join(VARIANTS)}; photos from {args.data}; features: extract_image_features, "
          f"{backbone.name}, one view (as a collection stores them)")
    print(f"- hard negatives: each original's {args.negatives} nearest of {len(pool)} Flickr8k photos "
          f"({lay.image_features}; the sample's own photos left out), mined with each kind of vector")
    print(f"- crossmodal.duplicates.DUPLICATE_THRESHOLD = {DUPLICATE_THRESHOLD}\n")
    chosen = {}
    for kind, (xs, xp) in kinds.items():
        unit_s = xs / np.linalg.norm(xs, axis=1, keepdims=True)
        unit_p = xp / np.linalg.norm(xp, axis=1, keepdims=True)
        originals = unit_s[variant_of == 0]
        nearest = np.argsort(-(originals @ unit_p.T), axis=1)[:, : args.negatives]  # (n_src, negatives)
        negatives = np.unique(nearest)
        vectors = np.concatenate([xs, xp[negatives]])
        labels = np.concatenate([source_of, -1 - np.arange(len(negatives))])
        own = [float(originals[s] @ unit_s[(source_of == s) & (variant_of == v)][0])
               for s in range(n_src) for v in range(2, len(VARIANTS))]
        hardest = (originals @ unit_p[negatives].T).max(1)
        print(f"### {kind}\n")
        print(f"- {len(xs)} versions + {len(negatives)} negatives; cosine similarity of an original to its "
              f"re-encoded, resized, cropped or brightened versions: min {min(own):.3f}, 1st percentile "
              f"{np.percentile(own, 1):.3f}, median {np.median(own):.3f}; to its most similar negative: median "
              f"{np.median(hardest):.3f}, 99th percentile {np.percentile(hardest, 99):.3f}, max {hardest.max():.3f}\n")
        rows, by_half = [], {0: [], 1: []}
        for t in thresholds:
            m = evaluate(vectors, labels, t)
            rows.append((f"{t:.2f}", m["groups"], m["pairs"], f"{m['precision']:.3f}", f"{m['recall']:.3f}"))
            for half in (0, 1):  # the originals of one parity, their versions and the negatives they mined
                keep = np.concatenate([source_of % 2 == half, np.isin(negatives, nearest[half::2])])
                by_half[half].append((t, evaluate(vectors[keep], labels[keep], t)))
        print(C.table(["threshold", "groups", "pairs in groups", "precision", "recall"], rows))
        ok = [t for t, m in by_half[0] if m["precision"] >= TARGET_PRECISION and m["recall"] >= TARGET_RECALL]
        if not ok:
            print(f"\nno threshold reaches precision {TARGET_PRECISION} and recall {TARGET_RECALL} on the even "
                  "originals\n")
            continue
        t = ok[len(ok) // 2]
        held = dict(by_half[1])[t]
        chosen[kind] = (t, held)
        print(f"\nthresholds reaching both targets on the even originals: {ok[0]:.2f}-{ok[-1]:.2f}; chosen "
              f"{t:.2f}; on the odd originals (held out): precision "
              f"{held['precision']:.3f}, recall {held['recall']:.3f}\n")
        full = evaluate(vectors, labels, t)
        grouped = {v: 0 for v in VARIANTS[1:]}
        group_of = {i: g for g, members in enumerate(full["group_list"]) for i in members}
        for i in np.flatnonzero(variant_of > 0):
            orig = i - variant_of[i]
            grouped[VARIANTS[variant_of[i]]] += orig in group_of and group_of.get(i) == group_of[orig]
        print("share of each version grouped with its original at the chosen threshold: "
              + ", ".join(f"{v} {c / n_src:.3f}" for v, c in grouped.items()))
        # a folder rarely holds all six versions to chain through: the original and one version alone
        direct = np.array(own).reshape(n_src, -1) > t
        print("share linked directly to its original (the two alone in a folder): copy 1.000, "
              + ", ".join(f"{v} {direct[:, i].mean():.3f}" for i, v in enumerate(VARIANTS[2:])) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
