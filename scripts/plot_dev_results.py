#!/usr/bin/env python
"""Bar chart of Flickr8k dev results from ``evaluate.py`` JSON reports (one bar group per report).

    python -m scripts.plot_dev_results LABEL=work/x/results/eval_val.json ... --out docs/flickr8k_dev.png

Each report's trained rows are drawn (plain cosine, and with querybank normalisation where the
report has it): rsum on the left axis, text->image R@1 on the right.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from crossmodal.atomic_io import atomic_open  # noqa: E402


def trained_rows(report: dict) -> tuple[dict, dict | None]:
    """(the plain trained row, the querybank row or None) of an evaluate.py report."""
    rows = report["results"]
    plain = next(v for k, v in rows.items() if k.startswith("trained") and "querybank" not in k)
    qb = next((v for k, v in rows.items() if k.startswith("trained") and "querybank" in k), None)
    return plain, qb


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reports", nargs="+", help="LABEL=path/to/eval_val.json")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--target", type=float, default=None, help="draw a horizontal rsum target line")
    args = p.parse_args(argv)
    labels, plain, normalised = [], [], []
    for item in args.reports:
        label, _, path = item.partition("=")
        if not path:
            p.error(f"expected LABEL=path, got {item!r}")
        a, b = trained_rows(json.loads(Path(path).read_text(encoding="utf-8")))
        labels.append(label.replace("\\n", "\n"))
        plain.append(a)
        normalised.append(b)
    fig, ax = plt.subplots(figsize=(1.9 * len(labels) + 2, 4.2))
    x = range(len(labels))
    w = 0.38
    bars = ax.bar([i - w / 2 for i in x], [r["rsum"] for r in plain], w, label="rsum, cosine", color="#9bb7d4")
    ax.bar_label(bars, fmt="%.1f", fontsize=8)
    qb = [(i, r) for i, r in enumerate(normalised) if r is not None]
    if qb:
        bars = ax.bar([i + w / 2 for i, _ in qb], [r["rsum"] for _, r in qb], w,
                      label="rsum, + querybank normalisation", color="#2f6ea6")
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
    if args.target:
        ax.axhline(args.target, color="#c0392b", lw=1, ls="--", label=f"target rsum {args.target:g}")
    low = min(r["rsum"] for r in plain)
    ax.set_ylim(low - 40, max(max(r["rsum"] for r in plain), max((r["rsum"] for _, r in qb), default=0)) + 25)
    ax.set_xticks(list(x), labels, fontsize=8)
    ax.set_ylabel("dev rsum")
    ax2 = ax.twinx()
    best = [(b or a)["t2i_r1"] for a, b in zip(plain, normalised)]
    ax2.plot(list(x), best, "o-", color="#e67e22", label="T→I R@1 (as searched)")
    ax2.set_ylabel("text→image R@1 (%)")
    ax2.set_ylim(min(best) - 6, max(best) + 3)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper left")
    ax.set_title("Flickr8k dev (1,000 images, 5,000 captions), frozen offline backbones", fontsize=10)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(args.out, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
