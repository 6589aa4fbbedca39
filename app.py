#!/usr/bin/env python
"""The search page: type a description, get the best-matching photos (or search with a photo).

    python app.py --photos ~/Pictures [MORE_FOLDERS ...]     # your own photos, indexed while you search
    python app.py --work-dir work/demo                       # the demo run's checkpoint and images
    python app.py --collection ~/.local/share/crossmodal/photo_index   # a photo index (index_folder.py)
    python app.py --photos ~/Pictures --model open_clip:ViT-B-32:laion2b_s34b_b79k   # zero-shot CLIP

With --photos the page is up at once: the folders are brought up to date in the photo index in a
background thread (new, changed, moved and deleted files; nothing to decode when nothing changed),
the page shows its progress and answers from what is indexed so far. The page has the query
language (filters by date and folder where the photos have them), "more like this", "load more",
each hit's score and match confidence, search with a photo, and a "Duplicates" tab.

Listens on 127.0.0.1 unless --host. Only the searched photos are served over HTTP, each as an image.

Programmatic use (JSON-friendly results, one dict per hit; k a whole number from 1 to 50)::

    from gradio_client import Client, handle_file
    client = Client("http://127.0.0.1:7860/")
    hits = client.predict(query="a dog in the snow", k=5, api_name="/search")
    # [{"rank": 1, "score": 0.61, "confidence": 0.72, "name": "...jpg", "image_path": "/.../...jpg",
    #   "captions": [...], "folder": "", "taken_at": null, ...}, ...]
    hits = client.predict(photo=handle_file("dog.jpg"), k=5, query="", api_name="/search_photo")
    page = client.predict(query="a dog -snow after:2020", k=10, offset=10, like="", api_name="/search_photos")
    groups = client.predict(threshold=0.78, api_name="/duplicates")  # [{"names": [...], "closest": [...]}]
"""
import logging
import os
import signal
import sys
import time

from crossmodal import cli

cli.prepare_process(serving=True)

import config  # noqa: E402

log = logging.getLogger("app")


def parse_args(argv: list[str] | None = None):
    p = cli.StageParser(__doc__, config)
    p.flags("photos", "checkpoint", "model", "collection", "work-dir", "image-features", "models-dir", "text-weights",
            "image-weights", "device", "host", "port", "threads", "upload-grace", "rescan-seconds", "index")
    p.flags("images", "captions", serving=True)
    return p.parse(argv)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    cli.hub_offline_unless_model(argv)
    args = parse_args(argv)
    missing = [str(d) for d in args.photos or () if not d.is_dir()]
    if missing:  # said before anything loads
        print(f"error: no such folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    from model import load_checkpoint

    try:  # with --photos the index is brought up to date in the background while the page serves
        opened = cli.open_engine(args, config, load_checkpoint, background=True)
    except cli.NotServable as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    # The image backbone is loaded on the first photo query: text search never needs it, and
    # resident memory stays lower for the (usual) text-only use.
    log.info("ready in %.1f s: %s", time.perf_counter() - t0, opened.engine.describe())

    from crossmodal.page import serve

    # SIGTERM ends the page as Ctrl-C does, so what it holds (its upload folder) is removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    serve(opened.engine, args.host, args.port, indexer=opened.indexing, upload_grace=args.upload_grace)
    return 0


if __name__ == "__main__":
    sys.exit(main())
