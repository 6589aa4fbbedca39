#!/usr/bin/env python
"""The labelling rule's caption-similarity thresholds (``calibration.LABEL_SIMILARITY``), chosen so
that the confidence curves fitted on the rule's labels agree best with people's judgments.

For each threshold of a grid, it labels every dev top hit by the rule, fits the curves as training
does (``calibration.calibrate_dev``), and measures the expected calibration error against the
judged pairs of the fit half (``bench/label_rule.py``'s split) whose queries are what people
type: dev captions, typed phrases and words, not web alt-texts (which read like page metadata).
It prints the error per threshold and query kind and the best threshold of each kind;
``bench.judged_confidence`` then measures the curves on the other half.

    python -m bench.label_threshold --checkpoint work/mix/checkpoints/best.pt \\
        --source work/kw/new --source work/kw/web \\
        --set bench/judgments/flickr8k_dev.tsv ../shared/data/flickr8k/flickr8k.token \\
              ../shared/data/flickr8k/splits work/kw/default \\
        --set bench/judgments/web_dev.tsv ~/webdata/tune work/kw/web/splits work/kw/web
"""
from __future__ import annotations

import argparse
from pathlib import Path

from bench import _common as C  # first: it sets what torch reads when it loads

# isort: split
import numpy as np  # noqa: E402

from bench.judged_confidence import judged_scores  # noqa: E402
from crossmodal import calibration  # noqa: E402
from crossmodal.backbones import create_text_backbone  # noqa: E402

from data_loader import open_source  # noqa: E402
from model import load_checkpoint  # noqa: E402

THRESHOLDS = np.round(np.arange(0.20, 0.96, 0.05), 2)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--source", type=Path, action="append", required=True,
                   help="a dataset's work dir (its features, and split lists in WORK_DIR/splits)")
    p.add_argument("--set", nargs=4, action="append", required=True,
                   metavar=("JUDGED", "CAPTIONS", "SPLITS", "WORK_DIR"), help="as for bench.judged_confidence")
    args = p.parse_args(argv)
    model, state = load_checkpoint(args.checkpoint)
    sets = [open_source(w, state["backbones"], False)[1:] for w in args.source]
    text = create_text_backbone(state["backbones"]["text"]["backbone"])
    parts = [judged_scores(Path(j), Path(c), Path(s), Path(w), args.checkpoint, half="fit") for j, c, s, w in args.set]
    judged = {k: np.concatenate([np.asarray(part[k]) for part in parts]) for k in parts[0]}
    rows, best = [], {}
    for t in THRESHOLDS:
        calibration.LABEL_SIMILARITY.update({kind: float(t) for kind in calibration.QUERY_KINDS})
        curves = calibration.curves_of(calibration.calibrate_dev(model, sets, text.encode, state.get("querybank")))
        row = [f"{t:.2f}"]
        for kind in calibration.QUERY_KINDS:
            sel = (judged["kind"] == kind) & ~judged["alt_text"]
            conf = curves[kind].confidence(judged["score"][sel])
            ece = calibration.expected_calibration_error(conf, judged["match"][sel])
            row += [f"{ece:.3f}", f"{conf.mean():.2f}"]
            if kind not in best or ece < best[kind][0]:
                best[kind] = (ece, float(t))
        rows.append(row)
        print(" | ".join(row), flush=True)
    print(C.table(["threshold"] + [f"{kind} {what}" for kind in calibration.QUERY_KINDS
                                   for what in ("ECE (judged fit half)", "mean confidence")], rows))
    typed = ~judged["alt_text"]
    rate = {kind: judged["match"][(judged["kind"] == kind) & typed].mean() for kind in calibration.QUERY_KINDS}
    pairs = {kind: int(((judged["kind"] == kind) & typed).sum()) for kind in rate}
    print("judged match rate (fit half, typed queries): "
          + ", ".join(f"{kind} {value:.2f} ({pairs[kind]} pairs)" for kind, value in rate.items()))
    for kind, (ece, t) in best.items():
        print(f"{kind} queries: threshold {t:.2f} (fit-half ECE {ece:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
