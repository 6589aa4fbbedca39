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
import sys
import time
from pathlib import Path

from crossmodal import cli

cli.prepare_process()

import config  # noqa: E402

log = logging.getLogger("app")

DEFAULT_EXAMPLES = ["a dog running in the snow", "two children playing on the beach",
                    "a man riding a bicycle down the street", "a woman in a red dress"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = cli.StageParser(__doc__, config)
    p.flags("checkpoint", "collection", "work-dir", "image-features", "models-dir", "text-weights", "image-weights",
            "device", "host", "port", "threads")
    p.flags("images", "captions", serving=True)
    return p.parse(argv)


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

    from crossmodal.retrieval import MAX_TOP_K, TOP_K

    def gallery(hits):
        return [(gallery_image(h.path, retriever.images_root), hit_label(h)) for h in hits]

    def run_text(query: str, k: float):
        t0 = time.perf_counter()
        try:
            hits = retriever.search_text(query, int(k))
        except ValueError as err:
            raise gr.Error(str(err))
        ms = (time.perf_counter() - t0) * 1000
        return gallery(hits), (f"{len(hits)} results in **{ms:.0f} ms** (one text encoding + one "
                               f"{retriever.kind} search)")

    def run_image(image, k: float):
        t0 = time.perf_counter()
        try:
            hits = retriever.search_image(image, int(k))
        except (ValueError, RuntimeError) as err:  # no image; image backbone unavailable
            raise gr.Error(str(err))
        ms = (time.perf_counter() - t0) * 1000
        return gallery(hits), (f"{len(hits)} results in **{ms:.0f} ms** (one image encoding + one "
                               f"{retriever.kind} search)")

    def search(query: str, k: int = TOP_K) -> list[dict]:
        """Text-to-image search: the k best photos for a description, best first.

        Each hit: rank (1-based), score (cosine similarity), name (id in the collection), image_path
        (on the server) and captions (known captions of the photo, possibly empty).
        """
        try:
            return [api_hit(h) for h in retriever.search_text(query, min(int(k), MAX_TOP_K))]
        except ValueError as err:
            raise gr.Error(str(err))

    with gr.Blocks(title="Text-to-image search", analytics_enabled=False) as demo:
        gr.Markdown("## Text-to-image search")
        gr.Markdown(f"Searching {retriever.describe()}", elem_id="index-info")
        with gr.Tab("Describe a photo"):
            with gr.Row():
                query = gr.Textbox(label="Description", placeholder="e.g. a dog running in the snow",
                                   max_length=2000, scale=4, elem_id="query", submit_btn=False)
                k = gr.Slider(1, MAX_TOP_K, value=TOP_K, step=1, label="Results", scale=1,
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
                k2 = gr.Slider(1, MAX_TOP_K, value=TOP_K, step=1, label="Results")
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
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse_args(argv)
    lean_process()
    t0 = time.perf_counter()
    from model import load_checkpoint

    retriever, problem = cli.load_retriever(args, config, load_checkpoint)
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
