#!/usr/bin/env python
"""Evaluate a checkpoint on any captioned image set, beside chance and untrained heads.

Standard protocol on one split: text→image R@1/5/10 (every caption a query), image→text R@1/5/10
(an image query is correct when any of its captions ranks in the top K), rsum and median ranks;
plus one-word queries: the split's most frequent caption nouns, where an image is relevant when
one of its captions contains the noun (mAP and P@5). Missing features are extracted (and cached)
with the checkpoint's own backbones. Writes JSON and a Markdown table.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch

import cli
from atomic_io import atomic_write_json, atomic_write_text
from backbones import BackboneUnavailable, create_image_backbone, create_text_backbone, views_of
from data_loader import Caches, SplitData, open_caches, split_data
from datasets import DatasetError, list_hash, load_splits, read_captions
from extract import extract_image_features, extract_text_features
from feature_cache import StaleCacheError, read_manifest
from metrics import chance_retrieval_metrics, chance_word_metrics, retrieval_metrics, word_query_metrics
from model import EnsembleModel, RetrievalModel, build_model
from querybank import caption_bias, image_biases
from train import embed_split, load_checkpoint, set_seed

log = logging.getLogger("evaluate")

N_WORD_QUERIES = 200


def ensure_caches(args: argparse.Namespace, captions, backbones: dict) -> Caches:
    """The dataset's caches, extracting those that are missing with the checkpoint's backbones."""
    lay = cli.layout(args)
    if read_manifest(lay.image_features) is None:
        backbone = create_image_backbone(backbones["image"]["backbone"])
        extract_image_features(backbone, args.images, captions.images, lay.image_features, device=args.device,
                               views=views_of(backbones["image"].get("preprocess")))
    if read_manifest(lay.text_features) is None:
        backbone = create_text_backbone(backbones["text"]["backbone"])
        keys = [f"{c.image}#{c.number}" for c in captions.captions]
        extract_text_features(backbone, captions.texts, keys, lay.text_features, kind="caption", device=args.device,
                              extra={"image_ids_sha256": list_hash(captions.images)})
    return open_caches(lay.image_features, lay.text_features, rerun_hint=cli.data_flags(args),
                       expected_backbones=backbones)


def word_queries(data: SplitData, captions, n_words: int) -> tuple[list[str], np.ndarray]:
    """The split's most frequent caption nouns and which images each is relevant to."""
    from keywords import load_keyword_tools, nouns_of

    tools = load_keyword_tools()
    image_index = {n: i for i, n in enumerate(data.image_names)}
    nouns_per_image: list[set[str]] = [set() for _ in data.image_names]
    for cap in captions.captions:
        j = image_index.get(cap.image)
        if j is not None:
            nouns_per_image[j].update(nouns_of(cap.text, tools))
    counts = Counter(w for s in nouns_per_image for w in s)
    # Ties in count go alphabetically: set iteration order changes with each process's string hash
    # seed, and most_common() alone then picked different words at the cutoff from run to run.
    ranked = sorted(counts.items(), key=lambda wc: (-wc[1], wc[0]))
    # A word relevant to nearly every image says nothing about ranking; keep informative ones.
    words = [w for w, c in ranked if 2 <= c <= 0.5 * len(data.image_names)][:n_words]
    relevance = np.array([[w in s for s in nouns_per_image] for w in words], dtype=bool)
    return words, relevance


def evaluate_model(model: RetrievalModel | EnsembleModel, data: SplitData, word_feats: torch.Tensor | None,
                   relevance: np.ndarray | None, querybank: dict | None = None) -> dict:
    """Metrics of one model; with a ``querybank`` (``querybank.py``) every score is normalised by it."""
    img, txt = embed_split(model, data)
    image_bias = text_bias = word_bias = None
    if querybank is not None:  # one-word queries use the keyword bank, as search does (querybank.bank_for_query)
        biases = image_biases(querybank, img)
        image_bias, word_bias, text_bias = biases["text"], biases.get("keywords"), caption_bias(querybank, txt)
    out = retrieval_metrics(img, txt, data.caption_image, image_bias, text_bias)
    if word_feats is not None:
        with torch.inference_mode():
            words = model.encode_text(word_feats)
        wm = word_query_metrics(img, words, relevance, word_bias)
        out.update({"word_map": wm["map"], "word_p5": wm["p5"]})
    return out


COLUMNS = [("t2i_r1", "T→I R@1"), ("t2i_r5", "R@5"), ("t2i_r10", "R@10"), ("i2t_r1", "I→T R@1"),
           ("i2t_r5", "R@5"), ("i2t_r10", "R@10"), ("rsum", "rsum"), ("t2i_medr", "T→I medr"),
           ("word_map", "word mAP"), ("word_p5", "word P@5")]


def markdown_table(rows: dict[str, dict]) -> str:
    head = "| model | " + " | ".join(c for _, c in COLUMNS) + " |"
    sep = "|---|" + "---:|" * len(COLUMNS)
    lines = [head, sep]
    for name, m in rows.items():
        cells = [f"{m[k]:.1f}" if k in m else "–" for k, _ in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_data_args(p)
    cli.add_device_arg(p)
    p.add_argument("--split", default="val", help="train | val (dev) | test (default: %(default)s)")
    p.add_argument("--checkpoint", type=Path, default=None, help="default: WORK_DIR/checkpoints/best.pt")
    p.add_argument("--word-queries", type=int, default=N_WORD_QUERIES, help="one-word queries (0 to skip)")
    p.add_argument("--out", type=Path, default=None, help="results folder (default: WORK_DIR/results)")
    args = p.parse_args(argv)
    cli.setup_logging()
    split = "val" if args.split == "dev" else args.split
    lay = cli.layout(args)
    ckpt_path = args.checkpoint or lay.checkpoints / "best.pt"
    try:
        model, state = load_checkpoint(ckpt_path)
        captions = read_captions(args.captions)
        splits = load_splits(captions, cli.splits_dir(args))
        if split not in splits or not splits[split]:
            raise DatasetError(f"split {args.split!r} is empty or missing in {cli.splits_dir(args)}")
        caches = ensure_caches(args, captions, state["backbones"])
        data = split_data(caches, splits[split], use_keywords=False)
        word_feats = relevance = words = None
        if args.word_queries:
            words, relevance = word_queries(data, captions.subset(data.image_names), args.word_queries)
            text_backbone = create_text_backbone(state["backbones"]["text"]["backbone"])
            word_feats = torch.from_numpy(text_backbone.encode(words, device=args.device))
    except (DatasetError, StaleCacheError, BackboneUnavailable, FileNotFoundError) as err:
        log.error("%s", err)
        return 2

    counts = np.bincount(data.caption_image, minlength=len(data.image_names))
    chance = chance_retrieval_metrics(len(data.image_names), counts)
    if relevance is not None:
        cw = chance_word_metrics(relevance)
        chance.update({"word_map": cw["map"], "word_p5": cw["p5"]})
    set_seed(0)
    untrained = build_model(state["model_config"]).eval()
    trained = f"trained ({ckpt_path.name}, epoch {state['epoch']})"
    rows = {"chance": chance,
            "untrained heads": evaluate_model(untrained, data, word_feats, relevance),
            trained: evaluate_model(model, data, word_feats, relevance)}
    if state.get("querybank") is not None:  # what search uses; the plain cosine row stays for comparison
        rows[f"{trained} + querybank normalisation"] = evaluate_model(model, data, word_feats, relevance,
                                                                      state["querybank"])
    table = markdown_table(rows)
    out_dir = args.out or lay.results
    stem = f"eval_{split}"
    report = {"checkpoint": str(ckpt_path), "split": split, "images": len(data.image_names),
              "captions": data.n_captions, "backbones": state["backbones"], "word_queries": words,
              "results": rows}
    atomic_write_json(out_dir / f"{stem}.json", report)
    atomic_write_text(out_dir / f"{stem}.md",
                      f"{args.captions.name}, split {split}: {len(data.image_names)} images, "
                      f"{data.n_captions} captions, {len(words or [])} one-word queries\n\n" + table)
    print(table)
    print(f"written: {out_dir / (stem + '.json')}, {out_dir / (stem + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
