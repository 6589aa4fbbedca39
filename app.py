#!/usr/bin/env python
"""The search page: type a description, get the best-matching photos (or search with a photo).

    python app.py --work-dir work/demo                       # the demo run's checkpoint and images
    python app.py --collection WORK_DIR/collections/Pictures # an own-photo folder (index_folder.py)

Everything (checkpoint, projected image embeddings, search index, text backbone) is loaded once at
start; each query is one text encoding plus one index search. Listens on 127.0.0.1 unless --host.
Only the indexed photos are served over HTTP, each as an image (crossmodal/serving.py).

Programmatic use (JSON-friendly results, one dict per hit; k a whole number from 1 to 50)::

    from gradio_client import Client, handle_file
    client = Client("http://127.0.0.1:7860/")
    hits = client.predict(query="a dog in the snow", k=5, api_name="/search")
    # [{"rank": 1, "score": 0.61, "name": "...jpg", "image_path": "/.../...jpg", "captions": [...],
    #   "confidence": 0.12}, ...]
    hits = client.predict(photo=handle_file("dog.jpg"), k=5, api_name="/search_photo")
"""
import argparse
import logging
import os
import sys
import time

from crossmodal import cli

cli.prepare_process()

import config  # noqa: E402

log = logging.getLogger("app")

DEFAULT_EXAMPLES = ["a dog running in the snow", "two children playing on the beach",
                    "a man riding a bicycle down the street", "a woman in a red dress"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = cli.StageParser(__doc__, config)
    p.flags("checkpoint", "collection", "work-dir", "image-features", "models-dir", "text-weights", "image-weights",
            "device", "host", "port", "threads", "upload-grace")
    p.flags("images", "captions", serving=True)
    return p.parse(argv)


def example_queries(retriever, n: int = 4) -> list[str]:
    """A few real captions of indexed photos (evenly spread), else generic descriptions."""
    if not retriever.has_captions:
        return DEFAULT_EXAMPLES
    rows = [r for r in range(len(retriever)) if retriever.captions_of(r)]
    picks = [rows[i * len(rows) // n] for i in range(min(n, len(rows)))]
    return [min(retriever.captions_of(r), key=len).rstrip(" .") for r in picks] or DEFAULT_EXAMPLES


MAX_UPLOAD_BYTES = 50 * 1024 * 1024  # a photo query's file; larger uploads are refused by Gradio's upload route
UPLOAD_CLEANUP = (300, 900)  # every 5 min, delete uploads older than 15 min that no search used


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


def root_url(request) -> str:
    """The app's address as this request reached it (a proxy's too), computed as Gradio computes it for
    its own file URLs. The gallery is given absolute photo URLs: Gradio passes http(s) URLs to the
    browser as they are, where a local path would be copied into its cache and served from there."""
    from gradio import route_utils

    http = getattr(request, "request", None)
    if http is None:  # a request rebuilt from its headers (no live connection)
        return f"http://{dict(request.headers).get('host', '127.0.0.1')}"
    try:
        route_path = route_utils.get_api_call_path(http)
    except ValueError:  # not a queue or /call/ request
        route_path = http.url.path
    return route_utils.get_root_url(request=http, route_path=route_path,
                                    root_path=getattr(http.app, "root_path", None) or http.scope.get("root_path"))


def build_ui(retriever, photos, uploads):
    """The page and its API (/search, /search_photo) over ``retriever``; ``photos`` (a
    ``serving.PhotoFiles``) gives the photo URLs, ``uploads`` (``serving.Uploads``) the uploaded files."""
    # (app.py has no `from __future__ import annotations`: Gradio reads the handlers' type hints,
    # gr.Request and gr.FileData, which must be objects, as gradio is imported here.)
    import gradio as gr

    from crossmodal.retrieval import MAX_TOP_K, TOP_K, check_k

    def gallery(hits, request) -> list[tuple[str, str]]:
        root = root_url(request)
        return [(photos.url(h.name, root), hit_label(h)) for h in hits]

    def text_hits(query: str, k) -> list:
        try:
            return retriever.search_text(query, check_k(k, MAX_TOP_K))
        except ValueError as err:  # an empty or too long query, a k out of range
            raise gr.Error(str(err), print_exception=False)

    def photo_hits(photo, k) -> list:
        """Search with an uploaded photo (Gradio's file data), decoded within the pixel budget; the
        upload is deleted soon after, whatever the outcome (``serving.Uploads``)."""
        try:
            with uploads.using(photo) as path:
                return retriever.search_image(path, check_k(k, MAX_TOP_K))
        except (ValueError, RuntimeError) as err:  # not an upload, refused image or k; no image backbone
            raise gr.Error(str(err), print_exception=False)

    def run_text(query: str, k: float, request: gr.Request):
        t0 = time.perf_counter()
        hits = text_hits(query, k)
        ms = (time.perf_counter() - t0) * 1000
        return gallery(hits, request), (f"{len(hits)} results in **{ms:.0f} ms** (one text encoding + one "
                                         f"{retriever.kind} search)")

    def run_image(photo: dict | None, k: float, request: gr.Request):
        t0 = time.perf_counter()
        hits = photo_hits(photo, k)
        ms = (time.perf_counter() - t0) * 1000
        return gallery(hits, request), (f"{len(hits)} results in **{ms:.0f} ms** (one image encoding + one "
                                         f"{retriever.kind} search)")

    def search(query: str, k: int = TOP_K) -> list[dict]:
        """Text-to-image search: the k best photos for a description, best first.

        k: a whole number from 1 to 50. Each hit: rank (1-based), score (cosine similarity), name (id
        in the collection), image_path (on the server), captions (known captions of the photo,
        possibly empty) and confidence (calibrated match probability; null without calibration).
        """
        return [api_hit(h) for h in text_hits(query, k)]

    def search_photo(photo: gr.FileData, k: int = TOP_K) -> list[dict]:
        """Image-to-image search: the k indexed photos most similar to an uploaded one, best first.

        photo: gradio_client.handle_file(path); decoded within a pixel budget (25 megapixels;
        JPEGs decode at reduced size), deleted from the server soon after. k and the hits as for /search.
        """
        return [api_hit(h) for h in photo_hits(photo, k)]

    with gr.Blocks(title="Text-to-image search", analytics_enabled=False, delete_cache=UPLOAD_CLEANUP) as demo:
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
                # The handler takes the uploaded file as it is (preprocess=False): Gradio's own
                # preprocessing would open it with PIL before the pixel budget is applied.
                photo = gr.Image(type="filepath", image_mode=None, label="A photo", sources=["upload", "clipboard"],
                                 elem_id="photo")
                k2 = gr.Slider(1, MAX_TOP_K, value=TOP_K, step=1, label="Results")
            button2 = gr.Button("Find similar photos", variant="primary", elem_id="photo-button")
            timing2 = gr.Markdown(elem_id="photo-timing")
            results2 = gr.Gallery(label="Most similar", columns=5, height="auto", object_fit="contain",
                                  elem_id="photo-results")
            for trigger in (photo.upload, button2.click):
                trigger(run_image, [photo, k2], [results2, timing2], api_visibility="private", preprocess=False)
        gr.api(search, api_name="search")
        gr.api(search_photo, api_name="search_photo")
    return demo


def serve(retriever, host: str, port: int, block: bool = True, quiet: bool = False,
          upload_grace: float | None = None):
    """Build the page for ``retriever`` and serve it on host:port with the photo route and the
    refusal of malformed API requests; returns the Blocks (``block=False``: at once, still serving).
    ``upload_grace``: seconds an uploaded photo is kept after its last search (default: the library's)."""
    from gradio.utils import get_upload_folder
    from starlette.middleware import Middleware

    from crossmodal.serving import UPLOAD_GRACE_S, PhotoFiles, RefuseMalformedRequests, Uploads

    photos = PhotoFiles.of(retriever)
    uploads = Uploads(get_upload_folder(), UPLOAD_GRACE_S if upload_grace is None else upload_grace)
    demo = build_ui(retriever, photos, uploads)
    # api_open=False: every call goes through the queue and its concurrency limit (the direct
    # /run/ and /api/ routes refuse queued functions).
    demo.queue(default_concurrency_limit=4, api_open=False)
    # No static or allowed paths: photos are served only by the photo route, Gradio's file route
    # reaches none of them.
    demo.launch(server_name=host, server_port=port, share=False, ssr_mode=False, show_error=True, quiet=quiet,
                max_file_size=MAX_UPLOAD_BYTES, prevent_thread_lock=not block,
                app_kwargs={"routes": [photos.route()], "middleware": [Middleware(RefuseMalformedRequests)]})
    return demo


def _tune_malloc(arenas: int = 2, mmap_threshold: int = 4 << 20) -> None:
    """glibc gives each request thread its own heap arena (tens of MB each, rarely returned); two
    are plenty for a server whose work is a few small tensor ops per request. Blocks from
    ``mmap_threshold`` up (a decoded photo's) are mapped and unmapped, so they go back to the OS
    when freed; glibc would otherwise raise that threshold after the first such block is freed and
    keep the later ones in its heap."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-8, arenas)  # M_ARENA_MAX
        libc.mallopt(-3, mmap_threshold)  # M_MMAP_THRESHOLD (setting it also stops its adjustment)
    except (OSError, AttributeError):  # not glibc
        pass


def lean_process() -> None:
    """Settings that keep the serving process small (``main``; bench/app_memory.py measures them)."""
    _tune_malloc()
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

    serve(retriever, args.host, args.port, upload_grace=args.upload_grace)
    return 0


if __name__ == "__main__":
    sys.exit(main())
