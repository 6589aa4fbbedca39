#!/usr/bin/env python
"""How often automatic match labels agree with people's judgments (bench/judgments/), and the
caption-similarity threshold of the labelling rule the match confidence is fitted on.

A rule labels a query–photo pair from the photo's captions alone, so it can label every top hit of
every dev query. The rules compared, per query kind:

- ``nouns``: the query's own photo, or the photo's captions name every noun the query names
  (the rule the confidence was fitted on before);
- ``similar``: the query's own photo, or one of the photo's captions is close in meaning to the
  query: the cosine of their text-backbone features is at least a threshold;
- ``nouns or similar``.

The judged queries are split in two (alternating sheets within each dataset and kind): the
threshold is chosen on one half (the best agreement), and every rule is measured on the other.

    python -m bench.label_rule \\
        --set bench/judgments/flickr8k_dev.tsv ../shared/data/flickr8k/flickr8k.token work/kw/default \\
        --set bench/judgments/web_dev.tsv ~/webdata/tune work/kw/web
"""
from __future__ import annotations

import argparse
from pathlib import Path

from bench import _common as C  # first: it sets what torch reads when it loads

# isort: split
import numpy as np  # noqa: E402

from crossmodal.backbones import create_text_backbone  # noqa: E402
from crossmodal.calibration import best_caption_similarity, in_fit_half, read_judged  # noqa: E402
from crossmodal.captions import read_captions  # noqa: E402
from crossmodal.features.cache import load_cache  # noqa: E402
from crossmodal.keywords import nouns_of  # noqa: E402

THRESHOLDS = np.round(np.arange(0.05, 0.96, 0.01), 2)


def pair_features(rows: list[dict], captions_path: Path, work_dir: Path) -> dict[str, np.ndarray]:
    """Per judged pair: the judgment, the query kind, the fit/measure half, whether the query is one
    of the photo's own captions, whether the photo's captions name the query's nouns, and the best
    caption similarity."""
    captions = read_captions(captions_path)
    by_photo: dict[str, list] = {}
    for cap in captions.captions:
        by_photo.setdefault(cap.image, []).append(cap)
    cache = load_cache(work_dir / "text_embeddings")
    row_of = {key: i for i, key in enumerate(cache.ids)}
    backbone = create_text_backbone(cache.manifest["backbone"])
    queries = sorted({r["query"] for r in rows})
    query_feats = dict(zip(queries, backbone.encode(queries)))
    fit_half = in_fit_half(rows)
    out = {k: [] for k in ("match", "short", "fit", "own", "nouns", "similarity")}
    for r in rows:
        caps = by_photo[r["photo"]]
        feats = np.asarray(cache.features[[row_of[c.key] for c in caps]], dtype=np.float32)
        sim = best_caption_similarity(query_feats[r["query"]][None], feats, np.zeros(len(caps), int), 1)[0, 0]
        query_nouns = set(nouns_of(r["query"])) or {r["query"].lower()}
        photo_nouns = set().union(*(nouns_of(c.text) for c in caps))
        out["match"].append(r["match"] == "1")
        out["short"].append(r["kind"] == "short")
        out["fit"].append(fit_half[r["sheet"]])
        out["own"].append(any(" ".join(c.text.lower().split()) == " ".join(r["query"].lower().split())
                              for c in caps))
        out["nouns"].append(query_nouns <= photo_nouns)
        out["similarity"].append(sim)
    return {k: np.asarray(v) for k, v in out.items()}


def agreement(label: np.ndarray, match: np.ndarray) -> tuple[float, float, float]:
    """(share of pairs where the rule agrees, share of judged matches it calls matches, share of its
    matches people judged matches)."""
    return (float(np.mean(label == match)), float(label[match].mean()) if match.any() else float("nan"),
            float(match[label].mean()) if label.any() else float("nan"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", nargs=3, action="append", metavar=("JUDGED", "CAPTIONS", "WORK_DIR"), required=True,
                   help="judged pairs, the dataset's captions (file or img2dataset folder), its work dir")
    args = p.parse_args(argv)
    parts = [pair_features(read_judged(Path(j)), Path(c), Path(w)) for j, c, w in args.set]
    d = {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}
    print(f"{len(d['match'])} judged pairs, {int(d['match'].sum())} judged matches; "
          f"threshold chosen on {int(d['fit'].sum())} pairs, rules measured on the other {int((~d['fit']).sum())}")
    table, chosen = [], {}  # chosen: kind -> (fit-half agreement, rule, threshold) of the best rule
    for kind, is_short in (("sentence", False), ("short", True)):
        sel = d["short"] == is_short
        fit, held = sel & d["fit"], sel & ~d["fit"]
        rules = {"similar": lambda t: d["own"] | (d["similarity"] >= t),  # first: it wins a tie
                 "nouns or similar": lambda t: d["own"] | d["nouns"] | (d["similarity"] >= t),
                 "nouns": lambda t: d["own"] | d["nouns"]}
        for name, rule in rules.items():
            scores = [agreement(rule(t)[fit], d["match"][fit])[0] for t in THRESHOLDS]
            t = float(THRESHOLDS[int(np.argmax(scores))]) if name != "nouns" else float("nan")
            fit_agreement = agreement(rule(t)[fit], d["match"][fit])[0]
            acc, recall, precision = agreement(rule(t)[held], d["match"][held])
            if kind not in chosen or fit_agreement > chosen[kind][0]:
                chosen[kind] = (fit_agreement, name, t)
            table.append([kind, name, "-" if name == "nouns" else f"{t:.2f}", f"{fit_agreement:.3f}", int(held.sum()),
                          f"{d['match'][held].mean():.2f}", f"{acc:.3f}", f"{recall:.2f}", f"{precision:.2f}"])
    print(C.table(["queries", "rule", "threshold (fit half)", "agreement (fit half)", "measured pairs",
                   "judged match rate", "agreement", "judged matches labelled match",
                   "labelled matches judged match"], table))
    for kind, (_, name, t) in chosen.items():
        print(f"{kind} queries: the best rule on the fit half is {name!r}" + ("" if name == "nouns" else
                                                                              f" at threshold {t:.2f}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
