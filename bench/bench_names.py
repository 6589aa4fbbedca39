#!/usr/bin/env python
"""File and folder names fused with the semantic ranking (crossmodal.name_match): does it help, and
do meaningless names leave the ranking alone?

On Flickr8k dev (1,000 photos, 5 captions each) with a trained checkpoint and its caches, the
semantic ranking of every caption query (the heads' cosine similarity minus the querybank bias, as
search ranks) is fused by reciprocal rank fusion with the name ranking of three virtual copies of
the photo set (lists of relative paths; no file is copied):

* Flickr ids   the photos' own names (``1000268201_693b08cb0e.jpg``): no name words at all;
* renamed      a seeded ``--fraction`` of the photos named after the nouns of their caption #0,
               half as a file name (``dog_beach_017.jpg``, up to two nouns), half as a folder
               named after the first noun in the plural, with a camera file name
               (``dogs/IMG_0017.jpg``); the rest keep their Flickr ids.

The queries are captions #1 to #4 of each photo, never caption #0 that the names come from, so a
name is never the query's own words. The name weight is chosen on captions #1 and #2 (the tuning
half) and reported on captions #3 and #4 (the held-out half), with a bootstrap 95% interval of
the change against semantic only (queries resampled).

    python -m bench.bench_names --work-dir work/flickr8k      # a trained Flickr8k work folder
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from bench import _common as C  # first: it sets what torch reads when it loads

# isort: split
import numpy as np  # noqa: E402
import torch  # noqa: E402

from crossmodal.captions import image_of_row_id, load_splits, read_captions  # noqa: E402
from crossmodal.cli import setup_logging  # noqa: E402
from crossmodal.evaluation import embed_split  # noqa: E402
from crossmodal.fusion import RRF_K  # noqa: E402
from crossmodal.keywords import IRREGULAR_PLURALS, method, nouns_of  # noqa: E402
from crossmodal.name_match import NAME_WEIGHT, NameIndex, fuse_names, path_words  # noqa: E402
from crossmodal.paths import Layout  # noqa: E402
from crossmodal.querybank import bank_for_query, image_biases  # noqa: E402

from data_loader import open_caches, split_data  # noqa: E402
from model import load_checkpoint  # noqa: E402

log = logging.getLogger("bench_names")
KS = (1, 5, 10)
NAME_CAPTION = 0  # the names come from this caption; the queries are the others
TUNING = (1, 2)  # caption numbers the weight is chosen on; the rest are held out


def parse_args(argv=None) -> argparse.Namespace:
    d = C.SHARED_DATA / "flickr8k"
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", type=Path, default=C.ROOT / "work" / "flickr8k",
                   help="trained work folder: checkpoints/best.pt, image_embeddings/, text_embeddings/")
    p.add_argument("--captions", type=Path, default=d / "flickr8k.token")
    p.add_argument("--splits", type=Path, default=d / "splits")
    p.add_argument("--split", default="val", help="val (dev) | test")
    p.add_argument("--fraction", type=float, default=0.3, help="share of photos renamed after a noun")
    p.add_argument("--weights", default="0.01,0.02,0.05,0.1,0.25,1", help="name weights tried (semantic weight 1)")
    p.add_argument("--k", type=float, default=RRF_K, help="the RRF constant")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the intervals")
    return p.parse_args(argv)


def plural(noun: str) -> str:
    irregular = {singular: plural for plural, singular in IRREGULAR_PLURALS.items()}
    if noun in irregular:
        return irregular[noun]
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2:-1] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def renamed_paths(names: list[str], nouns: list[list[str]], fraction: float, seed: int) -> tuple[list[str], np.ndarray]:
    """The renamed copy's relative paths, and which rows were renamed."""
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(len(names))[: round(fraction * len(names))]
    paths, renamed = list(names), np.zeros(len(names), dtype=bool)
    for i, row in enumerate(chosen):
        if not nouns[row]:
            continue  # a caption without a noun: the photo keeps its id
        renamed[row] = True
        if i % 2 == 0:
            paths[row] = "_".join(nouns[row][:2]) + f"_{i:03d}.jpg"
        else:
            paths[row] = f"{plural(nouns[row][0])}/IMG_{i:04d}.jpg"
    return paths, renamed


def ranks_of(order: list[int] | np.ndarray, target: int) -> int:
    return int(np.flatnonzero(np.asarray(order) == target)[0])


def recalls(ranks: np.ndarray) -> dict[str, float]:
    out = {f"R@{k}": 100.0 * float((ranks < k).mean()) for k in KS}
    out["rsum"] = sum(out[f"R@{k}"] for k in KS)
    return out


def bootstrap_delta(base: np.ndarray, new: np.ndarray, k: int, n: int, seed: int) -> tuple[float, float]:
    """95% interval of the change in R@k (points) over queries resampled with replacement."""
    rng = np.random.default_rng(seed)
    diff = (new < k).astype(float) - (base < k).astype(float)
    means = [diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(n)]
    return 100.0 * float(np.percentile(means, 2.5)), 100.0 * float(np.percentile(means, 97.5))


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging()
    lay = Layout(args.work_dir)
    C.require(lay.best_checkpoint, "a trained checkpoint (--work-dir)")
    C.require(args.captions, "the Flickr8k captions")
    model, state = load_checkpoint(lay.best_checkpoint)
    captions = read_captions(args.captions)
    split = load_splits(captions, args.splits)[args.split]
    caches = open_caches(lay.image_features, lay.text_features, expected_backbones=state["backbones"])
    data = split_data(caches, split, use_keywords=False)
    names = data.image_names
    local = {n: i for i, n in enumerate(names)}
    keys = [rid for rid in caches.captions.ids if image_of_row_id(rid) in local]  # split_data's caption order
    assert [local[image_of_row_id(k)] for k in keys] == data.caption_image.tolist()
    number = np.array([int(k.rsplit("#", 1)[1]) for k in keys])
    text_of = {c.key: c.text for c in captions.captions}

    with torch.inference_mode():
        img, txt = (t.float().numpy() for t in embed_split(model, data))
    scores = txt @ img.T
    querybank = state.get("querybank")
    if querybank is not None:  # what search subtracts (querybank.bank_for_query picks the bank)
        biases = image_biases(querybank, img)
        for q, key in enumerate(keys):
            bank = bank_for_query(text_of[key], tuple(biases))
            if bank:
                scores[q] -= biases[bank]
    semantic = np.argsort(-scores, axis=1, kind="stable")

    nouns = [nouns_of(text_of[f"{n}#{NAME_CAPTION}"]) for n in names]
    paths, renamed = renamed_paths(names, nouns, args.fraction, args.seed)
    flickr, named = NameIndex(names), NameIndex(paths)
    queries = np.flatnonzero(number != NAME_CAPTION)
    target = data.caption_image
    weights = [float(w) for w in args.weights.split(",")]

    semantic_lists = [semantic[q].tolist() for q in range(len(keys))]

    def ranks(index: NameIndex, weight: float) -> np.ndarray:
        return np.array([ranks_of(fuse_names(semantic_lists[q], index, text_of[keys[q]], args.k, weight), target[q])
                         for q in queries])

    base = np.array([ranks_of(semantic[q], target[q]) for q in queries])
    same = sum(fuse_names(semantic_lists[q], flickr, text_of[keys[q]], args.k, NAME_WEIGHT) == semantic_lists[q]
               for q in queries)
    with_ids = ranks(flickr, NAME_WEIGHT)
    by_weight = {w: ranks(named, w) for w in sorted(set(weights) | {NAME_WEIGHT})}
    tuning = np.isin(number[queries], TUNING)
    best = max(weights, key=lambda w: (recalls(by_weight[w][tuning])["rsum"], -abs(w - 1)))

    print(f"\n## bench_names: file and folder names fused with the semantic ranking ({args.split} split)\n")
    print(f"- {len(names)} photos, {len(queries)} queries (captions #1-#4; the names come from caption "
          f"#{NAME_CAPTION}); checkpoint {lay.best_checkpoint} ({state['backbones']['image']['backbone']} + "
          f"{state['backbones']['text']['backbone']}), querybank {'on' if querybank is not None else 'off'}")
    print(f"- renamed: {renamed.sum()} photos ({100 * renamed.mean():.0f}%; seed {args.seed}), nouns by "
          f"{method()}; e.g. {', '.join(paths[i] for i in np.flatnonzero(renamed)[:4])}")
    print(f"- name words: Flickr ids {flickr.vocabulary} distinct, renamed copy {named.vocabulary} distinct; "
          f"RRF k={args.k:g}, semantic weight 1")
    print(f"- Flickr-id names: fused ranking identical to semantic only for {same} of {len(queries)} queries "
          f"(words found in the 1,000 names: {sum(len(path_words(n)) for n in names)})\n")
    rows = [("semantic only", base), (f"+ Flickr-id names, weight {NAME_WEIGHT:g}", with_ids)]
    rows += [(f"+ renamed names, weight {w:g}", by_weight[w]) for w in weights]
    print(C.table(["ranking (all queries)", "R@1", "R@5", "R@10", "T→I rsum"],
                  [(name, *(f"{v:.1f}" for v in recalls(r).values())) for name, r in rows]))

    held = ~tuning
    print(f"\nName weight chosen on the tuning half (captions #{TUNING[0]}, #{TUNING[1]}): {best:g} "
          f"(crossmodal.name_match.NAME_WEIGHT = {NAME_WEIGHT:g}). Held-out half (captions #3, #4), "
          f"{held.sum()} queries, split by whether the query's photo was renamed:\n")
    table = []
    for label, sel in (("all", held), ("photo renamed", held & renamed[target[queries]]),
                       ("photo kept its id", held & ~renamed[target[queries]])):
        for name, r in (("semantic only", base), (f"+ renamed names, weight {NAME_WEIGHT:g}", by_weight[NAME_WEIGHT])):
            m = recalls(r[sel])
            delta = "" if r is base else " / ".join(
                f"[{lo:+.1f}, {hi:+.1f}]" for lo, hi in (bootstrap_delta(base[sel], r[sel], k, args.bootstrap,
                                                                           args.seed) for k in (1, 10)))
            table.append((name, label, int(sel.sum()), *(f"{v:.1f}" for v in m.values()), delta))
    print(C.table(["ranking", "queries", "n", "R@1", "R@5", "R@10", "T→I rsum", "95% CI of ΔR@1 / ΔR@10"],
                  table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
