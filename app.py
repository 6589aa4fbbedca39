#!/usr/bin/env python
"""The search page: type a description, get the best-matching photos (or search with a photo).

    python app.py --work-dir work/demo                       # the demo run's checkpoint and images
    python app.py --collection WORK_DIR/collections/Pictures # an own-photo folder (index_folder.py)

Everything (checkpoint, projected image embeddings, search index, text backbone) is loaded once at
start; each query is one text encoding plus one index search. Listens on 127.0.0.1 unless --host.
Only the photos of the served collection are exposed over HTTP.

Programmatic use (JSON-friendly results, one dict per hit)::

    from gradio_client import Client
    hits = Client("http://127.0.0.1:7860/").predict(query="a dog in the snow", k=5, api_name="/search")
    # [{"rank": 1, "score": 0.61, "name": "...jpg", "image_path": "/.../...jpg", "captions": [...]}, ...]
"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
from pathlib import Path

import config
from paths import Layout

log = logging.getLogger("app")

DEFAULT_EXAMPLES = ["a dog running in the snow", "two children playing on the beach",
                    "a man riding a bicycle down the street", "a woman in a red dress"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="trained checkpoint (default: WORK_DIR/checkpoints/best.pt; with --collection, the "
                        "one it was indexed with)")
    p.add_argument("--work-dir", type=Path, default=config.WORK_DIR,
                   help="where generated files are (default: the original layout, data/ and checkpoints/)")
    p.add_argument("--images", type=Path, default=None,
                   help="the photos folder (default: the one recorded by the image extraction, else "
                        f"{config.IMAGES_DIR})")
    p.add_argument("--captions", type=Path, default=None,
                   help="caption file shown under results (default: config.CAPTIONS_FILE, else the "
                        "checkpoint's; optional)")
    p.add_argument("--image-features", type=Path, default=None,
                   help="image feature cache (default: WORK_DIR/image_embeddings)")
    p.add_argument("--collection", type=Path, default=None,
                   help="serve a photo folder indexed by index_folder.py instead of the dataset")
    p.add_argument("--host", default=config.APP_HOST, help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=config.APP_PORT, help="port (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (default: %(default)s)")
    p.add_argument("--text-weights", type=Path, default=None, help="a local model folder for the text backbone")
    p.add_argument("--image-weights", type=Path, default=None, help="a local weights file for the image backbone")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per query (default: %(default)s: a query is a few small tensor ops; "
                        "concurrent queries run in parallel instead; 0 = torch's default)")
    return p.parse_args(argv)


def _train_hint(args: argparse.Namespace) -> str:
    parts = ["python", "run_train.py"]
    if args.images:
        parts += ["--images", str(args.images)]
    if args.captions:
        parts += ["--captions", str(args.captions)]
    if args.work_dir:
        parts += ["--work-dir", str(args.work_dir)]
    return " ".join(shlex.quote(p) for p in parts)


def load_retriever(args: argparse.Namespace):
    """The Retriever for these arguments, or (None, message) when something must be built first."""
    lay = Layout(args.work_dir)
    checkpoint = args.checkpoint or lay.checkpoints / "best.pt"
    if not args.collection and not checkpoint.is_file():  # said before the slow imports below
        return None, f"no trained checkpoint at {checkpoint}; train one first with: {_train_hint(args)}"
    import torch

    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    from backbones import BackboneUnavailable
    from feature_cache import read_manifest
    from retrieval import Retriever, RetrieverError, default_captions, default_image_root

    kw = dict(device=args.device, text_weights=args.text_weights, image_weights=args.image_weights)
    if args.collection:
        if not (args.collection / "manifest.json").is_file():
            return None, (f"no indexed photo folder in {args.collection}; index one first with: "
                          f"python index_folder.py PHOTO_FOLDER --out {shlex.quote(str(args.collection))}")
        if args.checkpoint and not args.checkpoint.is_file():
            return None, f"checkpoint not found: {args.checkpoint}; train one first with: {_train_hint(args)}"
        try:
            return Retriever.from_collection(args.collection, args.checkpoint, **kw), ""
        except FileNotFoundError as err:
            return None, f"{err}; train one first with: {_train_hint(args)}"
        except (RetrieverError, BackboneUnavailable) as err:
            return None, str(err)
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    features = args.image_features or lay.image_features
    images = args.images or default_image_root(features, config.IMAGES_DIR)
    recorded = (read_manifest(features) or {}).get("captions_file")
    captions = default_captions([args.captions, state.get("captions_file"), recorded, config.CAPTIONS_FILE])
    if args.captions and captions != args.captions:
        log.warning("caption file %s not found; results are shown without captions", args.captions)
    del state
    try:
        return Retriever.from_checkpoint(checkpoint, features, images, captions, **kw), ""
    except (RetrieverError, BackboneUnavailable) as err:
        return None, str(err)


def example_queries(retriever, n: int = 4) -> list[str]:
    """A few real captions of indexed photos (evenly spread), else generic descriptions."""
    if not retriever.has_captions:
        return DEFAULT_EXAMPLES
    rows = [r for r in range(len(retriever)) if retriever.captions_of(r)]
    picks = [rows[i * len(rows) // n] for i in range(min(n, len(rows)))]
    return [min(retriever.captions_of(r), key=len).rstrip(" .") for r in picks] or DEFAULT_EXAMPLES


GALLERY_PIXELS = 640  # longest side of a symlinked photo sent as pixels


def hit_label(hit) -> str:
    label = f"#{hit.rank} · {hit.score:.3f} · {hit.name}"
    if hit.captions:
        label += f" — {hit.captions[0]}"
    return label


def api_hit(hit) -> dict:
    """A hit as plain JSON for the API. The path is sent as "image_path": gradio_client takes any
    dict with a "path" key for a file and would replace the whole hit by a downloaded copy."""
    d = hit.to_dict()
    d["image_path"] = d.pop("path")
    return d


def gallery_image(path: str, root: Path):
    """What the gallery shows for a hit: its path, or for a photo that is a symlink to a file outside
    the collection folder, its pixels (Gradio refuses to serve a target outside ``allowed_paths``,
    and allowing the target's folder would expose files that were never indexed)."""
    real = Path(os.path.realpath(path))
    if real.is_relative_to(root):
        return path
    from PIL import Image, ImageOps

    with Image.open(real) as img:
        img.draft("RGB", (GALLERY_PIXELS, GALLERY_PIXELS))  # JPEG: decode at reduced size
        img = ImageOps.exif_transpose(img).convert("RGB")
    img.thumbnail((GALLERY_PIXELS, GALLERY_PIXELS))
    return img


def build_ui(retriever):
    import gradio as gr

    def gallery(hits):
        return [(gallery_image(h.path, retriever.images_root), hit_label(h)) for h in hits]

    def run_text(query: str, k: float):
        t0 = time.perf_counter()
        try:
            hits = retriever.search_text(query, int(k))
        except ValueError as err:
            raise gr.Error(str(err))
        ms = (time.perf_counter() - t0) * 1000
        return gallery(hits), f"{len(hits)} results in **{ms:.0f} ms** (one text encoding + one {retriever.kind} search)"

    def run_image(image, k: float):
        t0 = time.perf_counter()
        try:
            hits = retriever.search_image(image, int(k))
        except (ValueError, RuntimeError) as err:  # no image; image backbone unavailable
            raise gr.Error(str(err))
        ms = (time.perf_counter() - t0) * 1000
        return gallery(hits), f"{len(hits)} results in **{ms:.0f} ms** (one image encoding + one {retriever.kind} search)"

    def search(query: str, k: int = config.TOP_K) -> list[dict]:
        """Text-to-image search: the k best photos for a description, best first.

        Each hit: rank (1-based), score (cosine similarity), name (id in the collection), image_path
        (on the server) and captions (known captions of the photo, possibly empty).
        """
        try:
            return [api_hit(h) for h in retriever.search_text(query, min(int(k), config.MAX_TOP_K))]
        except ValueError as err:
            raise gr.Error(str(err))

    with gr.Blocks(title="Text-to-image search", analytics_enabled=False) as demo:
        gr.Markdown("## Text-to-image search")
        gr.Markdown(f"Searching {retriever.describe()}", elem_id="index-info")
        with gr.Tab("Describe a photo"):
            with gr.Row():
                query = gr.Textbox(label="Description", placeholder="e.g. a dog running in the snow",
                                   max_length=2000, scale=4, elem_id="query", submit_btn=False)
                k = gr.Slider(1, config.MAX_TOP_K, value=config.TOP_K, step=1, label="Results", scale=1,
                              elem_id="k")
            button = gr.Button("Search", variant="primary", elem_id="search-button")
            gr.Examples(example_queries(retriever), inputs=query, label="Try")
            timing = gr.Markdown(elem_id="timing")
            results = gr.Gallery(label="Best matches", columns=5, height="auto", object_fit="contain",
                                 elem_id="results", allow_preview=True)
            for trigger in (query.submit, button.click):
                trigger(run_text, [query, k], [results, timing], api_visibility="private")
        with gr.Tab("Search with a photo"):
            with gr.Row():
                photo = gr.Image(type="pil", label="A photo", sources=["upload", "clipboard"], elem_id="photo")
                k2 = gr.Slider(1, config.MAX_TOP_K, value=config.TOP_K, step=1, label="Results")
            button2 = gr.Button("Find similar photos", variant="primary", elem_id="photo-button")
            timing2 = gr.Markdown()
            results2 = gr.Gallery(label="Most similar", columns=5, height="auto", object_fit="contain",
                                  elem_id="photo-results")
            button2.click(run_image, [photo, k2], [results2, timing2], api_visibility="private")
        gr.api(search, api_name="search")
    return demo


def _limit_malloc_arenas(n: int = 2) -> None:
    """glibc gives each request thread its own heap arena (tens of MB each, rarely returned);
    two are plenty for a server whose work is a few small tensor ops per request."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-8, n)  # M_ARENA_MAX
    except (OSError, AttributeError):  # not glibc
        pass


def lean_process() -> None:
    """Settings that keep the serving process small (``main``; bench/app_memory.py measures them)."""
    _limit_malloc_arenas()
    # transformers' BERT code imports torch._dynamo, which loads Triton, a GPU kernel compiler
    # (75 MB resident), though the page never compiles a kernel; with None in sys.modules the
    # import fails and torch treats Triton as absent.
    sys.modules.setdefault("triton", None)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import cli

    cli.setup_logging()
    lean_process()
    t0 = time.perf_counter()
    retriever, problem = load_retriever(args)
    if retriever is None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    # The image backbone is loaded on the first photo query: text search never needs it, and
    # resident memory stays lower for the (usual) text-only use.
    log.info("ready in %.1f s: %s", time.perf_counter() - t0, retriever.describe())

    import gradio as gr

    root = str(retriever.images_root)
    gr.set_static_paths([root])  # served from where they are, not copied into Gradio's cache
    demo = build_ui(retriever)
    demo.queue(default_concurrency_limit=4)
    demo.launch(server_name=args.host, server_port=args.port, allowed_paths=[root], share=False,
                ssr_mode=False, show_error=True, quiet=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
