#!/usr/bin/env python
"""The search page: type a description, get the best-matching photos (or search with a photo).

    python app.py --photos ~/Pictures [MORE_FOLDERS ...]     # your own photos, indexed while you search
    python app.py --work-dir work/demo                       # the demo run's checkpoint and images
    python app.py --collection WORK_DIR/collections/Pictures # an own-photo folder (index_folder.py)

With --photos the page is up at once: the folders are brought up to date in the photo index in a
background thread (new, changed, moved and deleted files; nothing to decode when nothing changed),
the page shows its progress and answers from what is indexed so far. Over a photo index the page
has filters (date, folder, order) that add query-language operators to the query, "more like
this", "load more", each hit's date, folder, score and match confidence, and a "Duplicates" tab
(groups of near-identical photos, from the stored vectors).

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
    # over a photo index: the query language, paging and more like this (see /search_photos)
    page = client.predict(query="a dog -snow after:2020", k=10, offset=10, like="", api_name="/search_photos")
    groups = client.predict(threshold=0.78, api_name="/duplicates")  # [{"names": [...], "closest": [...]}]
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
    p.flags("photos", "checkpoint", "collection", "work-dir", "image-features", "models-dir", "text-weights",
            "image-weights", "device", "host", "port", "threads", "upload-grace")
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


SORTS = {"Best match first": "", "Oldest first": "sort:date", "Newest first": "sort:-date"}
MAX_OFFSET = 100_000  # how far "load more" may page
MORE_LIKE = "More like the selected photo"


def _operator(key: str, value: str | None) -> str:
    """One filter control as a query operator (quoted when the value has spaces)."""
    value = " ".join((value or "").split())
    if not value:
        return ""
    if '"' in value:
        raise ValueError(f"{key}: a filter value cannot contain a double quote")
    return f'{key}:"{value}"' if " " in value else f"{key}:{value}"


def compose_query(text: str, after: str = "", before: str = "", folder: str = "", sort: str = "") -> str:
    """The query the filter controls stand for: what was typed plus one operator per filled control.
    The query language is the one way filters reach the search, so the page, the command line and
    the API filter alike, and "understood as" shows both together."""
    if not isinstance(text, str):
        raise ValueError(f"a query is text, not {type(text).__name__}")
    if sort not in SORTS and sort:
        raise ValueError(f"sort: one of {', '.join(SORTS)}")
    parts = [text.strip(), _operator("after", after), _operator("before", before), _operator("in", folder),
             SORTS.get(sort or "", "")]
    return " ".join(p for p in parts if p)


def filters_of(query: str) -> str:
    """The query's operators and exclusions without its description: what "more like this" keeps."""
    import dataclasses

    from crossmodal.query import parse_query

    return dataclasses.replace(parse_query(query), text="").describe()


def check_offset(offset) -> int:
    """``offset`` (hits to skip, for "load more") as an int; ValueError unless a whole number from 0."""
    if isinstance(offset, float) and offset.is_integer():
        offset = int(offset)
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= MAX_OFFSET:
        raise ValueError(f"offset must be a whole number from 0 to {MAX_OFFSET:,}, got {offset!r}")
    return offset


def photo_hit_label(hit) -> str:
    """A hit's gallery caption: rank, score, confidence (weak below the confident threshold), date, folder."""
    parts = [f"#{hit.rank}", f"{hit.score:.3f}"]
    if hit.confidence is not None:
        parts.append(f"{hit.confidence:.0%} match" if hit.confident else f"{hit.confidence:.0%} (weak)")
    parts.append((hit.taken_at or "no date")[:10])
    parts.append(hit.folder or "top folder")
    return " · ".join(parts)


def api_photo_hit(hit) -> dict:
    """A photo hit for the API: the keys /search always had (image_path, not path: see api_hit) and the rest."""
    d = hit.to_dict()
    d["image_path"] = d.pop("path")
    d.setdefault("captions", [])
    return d


MAX_DUPLICATE_GROUPS = 100  # groups the page shows; index_folder.py --duplicates lists them all


def duplicate_label(group: int, number: int, name: str, closest: tuple[int, float] | None) -> str:
    """A duplicate's gallery caption: group, its number in the group, name and, after the first, its
    similarity to the most similar photo before it (by number)."""
    label = f"Group {group} · {number}. {name}"
    return label if closest is None else f"{label} · {closest[1]:.2f} to {closest[0] + 1}."


def indexing_line(indexer, engine) -> str:
    """What the background indexing is doing, for the page."""
    if indexer is None:
        return ""
    if indexer.error is not None:
        return f"Indexing stopped: {indexer.error}"
    if indexer.is_alive():
        if not indexer.total:
            return "Indexing: looking for new and changed photos…"
        return (f"Indexing: {indexer.done} / {indexer.total} photos (searching the {len(engine)} "
                f"indexed so far)")
    report = indexer.report
    return f"Index up to date: {len(engine)} photos ({report.summary()})" if report is not None else ""


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


def build_photo_ui(engine, indexer, photos, uploads):
    """The page over a photo index (``engine``: a ``photos.PhotoSearch``, possibly still being filled
    by ``indexer``, an ``IndexingThread`` or None): text search with filters, more like this, load
    more, search with a photo (and words), indexing progress; API /search, /search_photos, /search_photo."""
    import gradio as gr

    from crossmodal.duplicates import DUPLICATE_THRESHOLD
    from crossmodal.photos.search import search_photos
    from crossmodal.query import GRAMMAR
    from crossmodal.retrieval import MAX_TOP_K, TOP_K, check_k

    def run(text: str, k, offset=0, like: str | None = None, photo: str | None = None):
        try:
            return search_photos(engine, text, k=check_k(k, MAX_TOP_K), offset=check_offset(offset), like=like,
                                 photo=photo)
        except ValueError as err:  # a query, filter, k or offset the search refuses, an unknown photo
            raise gr.Error(str(err), print_exception=False)

    def gallery(hits, request) -> list[tuple[str, str]]:
        root = root_url(request)
        return [(photos.url(h.name, root), photo_hit_label(h)) for h in hits]

    def summary(result, ms: float, shown: int, like: str | None = None) -> str:
        if not result.total:
            text = "No photo passes the filters." if result.understood else "No photos indexed yet."
        else:
            text = f"{result.total} photos match; showing {shown} ({ms:.0f} ms)."
            if not result.good_match and any(h.confidence is not None for h in result.hits):
                text = f"**No good match — nearest photos shown, marked weak.** {text}"
        if like:
            text = f"Photos like {os.path.basename(like)}. {text}"
        if result.understood:
            text += f"  \nUnderstood as: `{result.understood}`"
        if result.indexing:
            text += (f"  \nStill indexing ({result.indexing['done']} / {result.indexing['total']}): "
                     "results from the photos indexed so far.")
        return text

    def answer(request, text, k, offset=0, like=None, photo=None, before=None):
        """(gallery, summary, state, load-more button) for one search or its next page."""
        t0 = time.perf_counter()
        result = run(text, k, offset, like, photo)
        ms = (time.perf_counter() - t0) * 1000
        items = (before["items"] if before else []) + gallery(result.hits, request)
        paths = (before["paths"] if before else []) + [h.path for h in result.hits]
        state = {"text": text, "k": int(k), "like": like, "offset": int(offset) + len(result.hits), "items": items,
                 "paths": paths, "total": result.total}
        more = gr.Button(visible=photo is None and state["offset"] < result.total)
        return (items, summary(result, ms, len(items), like), state, more,
                gr.Button(MORE_LIKE, interactive=False))  # until a photo of these results is selected

    def search_text(text, after, before, folder, sort, k, request: gr.Request):
        try:
            query = compose_query(text, after, before, folder, sort)
        except ValueError as err:
            raise gr.Error(str(err), print_exception=False)
        return answer(request, query, k)

    def load_more(state, request: gr.Request):
        if not state:
            raise gr.Error("search first", print_exception=False)
        return answer(request, state["text"], state["k"], state["offset"], state["like"], before=state)

    def select(state, evt: gr.SelectData):
        if not state or not isinstance(evt.index, int) or not 0 <= evt.index < len(state["paths"]):
            return None, gr.Button(interactive=False)
        path = state["paths"][evt.index]
        return path, gr.Button(f"More like {os.path.basename(path)}", interactive=True)

    def more_like(selected, state, k, request: gr.Request):
        if not selected:
            raise gr.Error("select a photo in the results first", print_exception=False)
        text = filters_of(state["text"]) if state else ""
        return answer(request, text, k, like=selected)

    def search_with_photo(photo, text, k, request: gr.Request):
        try:
            with uploads.using(photo) as path:
                return answer(request, text or "", k, photo=str(path))[:2]
        except ValueError as err:  # not an upload, a refused image
            raise gr.Error(str(err), print_exception=False)

    def progress():
        engine.refresh()  # take up the latest commit, so the counts below are the searched photos
        line = indexing_line(indexer, engine)
        return line, f"Searching {engine.describe()}", gr.Timer(active=indexer is not None and indexer.is_alive())

    def search(query: str, k: int = TOP_K) -> list[dict]:
        """Text-to-image search: the k best photos for a query (query language: /search_photos), best first.

        k: a whole number from 1 to 50. Each hit: rank, score, name, image_path, captions (empty for
        own photos), folder, taken_at, camera, confidence, confident, matched.
        """
        return [api_photo_hit(h) for h in run(query, k).hits]

    def search_photos_api(query: str = "", k: int = TOP_K, offset: int = 0, like: str = "") -> dict:
        """Photo search with the query language (exclusions, after:/before:/date:, in:, sort:date),
        paging and more like this.

        query: description and operators (may be only operators); k: 1 to 50; offset: hits to skip
        (the next page: offset + k); like: an indexed photo's path or name, for photos like it (the
        query's operators still filter). Returns {"hits": [as /search], "total": hits passing the
        filters, "good_match": any confident hit, "understood": the query as parsed, "indexing":
        {"done", "total"} while the index is being filled, else null}.
        """
        if not isinstance(like, str):
            raise gr.Error(f"like: the path or name of an indexed photo, not {type(like).__name__}",
                           print_exception=False)
        result = run(query, k, offset, like or None)
        return {"hits": [api_photo_hit(h) for h in result.hits], "total": result.total,
                "good_match": result.good_match, "understood": result.understood, "indexing": result.indexing}

    def search_photo(photo: gr.FileData, k: int = TOP_K, query: str = "") -> list[dict]:
        """Image-to-image search: the k indexed photos most similar to an uploaded one, best first;
        ``query`` adds words and operators ("at night in:Holidays").

        photo: gradio_client.handle_file(path); decoded within a pixel budget (25 megapixels;
        JPEGs decode at reduced size), deleted from the server soon after. k and the hits as for /search.
        """
        try:
            with uploads.using(photo) as path:
                return [api_photo_hit(h) for h in run(query, k, photo=str(path)).hits]
        except ValueError as err:
            raise gr.Error(str(err), print_exception=False)

    def duplicate_groups(threshold) -> list:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.5 <= threshold < 1:
            raise gr.Error(f"threshold must be a number from 0.5 to below 1, got {threshold!r}", print_exception=False)
        return engine.duplicate_groups(float(threshold))

    def show_duplicates(threshold, request: gr.Request):
        t0 = time.perf_counter()
        groups = duplicate_groups(threshold)
        ms = (time.perf_counter() - t0) * 1000
        root = root_url(request)
        shown = groups[:MAX_DUPLICATE_GROUPS]
        items = [(photos.url(name, root), duplicate_label(g, i, name, closest))
                 for g, group in enumerate(shown, start=1)
                 for i, (name, closest) in enumerate(zip(group.paths, [None, *group.closest]), start=1)]
        text = (f"{len(groups)} group(s) of near-duplicate photos, {sum(len(g.paths) for g in groups)} photos, "
                f"above a similarity of {threshold:.2f} ({ms:.0f} ms).")
        if len(groups) > len(shown):
            text += f" Showing the first {len(shown)} groups (all of them: `index_folder.py --duplicates`)."
        return items, text

    def duplicates(threshold: float = DUPLICATE_THRESHOLD) -> list[dict]:
        """Groups of near-duplicate indexed photos (copies, re-encodes, resizes, light crops).

        threshold: cosine similarity of two photos' backbone features above which they are grouped
        (0.5 to below 1). Each group: {"names": photo names, as hits name them, "closest": for each
        photo after the first, [position in names of its most similar photo before it, similarity]}.
        """
        return [{"names": g.paths, "closest": [list(c) for c in g.closest]} for g in duplicate_groups(threshold)]

    with gr.Blocks(title="Photo search", analytics_enabled=False, delete_cache=UPLOAD_CLEANUP) as demo:
        gr.Markdown("## Search your photos")
        # (callables: each page load shows the state then, not the state at start)
        info = gr.Markdown(lambda: f"Searching {engine.describe()}", elem_id="index-info")
        indexing = gr.Markdown(lambda: indexing_line(indexer, engine), elem_id="indexing")
        state = gr.State(None)
        selected = gr.State(None)
        with gr.Tab("Describe a photo"):
            with gr.Row():
                query = gr.Textbox(label="Description", placeholder='e.g. a dog on a beach -snow after:2019',
                                   max_length=2000, scale=4, elem_id="query", submit_btn=False)
                k = gr.Slider(1, MAX_TOP_K, value=TOP_K * 2, step=1, label="Results per page", scale=1, elem_id="k")
            with gr.Row():
                after = gr.Textbox(label="Taken on or after", placeholder="YYYY, YYYY-MM or YYYY-MM-DD",
                                   max_length=10, elem_id="after")
                before = gr.Textbox(label="Taken before", placeholder="YYYY, YYYY-MM or YYYY-MM-DD",
                                    max_length=10, elem_id="before")
                folder = gr.Textbox(label="In folder", placeholder="e.g. Holidays/2019", max_length=500,
                                    elem_id="folder")
                sort = gr.Radio(list(SORTS), value="Best match first", label="Order", elem_id="sort")
            with gr.Row():
                button = gr.Button("Search", variant="primary", elem_id="search-button")
                like_button = gr.Button(MORE_LIKE, interactive=False, elem_id="more-like")
            with gr.Accordion("Query language", open=False, elem_id="grammar"):
                gr.Markdown(f"```text\n{GRAMMAR}\n```")
            status = gr.Markdown(elem_id="status")
            results = gr.Gallery(label="Best matches", columns=5, height="auto", object_fit="contain",
                                 elem_id="results", allow_preview=True)
            more = gr.Button("Load more", visible=False, elem_id="load-more")
            outputs = [results, status, state, more, like_button]
            for trigger in (query.submit, button.click):
                trigger(search_text, [query, after, before, folder, sort, k], outputs, api_visibility="private")
            more.click(load_more, [state], outputs, api_visibility="private")
            results.select(select, [state], [selected, like_button], api_visibility="private")
            like_button.click(more_like, [selected, state, k], outputs, api_visibility="private")
        with gr.Tab("Search with a photo"):
            with gr.Row():
                # preprocess=False: the handler takes the uploaded file as it is (see build_ui)
                photo = gr.Image(type="filepath", image_mode=None, label="A photo", sources=["upload", "clipboard"],
                                 elem_id="photo")
                with gr.Column():
                    photo_text = gr.Textbox(label="And (optional)", placeholder="e.g. but at night", max_length=2000,
                                            elem_id="photo-query")
                    k2 = gr.Slider(1, MAX_TOP_K, value=TOP_K * 2, step=1, label="Results")
            button2 = gr.Button("Find similar photos", variant="primary", elem_id="photo-button")
            status2 = gr.Markdown(elem_id="photo-timing")
            results2 = gr.Gallery(label="Most similar", columns=5, height="auto", object_fit="contain",
                                  elem_id="photo-results")
            for trigger in (photo.upload, button2.click):
                trigger(search_with_photo, [photo, photo_text, k2], [results2, status2], api_visibility="private",
                        preprocess=False)
        with gr.Tab("Duplicates"):
            with gr.Row():
                threshold = gr.Slider(0.5, 0.99, value=DUPLICATE_THRESHOLD, step=0.01, scale=3, elem_id="threshold",
                                      label="Similarity threshold (higher: only closer copies)")
                button3 = gr.Button("Find near-duplicates", variant="primary", scale=1, elem_id="duplicates-button")
            status3 = gr.Markdown(elem_id="duplicates-status")
            results3 = gr.Gallery(label="Groups of near-duplicate photos", columns=6, height="auto",
                                  object_fit="contain", elem_id="duplicates")
            button3.click(show_duplicates, [threshold], [results3, status3], api_visibility="private")
        timer = gr.Timer(1.0, active=indexer is not None)
        timer.tick(progress, None, [indexing, info, timer], api_visibility="private", show_progress="hidden")
        gr.api(search, api_name="search")
        gr.api(search_photos_api, api_name="search_photos")
        gr.api(search_photo, api_name="search_photo")
        gr.api(duplicates, api_name="duplicates")
    return demo


def serve(retriever, host: str, port: int, block: bool = True, quiet: bool = False,
          upload_grace: float | None = None, indexer=None):
    """Build the page for ``retriever`` and serve it on host:port with the photo route and the
    refusal of malformed API requests; returns the Blocks (``block=False``: at once, still serving).
    ``upload_grace``: seconds an uploaded photo is kept after its last search (default: the library's).
    A photo index (``photos.PhotoSearch``) gets the photo page, with ``indexer`` (an
    ``IndexingThread`` filling it, or None) shown as it runs."""
    from gradio.utils import get_upload_folder
    from starlette.middleware import Middleware

    from crossmodal.photos.serving import PhotoSearch
    from crossmodal.serving import UPLOAD_GRACE_S, PhotoFiles, RefuseMalformedRequests, Uploads

    photos = PhotoFiles.of(retriever)
    uploads = Uploads(get_upload_folder(), UPLOAD_GRACE_S if upload_grace is None else upload_grace)
    if isinstance(retriever, PhotoSearch):
        demo = build_photo_ui(retriever, indexer, photos, uploads)
    else:
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
    missing = [str(d) for d in args.photos or () if not d.is_dir()]
    if missing:  # said before anything loads
        print(f"error: no such folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    lean_process()
    t0 = time.perf_counter()
    from model import load_checkpoint

    indexer = None
    if args.photos:  # the index is brought up to date in the background while the page serves
        retriever, indexer, problem = cli.load_photo_search(args, load_checkpoint, background=True)
    else:
        retriever, problem = cli.load_retriever(args, config, load_checkpoint)
    if retriever is None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    # The image backbone is loaded on the first photo query: text search never needs it, and
    # resident memory stays lower for the (usual) text-only use.
    log.info("ready in %.1f s: %s", time.perf_counter() - t0, retriever.describe())

    serve(retriever, args.host, args.port, upload_grace=args.upload_grace, indexer=indexer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
