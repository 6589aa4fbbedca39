#!/usr/bin/env python
"""Evaluate a checkpoint, or an open_clip model zero-shot, on any captioned image set, beside chance
and untrained heads.

Standard protocol on one split: text→image R@1/5/10 (every caption a query), image→text R@1/5/10
(an image query is correct when any of its captions ranks in the top K), rsum and median ranks;
plus one-word queries: the split's most frequent caption nouns, where an image is relevant when
one of its captions contains the noun (mAP and P@5). Missing features are extracted (and cached)
with the checkpoint's own backbones, as stages 1 and 2 would. Writes JSON (with CLIP_benchmark's
keys too: image_retrieval_recall@K for text→image, text_retrieval_recall@K for image→text, as
fractions) and a Markdown table.

    python evaluate.py --split dev ...                                  # the trained checkpoint
    python evaluate.py --model open_clip:ViT-B-32:laion2b_s34b_b79k --split test   # zero-shot, Flickr30K
    python evaluate.py --model ... --split dev --calibrate bench/judgments/flickr8k_dev.tsv  # + curves

--calibrate fits the match-confidence curves on query–photo pairs people judged (photos of this
split) and stores them in the model's checkpoint, so the page and search.py show calibrated
confidence for it.
"""
from __future__ import annotations

import logging
import re
import shlex
import sys
from pathlib import Path

from crossmodal import cli

cli.prepare_process()

import numpy as np  # noqa: E402
import torch  # noqa: E402

from crossmodal.atomic_io import atomic_save_with, atomic_write_json, atomic_write_text  # noqa: E402
from crossmodal.backbones import (  # noqa: E402
    BackboneUnavailable,
    TextBackbone,
    create_image_backbone,
    create_text_backbone,
    views_of,
)
from crossmodal.calibration import calibrate_judged, read_judged  # noqa: E402
from crossmodal.captions import DatasetError, image_of_row_id, load_splits, read_captions  # noqa: E402
from crossmodal.engine import load_text_backbone  # noqa: E402
from crossmodal.evaluation import clip_benchmark_keys, embed_split, evaluate_model, markdown_table, word_queries  # noqa: E402,E501
from crossmodal.features.cache import StaleCacheError, read_manifest  # noqa: E402
from crossmodal.features.extract import extract_caption_features, extract_dataset_images  # noqa: E402
from crossmodal.metrics import chance_retrieval_metrics, chance_word_metrics  # noqa: E402
from crossmodal.paths import Layout  # noqa: E402
from crossmodal.querybank import bank_for_query, image_biases  # noqa: E402
from crossmodal.zero_shot import is_zero_shot, model_folder  # noqa: E402

import config  # noqa: E402
from data_loader import Caches, SplitData, open_caches, split_data  # noqa: E402
from model import CheckpointError, build_model, load_checkpoint  # noqa: E402

log = logging.getLogger("evaluate")


def own_features_command(args, checkpoint: Path, backbones: dict) -> str:
    """An evaluate.py command that evaluates ``checkpoint`` on features of its own backbones, which it
    extracts into a work folder of their own: re-extracting in place (--force) would replace the
    features another model was trained on."""
    tag = re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(backbones[kind]["backbone"] for kind in ("image", "text")))[:80]
    work = args.work_dir.with_name(f"{args.work_dir.name}-{tag}") if args.work_dir else Path("work") / f"eval-{tag}"
    parts = ["python", "evaluate.py", "--checkpoint", checkpoint, "--images", args.images, "--captions", args.captions,
             "--splits", cli.splits_dir(args), "--work-dir", work, "--split", args.split,
             "--word-queries", args.word_queries]
    if args.models_dir != config.MODELS_DIR:
        parts += ["--models-dir", args.models_dir]
    if args.device != "auto":
        parts += ["--device", args.device]
    if args.out:
        parts += ["--out", args.out]
    return shlex.join(str(p) for p in parts)


def ensure_caches(args, captions, backbones: dict, checkpoint: Path) -> Caches:
    """The dataset's caches, extracting those that are missing with the checkpoint's backbones;
    caches made by other backbones are refused, naming the command that evaluates elsewhere."""
    lay = args.layout
    if read_manifest(lay.image_features) is None:
        backbone = create_image_backbone(backbones["image"]["backbone"], models_dir=args.models_dir)
        extract_dataset_images(backbone, args.images, captions, args.captions, lay.image_features,
                               device=args.device, views=views_of(backbones["image"].get("preprocess")))
    if read_manifest(lay.text_features) is None:
        backbone = create_text_backbone(backbones["text"]["backbone"], models_dir=args.models_dir)
        extract_caption_features(backbone, captions, args.captions, lay.text_features, device=args.device)
    return open_caches(lay.image_features, lay.text_features, expected_backbones=backbones,
                       rebuild=own_features_command(args, checkpoint, backbones)
                       + "  (features for this checkpoint in another folder; the ones here stay)")


def main(argv: list[str] | None = None) -> int:
    p = cli.StageParser(__doc__, config)
    p.flags("images", "captions", "splits", "work-dir", "models-dir", "device", "split", "checkpoint", "model",
            "word-queries", "out", out_help="results folder (default: WORK_DIR/results; with --model, that model's "
                                            "folder's)")
    p.add_argument("--calibrate", type=Path, metavar="JUDGED_TSV",
                   help="fit the match-confidence curves on these judged query-photo pairs of the split "
                        "(bench/judgments/*.tsv) and store them in the checkpoint")
    args = p.parse(argv)
    split = "val" if args.split == "dev" else args.split
    try:
        ckpt_path = cli.resolve_checkpoint(args)
        if args.model:  # its features and results go in that model's folder
            args.work_dir = model_folder(args.model, args.layout.models_base, args.models_dir)
            args.layout = Layout(args.work_dir)
        lay = args.layout
        model, state = load_checkpoint(ckpt_path)
        zero_shot = is_zero_shot(state["model_config"])
        captions = read_captions(args.captions)
        splits = load_splits(captions, cli.splits_dir(args))
        if split not in splits or not splits[split]:
            raise DatasetError(f"split {args.split!r} is empty or missing in {cli.splits_dir(args)}")
        caches = ensure_caches(args, captions, state["backbones"], ckpt_path)
        data = split_data(caches, splits[split], use_keywords=False)
        text_top = getattr(model, "text_top", None)
        if text_top is not None or args.word_queries or args.calibrate:  # queries are encoded as search encodes them
            text_backbone = load_text_backbone(state["backbones"]["text"], None, args.models_dir, "cpu", text_top)
        if text_top is not None:  # the cached caption features are the frozen encoder's: re-encoded
            text_of = dict(zip(captions.keys, captions.texts))
            in_split = set(data.image_names)
            texts = [text_of[key] for key in caches.captions.ids if image_of_row_id(key) in in_split]
            data.caption_features = torch.from_numpy(text_backbone.encode(texts, device=args.device)).half()
        word_feats = relevance = words = None
        if args.word_queries:
            words, relevance = word_queries(data, captions.subset(data.image_names), args.word_queries)
            word_feats = torch.from_numpy(text_backbone.encode(words, device=args.device))
        judged = read_judged(args.calibrate) if args.calibrate else None
    except (DatasetError, StaleCacheError, BackboneUnavailable, CheckpointError, FileNotFoundError, ValueError) as err:
        log.error("%s", err)
        return 2

    counts = np.bincount(data.caption_image, minlength=len(data.image_names))
    chance = chance_retrieval_metrics(len(data.image_names), counts)
    if relevance is not None:
        cw = chance_word_metrics(relevance)
        chance.update({"word_map": cw["map"], "word_p5": cw["p5"]})
    rows = {"chance": chance}
    if zero_shot:
        trained = f"zero-shot ({state['backbones']['image']['backbone']})"
    else:
        torch.manual_seed(0)  # the untrained row is the same heads' initialisation every run
        rows["untrained heads"] = evaluate_model(build_model(state["model_config"]).eval(), data, word_feats, relevance)
        trained = f"trained ({ckpt_path.name}, epoch {state['epoch']})"
    rows[trained] = evaluate_model(model, data, word_feats, relevance)
    if state.get("querybank") is not None:  # what search uses; the plain cosine row stays for comparison
        rows[f"{trained} + querybank normalisation"] = evaluate_model(model, data, word_feats, relevance,
                                                                      state["querybank"])
    table = markdown_table(rows)
    out_dir = args.out or lay.results
    stem = f"eval_{split}"
    clip_benchmark = {name: clip_benchmark_keys(m) for name, m in rows.items() if name != "chance"}
    report = {"checkpoint": str(ckpt_path), "split": split, "images": len(data.image_names),
              "captions": data.n_captions, "backbones": state["backbones"], "word_queries": words,
              "results": rows, "clip_benchmark": clip_benchmark}
    if judged is not None:
        try:
            report["calibration"] = calibrate(ckpt_path, model, state, data, text_backbone, judged, args.device)
        except ValueError as err:
            log.error("%s: %s", args.calibrate, err)
            return 2
    atomic_write_json(out_dir / f"{stem}.json", report)
    atomic_write_text(out_dir / f"{stem}.md",
                      f"{args.captions.name}, split {split}: {len(data.image_names)} images, "
                      f"{data.n_captions} captions, {len(words or [])} one-word queries\n\n" + table)
    print(table)
    last = list(clip_benchmark)[-1]
    print(f"CLIP_benchmark keys ({last}): "
          + ", ".join(f"{k} {v:.4f}" for k, v in clip_benchmark[last].items()))
    if judged is not None:
        held = {kind: c["held_out"] for kind, c in report["calibration"].items() if isinstance(c, dict) and
                "held_out" in c}
        print(f"match-confidence curves stored in {ckpt_path}; on the judged pairs held out: "
              + "; ".join(f"{kind} ECE {h['ece']:.3f} over {h['hits']} pairs" for kind, h in held.items()))
    print(f"written: {out_dir / (stem + '.json')}, {out_dir / (stem + '.md')}")
    return 0


def calibrate(checkpoint: Path, model: torch.nn.Module, state: dict, data: SplitData, text_backbone: TextBackbone,
              judged: list[dict], device: str) -> dict:
    """Fit the curves on the judged pairs (``calibration.calibrate_judged``), each scored as search scores
    it over this split, and store them in ``checkpoint``."""
    row_of = {name: i for i, name in enumerate(data.image_names)}
    missing = sorted({r["photo"] for r in judged} - set(row_of))
    if missing:
        raise ValueError(f"{len(missing)} judged photos are not in this split (e.g. {missing[0]}); "
                         "calibrate on the split they were judged in")
    with torch.inference_mode():
        img, _ = embed_split(model, data)
    querybank = state.get("querybank")
    biases = image_biases(querybank, img) if querybank is not None else {}

    def score(pairs) -> np.ndarray:
        texts = [r["query"] for r in pairs]
        with torch.inference_mode():
            q = model.encode_text(torch.from_numpy(text_backbone.encode(texts, device=device))).float()
        cols = torch.as_tensor([row_of[r["photo"]] for r in pairs])
        out = (q * img[cols].float()).sum(1).numpy()
        for i, text in enumerate(texts):  # ranked as search ranks: minus the query kind's querybank bias
            bank = bank_for_query(text, tuple(biases))
            if bank is not None:
                out[i] -= biases[bank][int(cols[i])]
        return out

    report = calibrate_judged(judged, score)
    state["calibration"] = report
    atomic_save_with(checkpoint, lambda f: torch.save(state, f))
    return report


if __name__ == "__main__":
    sys.exit(main())
