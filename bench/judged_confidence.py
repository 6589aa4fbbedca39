#!/usr/bin/env python
"""The match confidence against people's judgments: a checkpoint's calibrated confidence for each
judged query–photo pair of bench/judgments/ that was not used to choose the labelling rule.

Each pair is scored through the search engine over its dataset's split, as the page scores it
(querybank, query kind, curve). It prints, per query kind and overall: the expected calibration
error against the judgments, how many judged matches are marked confident (>= 0.5) and the
precision of that mark, the score's ROC AUC, and how many queries with a hit people judged a
match have no confident hit or say "No good match" (``search.likely_match``); queries as people type them apart from web
alt-texts used as queries.

    python -m bench.judged_confidence --checkpoint models/pretrained/model.pt \\
        --set bench/judgments/flickr8k_dev.tsv ../shared/data/flickr8k/flickr8k.token \\
              ../shared/data/flickr8k/splits work/kw/default \\
        --set bench/judgments/web_dev.tsv ~/webdata/tune work/kw/web/splits work/kw/web
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench import _common as C  # first: it sets what torch reads when it loads

# isort: split
import numpy as np  # noqa: E402

from bench.judge_sheets import split_engine  # noqa: E402
from crossmodal.calibration import CONFIDENT, expected_calibration_error, in_fit_half, read_judged  # noqa: E402
from crossmodal.querybank import query_kind  # noqa: E402
from crossmodal.search import likely_match  # noqa: E402


def judged_scores(path: Path, captions: Path, splits: Path, work_dir: Path, checkpoint: Path,
                  half: str = "measure") -> dict[str, list]:
    """Each judged pair of one half ("measure": the pairs not used to choose the labelling rule, or
    "fit") with its ranking score and confidence as search computes them."""
    rows = read_judged(path)
    fit_half = in_fit_half(rows)
    rows = [r for r in rows if fit_half[r["sheet"]] == (half == "fit")]
    out = {k: [] for k in ("sheet", "kind", "short", "alt_text", "match", "score", "confidence")}
    with tempfile.TemporaryDirectory() as tmp:
        engine = split_engine(work_dir, captions, splits, "dev", checkpoint, tmp)
        view = engine.current()
        row_of = {name: i for i, name in enumerate(view.collection.names)}
        for r in rows:
            query = engine.text_query(r["query"])
            scores = view.scores(query, np.asarray([row_of[r["photo"]]]))
            if scores.confidence is None:
                raise SystemExit(f"{checkpoint} has no match-confidence curve for {r['kind']} queries")
            out["sheet"].append(f"{path.name}:{r['sheet']}")
            out["kind"].append(query_kind(r["query"]))
            out["short"].append(r["kind"] == "short")
            out["alt_text"].append(r["query_from"] == "alt-text")
            out["match"].append(r["match"] == "1")
            out["score"].append(float(scores.ranking[0]))
            out["confidence"].append(float(scores.confidence[0]))
    return out


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """The probability that a judged match outscores a judged miss (ties count half)."""
    pos, neg = scores[labels], scores[~labels]
    if not len(pos) or not len(neg):
        return float("nan")
    return float(((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum())
                 / (len(pos) * len(neg)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--set", nargs=4, action="append", required=True,
                   metavar=("JUDGED", "CAPTIONS", "SPLITS", "WORK_DIR"),
                   help="judged pairs, the dataset's captions, its split lists, its work dir (image_embeddings/)")
    args = p.parse_args(argv)
    parts = [judged_scores(Path(j), Path(c), Path(s), Path(w), args.checkpoint) for j, c, s, w in args.set]
    d = {k: np.concatenate([np.asarray(part[k]) for part in parts]) for k in parts[0]}
    rows = []
    typed = ~d["alt_text"]  # what people type: descriptions and words, not web pages' alt-texts
    for name, sel in (("sentences (9 words or more)", (d["kind"] == "sentence") & typed),
                      ("phrases (3 to 8 words)", (d["kind"] == "phrase") & typed),
                      ("one or two words", d["short"]), ("all typed queries", typed),
                      ("web alt-texts as queries", d["alt_text"])):
        conf, match = d["confidence"][sel], d["match"][sel]
        called = conf >= CONFIDENT
        sheets = sorted(set(d["sheet"][sel]))
        has_match = [s for s in sheets if (match & (d["sheet"][sel] == s)).any()]
        no_confident = sum(1 for s in has_match if not (called & (d["sheet"][sel] == s)).any())
        no_likely = sum(1 for s in has_match if not likely_match(conf[d["sheet"][sel] == s]))
        no_match = [s for s in sheets if s not in has_match]
        warned = sum(1 for s in no_match if not likely_match(conf[d["sheet"][sel] == s]))
        rows.append([name, len(conf), int(match.sum()), f"{expected_calibration_error(conf, match):.3f}",
                     f"{conf[match].mean():.2f}", f"{called[match].mean():.2f}",
                     f"{match[called].mean():.2f}" if called.any() else "-", f"{auc(d['score'][sel], match):.3f}",
                     f"{no_confident} of {len(has_match)}", f"{no_likely} of {len(has_match)}",
                     f"{warned} of {len(no_match)}"])
    print(f"{args.checkpoint}: judged pairs not used to choose the labelling rule")
    print(C.table(["queries", "pairs", "judged matches", "ECE", "mean confidence of judged matches",
                   "judged matches marked confident", "precision of confident", "score AUC",
                   "queries with a judged match and no confident hit",
                   "... and 'No good match' (hits unlikely to hold one)",
                   "queries without a judged match that say 'No good match'"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
