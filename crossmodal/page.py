"""The search page and its API: one Gradio page over any collection, served with the photo route.

``Page`` holds the engine and what the page needs beside it (the photo allow-list, the uploads, the
indexing thread filling the collection, if any); its methods are the page's handlers and the API's
endpoints, named functions that tests call without a browser. ``Page.blocks`` lays them out:

* "Describe a photo": the query, with filters as query-language operators (date and order where
  the collection records dates, folder for own photos), "more like this", "load more";
* "Search with a photo", optionally with words;
* "Duplicates": groups of near-identical photos, from the backbone vectors.

The first line says what is searched, for a person; the index kind, its recall, the models and the
checkpoint are under "Details". The API endpoints ``/search``, ``/search_photos``, ``/search_photo``
and ``/duplicates`` are thin adapters over the one query pipeline (``crossmodal.search``).

(No ``from __future__ import annotations`` here: Gradio reads the handlers' type hints, gr.Request
and gr.FileData, which must be objects.)
"""
import dataclasses
import html
import logging
import os
import re
import time
from typing import Any

import gradio as gr

from crossmodal.duplicates import DUPLICATE_THRESHOLD
from crossmodal.engine import EngineError
from crossmodal.photos.store import StoreError
from crossmodal.query import GRAMMAR, parse_query
from crossmodal.search import MAX_K, TOP_K, Hit, SearchResult, search
from crossmodal.web import UPLOAD_GRACE_S, LimitUploads, RefuseMalformedRequests, ServedPhotos, Uploads

log = logging.getLogger(__name__)

DEFAULT_EXAMPLES = ["a dog running in the snow", "two children playing on the beach",
                    "a man riding a bicycle down the street", "a woman in a red dress"]
PAGE_SIZE = TOP_K * 2  # the page's results per page
MAX_UPLOAD_BYTES = 50 * 1024 * 1024  # a photo query's file; larger uploads are refused by Gradio's upload route
UPLOAD_CLEANUP = (300, 900)  # every 5 min, delete uploads older than 15 min that no search used
SORTS = {"Best match first": "", "Oldest first": "sort:date", "Newest first": "sort:-date"}
MORE_LIKE = "More like the selected photo"
MAX_DUPLICATE_GROUPS = 100  # groups the page shows; index_folder.py --duplicates lists them all
REFRESH_SECONDS = 1.0  # how often the page looks at the indexing progress while it runs
IDLE_REFRESH_SECONDS = 5.0  # and between runs (a periodic look at the folders starts one)
# Sessions whose page state Gradio keeps, the least recently used dropped first. Every request to the
# /call API is a session of its own holding about 100 KB, so Gradio's default of 10,000 would let API
# clients grow the server by a gigabyte; a page whose state was dropped is asked to search again.
SESSION_CAPACITY = 256


# --------------------------------------------------------------------------------------------------
# what the page shows, as text

def hit_label(hit: Hit) -> str:
    """A hit's gallery caption: rank, score, confidence (weak below the confident threshold), the date
    and folder where the photo has them, its file name, and its first caption where it has one."""
    parts = [f"#{hit.rank}", f"{hit.score:.3f}"]
    if hit.confidence is not None:
        parts.append(f"{hit.confidence:.0%} match" if hit.confident else f"{hit.confidence:.0%} (weak)")
    if hit.taken_at is not None or hit.folder:
        parts.append((hit.taken_at or "no date")[:10])
        parts.append(hit.folder or "top folder")
    parts.append(os.path.basename(hit.name))
    label = " · ".join(parts)
    return f"{label} — {hit.captions[0]}" if hit.captions else label


def api_hit(hit: Hit) -> dict:
    """A hit as plain JSON for the API. The path is sent as "image_path": gradio_client takes any
    dict with a "path" key for a file and would replace the whole hit by a downloaded copy."""
    d = hit.to_dict()
    d["image_path"] = d.pop("path")
    return d


def duplicate_label(group: int, number: int, name: str, closest: tuple[int, float] | None) -> str:
    """A duplicate's gallery caption: group, its number in the group, name and, after the first, its
    similarity to the most similar photo before it (by number)."""
    label = f"Group {group} · {number}. {name}"
    return label if closest is None else f"{label} · {closest[1]:.2f} to {closest[0] + 1}."


def indexing_line(indexer: Any, searched: int) -> str:
    """What the background indexing is doing, for the page (``searched``: photos searchable now)."""
    if indexer is None:
        return ""
    if indexer.error is not None:
        return f"Indexing stopped: {indexer.error}"
    if indexer.waiting:
        return f"Indexing waits: {indexer.waiting}; searching the {searched} photos indexed so far"
    if indexer.running:
        if not indexer.total:
            return "Indexing: looking for new and changed photos…"
        return f"Indexing: {indexer.done} / {indexer.total} photos (searching the {searched} indexed so far)"
    report = indexer.report
    if report is None:
        return ""
    again = f"; looking at the folders again every {indexer.every:g} s" if indexer.every else ""
    return f"Index up to date: {searched} photos ({report.summary()}){again}"


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]#|~])")  # what could make emphasis, code, links or tables inline


def as_text(text: str) -> str:
    """Markdown that shows ``text`` as it is: HTML escaped, Markdown's punctuation backslashed."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(str(text), quote=False))


def as_code(text: str) -> str:
    """``text`` as a Markdown code span, shown as it is whatever backticks or HTML it holds."""
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    return f"{fence} {text} {fence}" if text.startswith("`") or text.endswith("`") else f"{fence}{text}{fence}"


def summary(result: SearchResult, ms: float, shown: int, like: str | None = None,
            indexing: dict | None = None, calibrated: bool = True) -> str:
    """The line above the results: how many photos pass, how many are shown, whether any is a good match;
    without ``calibrated`` curves (a zero-shot model not yet calibrated), that the hits show scores only."""
    query = parse_query(result.understood or "")
    filtered = query.has_filters or bool(query.excludes)
    if not result.total:
        text = "No photo passes the filters." if filtered else "No photos indexed yet."
    else:
        text = (f"{result.total} photos {'pass the filters' if filtered else 'searched'}; showing {shown} "
                f"({ms:.0f} ms).")
        if not result.good_match and any(h.confidence is not None for h in result.hits):
            text = f"**No good match — nearest photos shown, marked weak.** {text}"
        if not calibrated and result.understood:
            text += " Scores only: this model's match confidence is not calibrated."
    if like:
        text = f"Photos like {as_text(os.path.basename(like))}. {text}"
    if result.understood:
        text += f"  \nUnderstood as: {as_code(result.understood)}"
    if indexing:
        text += (f"  \nStill indexing ({indexing['done']} / {indexing['total']}): results from the photos "
                 "indexed so far.")
    return text


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
    return dataclasses.replace(parse_query(query), text="").describe()


def example_queries(collection: Any, n: int = 4) -> list[str]:
    """A few real captions of the collection's photos (evenly spread), else everyday descriptions."""
    captions = collection.captions
    rows = [r for r in range(len(collection)) if captions and captions[r]]
    if not rows:
        return DEFAULT_EXAMPLES
    picks = [rows[i * len(rows) // n] for i in range(min(n, len(rows)))]
    return [min(captions[r].split("\n"), key=len).rstrip(" .") for r in picks]


def root_url(request: Any) -> str:
    """The app's address as this request reached it (a proxy's too), computed as Gradio computes it for
    its own file URLs. The gallery is given absolute photo URLs: Gradio passes http(s) URLs to the
    browser as they are, where a local path would be copied into its cache and served from there."""
    from gradio import route_utils

    http = getattr(request, "request", None)
    if http is None:  # a request rebuilt from its headers (no live connection), or none at all
        return f"http://{dict(getattr(request, 'headers', None) or {}).get('host', '127.0.0.1')}"
    try:
        route_path = route_utils.get_api_call_path(http)
    except ValueError:  # not a queue or /call/ request
        route_path = http.url.path
    return route_utils.get_root_url(request=http, route_path=route_path,
                                    root_path=getattr(http.app, "root_path", None) or http.scope.get("root_path"))


@dataclasses.dataclass
class Results:
    """One session's results on the page (its ``gr.State``): the query, and the hits shown so far."""
    text: str
    k: int
    like: str | None
    hits: list[Hit]
    total: int
    next_offset: int = 0  # where "load more" continues


# --------------------------------------------------------------------------------------------------
# the handlers

class Page:
    """The page over ``engine`` (a ``SearchEngine``), its handlers and API endpoints (module docstring).
    ``indexer``: the ``IndexingThread`` filling the collection, or None."""

    def __init__(self, engine: Any, indexer: Any = None, uploads: Uploads | None = None):
        self.engine = engine
        self.indexer = indexer
        self.photos = ServedPhotos(lambda: engine.current().collection)
        self.uploads = uploads or Uploads(_upload_folder(), UPLOAD_GRACE_S)

    # --- the one query path, as the page and the API call it

    def run(self, text: str, k: Any, offset: Any = 0, like: str | None = None, photo: Any = None) -> SearchResult:
        try:
            return search(self.engine, text, k=k, offset=offset, like=like, photo=photo)
        except ValueError as err:  # a query, filter, k or offset the search refuses, an unknown photo
            raise gr.Error(str(err), print_exception=False)
        except (StoreError, EngineError) as err:  # the index damaged or re-embedded meanwhile: what to run
            log.error("%s", err)
            raise gr.Error(str(err), print_exception=False)

    def _indexing(self) -> dict | None:
        thread = self.indexer
        if thread is None or not thread.running:
            return None
        return {"done": int(thread.done), "total": int(thread.total)}

    def gallery(self, hits: list[Hit], request: Any) -> list[tuple[str, str]]:
        root = root_url(request)
        return [(self.photos.url(h.name, root), hit_label(h)) for h in hits]

    def _answer(self, request: Any, text: str, k: Any, offset: int = 0, like: str | None = None,
                before: Results | None = None):
        """(gallery, summary, results, load-more button, more-like button) for a search or its next page."""
        t0 = time.perf_counter()
        result = self.run(text, k, offset, like)
        ms = (time.perf_counter() - t0) * 1000
        hits = (before.hits if before else []) + result.hits
        results = Results(text, int(k), like, hits, result.total, result.next_offset)
        return (self.gallery(hits, request),
                summary(result, ms, len(hits), like, self._indexing(), calibrated=bool(self.engine.curves)), results,
                gr.Button(visible=result.next_offset < result.total),
                gr.Button(MORE_LIKE, interactive=False))  # until a photo of these results is selected

    def search_text(self, text: str, after: str, before: str, folder: str, sort: str, k: float,
                    request: gr.Request):
        try:
            query = compose_query(text, after, before, folder, sort)
        except ValueError as err:
            raise gr.Error(str(err), print_exception=False)
        return self._answer(request, query, k)

    def load_more(self, results: Results | None, request: gr.Request):
        if not results:
            raise gr.Error("search first", print_exception=False)
        return self._answer(request, results.text, results.k, results.next_offset, results.like, before=results)

    def select(self, results: Results | None, evt: gr.SelectData):
        if not results or not isinstance(evt.index, int) or not 0 <= evt.index < len(results.hits):
            return None, gr.Button(interactive=False)
        path = results.hits[evt.index].path
        return path, gr.Button(f"More like {os.path.basename(path)}", interactive=True)

    def more_like(self, selected: str | None, results: Results | None, k: float, request: gr.Request):
        if not selected:
            raise gr.Error("select a photo in the results first", print_exception=False)
        return self._answer(request, filters_of(results.text) if results else "", k, like=selected)

    def search_with_photo(self, photo: Any, text: str, k: float, request: gr.Request):
        """Search with an uploaded photo (and words), decoded within the pixel budget; the upload is
        deleted soon after, whatever the outcome (``web.Uploads``)."""
        t0 = time.perf_counter()
        try:
            with self.uploads.using(photo) as path:
                result = self.run(text or "", k, photo=str(path))
        except ValueError as err:  # not an upload, a refused image
            raise gr.Error(str(err), print_exception=False)
        ms = (time.perf_counter() - t0) * 1000
        return self.gallery(result.hits, request), summary(result, ms, len(result.hits))

    def show_duplicates(self, threshold: float, request: gr.Request):
        t0 = time.perf_counter()
        groups = self._duplicate_groups(threshold)
        ms = (time.perf_counter() - t0) * 1000
        root = root_url(request)
        shown = groups[:MAX_DUPLICATE_GROUPS]
        items = [(self.photos.url(name, root), duplicate_label(g, i, name, closest))
                 for g, group in enumerate(shown, start=1)
                 for i, (name, closest) in enumerate(zip(group.names, [None, *group.closest]), start=1)]
        text = (f"{len(groups)} group(s) of near-duplicate photos, {sum(len(g.names) for g in groups)} photos, "
                f"above a similarity of {threshold:.2f} ({ms:.0f} ms).")
        if len(groups) > len(shown):
            text += f" Showing the first {len(shown)} groups (all of them: `index_folder.py --duplicates`)."
        return items, text

    def _duplicate_groups(self, threshold: Any) -> list:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.5 <= threshold < 1:
            raise gr.Error(f"threshold must be a number from 0.5 to below 1, got {threshold!r}", print_exception=False)
        return self.engine.duplicate_groups(float(threshold))

    def info(self) -> str:
        """The first line: what is searched."""
        return f"Searching {as_text(self.engine.current().collection.describe())}"

    def details(self) -> str:
        """What "Details" holds: the index, its recall, the models, the checkpoint."""
        return "\n".join(f"- **{key}**: {as_text(value)}" for key, value in self.engine.details().items())

    def progress(self):
        """The indexing line, what is searched, and how soon to look again (the timer's tick)."""
        searched = len(self.engine.current())  # takes up the latest commit, so the counts are the searched photos
        running = self.indexer is not None and self.indexer.running
        return (as_text(indexing_line(self.indexer, searched)), self.info(),
                gr.Timer(REFRESH_SECONDS if running else IDLE_REFRESH_SECONDS, active=self.indexer is not None))

    def look_again(self) -> str:
        """The "Look at the folders again" button: the indexer runs now, not at the end of its period."""
        if self.indexer is None:
            raise gr.Error("this page searches no photo folders", print_exception=False)
        self.indexer.look_again()
        return as_text("Indexing: looking for new and changed photos…")

    # --- the API (gr.api reads the type hints and docstrings)

    def search(self, query: str, k: int = TOP_K) -> list[dict]:
        """Text-to-image search: the k best photos for a query, best first (the query language:
        /search_photos).

        k: a whole number from 1 to 50. Each hit: rank (1-based), score (cosine similarity), name (its
        path in the collection), image_path (on the server), confidence (calibrated match probability,
        null without calibration), confident, captions (a dataset's), folder, taken_at, camera, matched.
        """
        return [api_hit(h) for h in self.run(query, k).hits]

    def search_photos(self, query: str = "", k: int = TOP_K, offset: int = 0, like: str = "") -> dict:
        """Search with the query language (exclusions, after:/before:/date:, in:, sort:date), paging and
        more like this.

        query: description and operators (may be only operators); k: 1 to 50; offset: hits to skip
        (the next page: offset + k); like: an indexed photo's path or name, for photos like it (the
        query's operators still filter). Returns {"hits": [as /search], "total": photos passing the
        filters, "next_offset": the offset of the next page, "good_match": any confident hit,
        "understood": the query as parsed, "indexing": {"done", "total"} while the collection is being
        indexed, else null}.
        """
        result = self.run(query, k, offset, like)  # (like "": none; the search checks its type)
        return {"hits": [api_hit(h) for h in result.hits], "total": result.total, "next_offset": result.next_offset,
                "good_match": result.good_match, "understood": result.understood, "indexing": self._indexing()}

    def search_photo(self, photo: gr.FileData, k: int = TOP_K, query: str = "") -> list[dict]:
        """Image-to-image search: the k photos most similar to an uploaded one, best first; ``query``
        adds words and operators ("at night in:Holidays").

        photo: gradio_client.handle_file(path); decoded within a pixel budget (25 megapixels;
        JPEGs decode at reduced size), deleted from the server soon after. k and the hits as for /search.
        """
        try:
            with self.uploads.using(photo) as path:
                return [api_hit(h) for h in self.run(query or "", k, photo=str(path)).hits]
        except ValueError as err:  # not an upload, a refused image
            raise gr.Error(str(err), print_exception=False)

    def duplicates(self, threshold: float = DUPLICATE_THRESHOLD) -> list[dict]:
        """Groups of near-duplicate photos (copies, re-encodes, resizes, light crops).

        threshold: cosine similarity of two photos' backbone features above which they are grouped
        (0.5 to below 1). Each group: {"names": photo names, as hits name them, "closest": for each
        photo after the first, [position in names of its most similar photo before it, similarity]}.
        """
        return [{"names": g.names, "closest": [list(c) for c in g.closest]} for g in self._duplicate_groups(threshold)]

    # --- the layout

    def blocks(self) -> gr.Blocks:
        collection = self.engine.current().collection
        dated = collection.taken_at is not None
        folders = collection.kind == "photos"
        with gr.Blocks(title="Photo search", analytics_enabled=False, delete_cache=UPLOAD_CLEANUP) as demo:
            gr.Markdown("## Photo search")
            # (callables: each page load shows the state then, not the state at start)
            info = gr.Markdown(self.info, elem_id="index-info")
            with gr.Accordion("Details", open=False, elem_id="details"):
                gr.Markdown(self.details)
            with gr.Row():
                indexing = gr.Markdown(lambda: as_text(indexing_line(self.indexer, len(self.engine.current()))),
                                       elem_id="indexing")
                look_again = gr.Button("Look at the folders again", size="sm", scale=0, elem_id="look-again",
                                       visible=self.indexer is not None)
            look_again.click(self.look_again, None, [indexing], api_visibility="private")
            results = gr.State(None)
            selected = gr.State(None)
            with gr.Tab("Describe a photo"):
                with gr.Row():
                    query = gr.Textbox(label="Description", placeholder="e.g. a dog on a beach -snow",
                                       max_length=2000, scale=4, elem_id="query", submit_btn=False)
                    k = gr.Slider(1, MAX_K, value=PAGE_SIZE, step=1, label="Results per page", scale=1, elem_id="k")
                with gr.Row(visible=dated or folders):
                    after = gr.Textbox(label="Taken on or after", placeholder="YYYY, YYYY-MM or YYYY-MM-DD",
                                       max_length=10, elem_id="after", visible=dated)
                    before = gr.Textbox(label="Taken before", placeholder="YYYY, YYYY-MM or YYYY-MM-DD",
                                        max_length=10, elem_id="before", visible=dated)
                    folder = gr.Textbox(label="In folder", placeholder="e.g. Holidays/2019", max_length=500,
                                        elem_id="folder", visible=folders)
                    sort = gr.Radio(list(SORTS), value="Best match first", label="Order", elem_id="sort",
                                    visible=dated)
                with gr.Row():
                    button = gr.Button("Search", variant="primary", elem_id="search-button")
                    like_button = gr.Button(MORE_LIKE, interactive=False, elem_id="more-like")
                gr.Examples(example_queries(collection), inputs=query, label="Try")
                with gr.Accordion("Query language", open=False, elem_id="grammar"):
                    gr.Markdown(f"```text\n{GRAMMAR}\n```")
                status = gr.Markdown(elem_id="status")
                gallery = gr.Gallery(label="Best matches", columns=5, height="auto", object_fit="contain",
                                     elem_id="results", allow_preview=True)
                more = gr.Button("Load more", visible=False, elem_id="load-more")
                outputs = [gallery, status, results, more, like_button]
                for trigger in (query.submit, button.click):
                    trigger(self.search_text, [query, after, before, folder, sort, k], outputs,
                            api_visibility="private")
                more.click(self.load_more, [results], outputs, api_visibility="private")
                gallery.select(self.select, [results], [selected, like_button], api_visibility="private")
                like_button.click(self.more_like, [selected, results, k], outputs, api_visibility="private")
            with gr.Tab("Search with a photo"):
                with gr.Row():
                    # preprocess=False: the handler takes the uploaded file as it is; Gradio's own
                    # preprocessing would open it with PIL before the pixel budget is applied
                    photo = gr.Image(type="filepath", image_mode=None, label="A photo",
                                     sources=["upload", "clipboard"], elem_id="photo")
                    with gr.Column():
                        photo_text = gr.Textbox(label="And (optional)", placeholder="e.g. but at night",
                                                max_length=2000, elem_id="photo-query")
                        k2 = gr.Slider(1, MAX_K, value=PAGE_SIZE, step=1, label="Results")
                button2 = gr.Button("Find similar photos", variant="primary", elem_id="photo-button")
                status2 = gr.Markdown(elem_id="photo-status")
                gallery2 = gr.Gallery(label="Most similar", columns=5, height="auto", object_fit="contain",
                                      elem_id="photo-results")
                for trigger in (photo.upload, button2.click):
                    trigger(self.search_with_photo, [photo, photo_text, k2], [gallery2, status2],
                            api_visibility="private", preprocess=False)
            # render_children: the threshold box is on the page from the start, not mounted at the moment the
            # tab opens, when a value typed into it could race the props Gradio hands a new component
            with gr.Tab("Duplicates", render_children=True):
                with gr.Row():
                    threshold = gr.Number(value=DUPLICATE_THRESHOLD, minimum=0.5, maximum=0.99, step=0.01,
                                          label="Similarity threshold, 0.5 to 0.99 (higher: only closer copies)",
                                          scale=3, elem_id="threshold")
                    button3 = gr.Button("Find near-duplicates", variant="primary", scale=1,
                                        elem_id="duplicates-button")
                status3 = gr.Markdown(elem_id="duplicates-status")
                gallery3 = gr.Gallery(label="Groups of near-duplicate photos", columns=6, height="auto",
                                      object_fit="contain", elem_id="duplicates")
                for trigger in (threshold.submit, button3.click):
                    trigger(self.show_duplicates, [threshold], [gallery3, status3], api_visibility="private")
            timer = gr.Timer(REFRESH_SECONDS, active=self.indexer is not None)  # (progress() sets its period)
            timer.tick(self.progress, None, [indexing, info, timer], api_visibility="private",
                       show_progress="hidden")
            gr.api(self.search, api_name="search")
            gr.api(self.search_photos, api_name="search_photos")
            gr.api(self.search_photo, api_name="search_photo")
            gr.api(self.duplicates, api_name="duplicates")
        return demo


def _upload_folder() -> str:
    from gradio.utils import get_upload_folder

    return get_upload_folder()


def serve(engine: Any, host: str, port: int, *, indexer: Any = None, block: bool = True, quiet: bool = False,
          upload_grace: float | None = None) -> gr.Blocks:
    """Serve the page over ``engine`` on host:port with the photo route and the refusal of malformed
    API requests; returns the Blocks (``block=False``: at once, still serving). ``upload_grace``:
    seconds an uploaded photo is kept after its last search (default ``web.UPLOAD_GRACE_S``)."""
    from starlette.middleware import Middleware

    uploads = Uploads(_upload_folder(), UPLOAD_GRACE_S if upload_grace is None else upload_grace).start()
    page = Page(engine, indexer, uploads)
    demo = page.blocks()
    # api_open=False: every call goes through the queue and its concurrency limit (the direct
    # /run/ and /api/ routes refuse queued functions).
    demo.queue(default_concurrency_limit=4, api_open=False)
    # No static or allowed paths: photos are served only by the photo route, Gradio's file route
    # reaches none of them.
    demo.launch(server_name=host, server_port=port, share=False, ssr_mode=False, show_error=True, quiet=quiet,
                max_file_size=MAX_UPLOAD_BYTES, prevent_thread_lock=not block, state_session_capacity=SESSION_CAPACITY,
                app_kwargs={"routes": [page.photos.route()],
                            "middleware": [Middleware(RefuseMalformedRequests),
                                           Middleware(LimitUploads, uploads=uploads)]})
    return demo
