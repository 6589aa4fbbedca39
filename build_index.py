#!/usr/bin/env python
"""Build an on-disk index of a collection's photos, for collections beyond memory (docs/scaling.md).

    python build_index.py --index work/index                       # the dataset's image features
    python build_index.py --index work/index --ray auto            # shards filled on the Ray cluster
    python app.py --index work/index                               # served memory-mapped

The checkpoint's image head projects every photo's vector (kept beside the features, as the page
keeps them), an IVF-PQ index is trained on a sample, filled shard by shard (Ray tasks with --ray)
and merged on disk, and its recall@10 against exact search is measured on text queries (the
collection's captions, else everyday descriptions). Run again after the collection grew: only the
new photos are added, as a new part; nothing is rebuilt.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from crossmodal import cli

cli.prepare_process()

import torch  # noqa: E402

from crossmodal.atomic_io import file_digest  # noqa: E402
from crossmodal.backbones import QUERY_ENCODER_FILE, BackboneUnavailable, ensure_exported, resolve_device  # noqa: E402
from crossmodal.collection import CollectionError  # noqa: E402
from crossmodal.engine import (  # noqa: E402
    EngineError,
    check_collection,
    load_text_backbone,
    query_encoder_identity,
    served_identity,
    tuning_texts,
)
from crossmodal.features.rows import RowsOf  # noqa: E402
from crossmodal.ondisk_index import build_collection_index  # noqa: E402
from crossmodal.projection import ProjectionCache  # noqa: E402

import config  # noqa: E402
from model import load_checkpoint  # noqa: E402

log = logging.getLogger("build_index")


def main(argv: list[str] | None = None) -> int:
    p = cli.StageParser(__doc__, config)
    p.flags("photos", "checkpoint", "model", "collection", "work-dir", "image-features", "models-dir", "text-weights",
            "device", "ray", "force")
    p.flags("images", "captions", serving=True)
    p.add_argument("--index", type=Path, required=True, help="the index folder (written, or grown)")
    p.add_argument("--nlist", type=int, default=None, help="inverted lists (default: about 4 x sqrt(photos))")
    p.add_argument("--pq", type=int, default=32, help="bytes of PQ code per photo")
    args = p.parse(argv)
    collection = None
    try:
        checkpoint = cli.resolve_checkpoint(args)
        model, state = load_checkpoint(checkpoint)
        collection = cli.open_collection(args, config, state)
        check_collection(collection, state["backbones"], model, checkpoint)
        device = resolve_device(args.device)
        digest = file_digest(checkpoint)
        projections = ProjectionCache(model, digest, state.get("querybank"), device)
        proj, _ = projections.matrix(collection)
        rows = collection.matrix_rows
        vectors = proj if len(rows) == len(proj) else RowsOf(proj, rows)
        text = load_text_backbone(state["backbones"]["text"], args.text_weights, args.models_dir, device,
                                  getattr(model, "text_top", None))
        with torch.inference_mode():
            feats = torch.from_numpy(text.encode(tuning_texts(collection), device=device))
            queries = model.folded_text_encoder()(feats.to(device)).float().cpu().numpy()
        served = build_collection_index(args.index, vectors, queries, served_identity(digest, collection),
                                        nlist=args.nlist, pq_bytes=args.pq, ray_address=args.ray, force=args.force)
        exported = ensure_exported(text, args.index / QUERY_ENCODER_FILE,
                                   query_encoder_identity(digest, state["backbones"]["text"]))
    except (EngineError, CollectionError, BackboneUnavailable, cli.NotServable, ValueError, OSError) as err:
        log.error("%s", err)
        return 2
    finally:
        if collection is not None:
            collection.close()
    print(f"{served['kind']} index of {served['rows']:,} photos in {args.index}: recall@10 "
          f"{served['recall_at_10']:.3f} against exact search on {served['queries']} text queries "
          f"(nprobe {served['nprobe']}, {served['candidates']} re-ranked)")
    print(exported)
    print(f"serve it with: python app.py --index {args.index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
