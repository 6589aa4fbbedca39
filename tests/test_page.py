"""The page's own logic (crossmodal/page.py) without a browser: its handlers called as Gradio calls them,
over a real engine; the filter controls as query operators; the indexing line; what the layout shows
for a dataset and for own photos. tests/test_app_browser.py drives the same page in Chromium."""
from __future__ import annotations

import os
from types import SimpleNamespace

import gradio as gr
import pytest
from test_photos import models  # noqa: F401 - the module fixture
from test_search import FILES, engine, world  # noqa: F401 - the module fixture

from crossmodal import page
from crossmodal.collection import DatasetCollection
from crossmodal.engine import SearchEngine
from crossmodal.features.cache import write_cache
from crossmodal.query import parse_query

REQUEST = SimpleNamespace(headers={"host": "photos.example:7860"})  # a request rebuilt from its headers


def test_filter_controls_become_query_operators_that_parse_back():
    query = page.compose_query(" a dog -snow ", after="2019-06", before="2020", folder=" Summer  trip/2019 ",
                               sort="Newest first")
    assert query == 'a dog -snow after:2019-06 before:2020 in:"Summer trip/2019" sort:-date'
    canonical = 'after:2019-06-01 before:2020-01-01 in:"Summer trip/2019" sort:-date'
    assert parse_query(query).describe() == f"a dog -snow {canonical}"
    assert page.compose_query("a cat", sort="Best match first") == "a cat"
    assert page.filters_of(query) == f"-snow {canonical}"  # what more like this keeps
    for bad in ({"folder": 'a"b'}, {"sort": "by size"}):
        with pytest.raises(ValueError):
            page.compose_query("a cat", **bad)


class Indexer:
    """What the page reads of an IndexingThread."""

    def __init__(self, running, done=0, total=0, error=None, report=None, waiting=None, every=None):
        self.running, self.done, self.total, self.error, self.report = running, done, total, error, report
        self.waiting, self.every = waiting, every


class Report:
    def summary(self):
        return "embedded 200 new/changed"


def test_indexing_line_follows_the_background_thread():
    assert page.indexing_line(None, 120) == ""
    assert "looking for new and changed photos" in page.indexing_line(Indexer(True), 120)
    line = page.indexing_line(Indexer(True, 150, 200), 120)
    assert line.startswith("Indexing: 150 / 200 photos (searching the 120")
    assert page.indexing_line(Indexer(False, report=Report()), 120) == \
        "Index up to date: 120 photos (embedded 200 new/changed)"
    assert page.indexing_line(Indexer(False, report=Report(), every=300), 120) == \
        "Index up to date: 120 photos (embedded 200 new/changed); looking at the folders again every 300 s"
    assert page.indexing_line(Indexer(False, error=OSError("disk full")), 120) == "Indexing stopped: disk full"
    assert page.indexing_line(Indexer(False, waiting="another process is indexing into X"), 120) == \
        "Indexing waits: another process is indexing into X; searching the 120 photos indexed so far"


@pytest.fixture()
def photo_page(world):  # noqa: F811
    return page.Page(engine(world))


def test_a_search_its_next_page_and_more_like_this(photo_page):
    n = len(FILES)
    items, status, results, more, like = photo_page.search_text("a dog", "", "", "", "", 4, REQUEST)
    assert len(items) == 4 and all(url.startswith("http://photos.example:7860/photo/") for url, _ in items)
    assert status.startswith(f"{n} photos searched; showing 4 (") and "Understood as: `a dog`" in status
    assert more.visible is True and like.interactive is False
    assert [h.rank for h in results.hits] == [1, 2, 3, 4]
    # a caption: rank, score, then the date and folder the photo has
    first = results.hits[0]
    assert items[0][1] == page.hit_label(first) and first.taken_at[:10] in items[0][1]
    items2, status2, results2, more2, _ = photo_page.load_more(results, REQUEST)
    assert items2[:4] == items and len(items2) == 8 and [h.rank for h in results2.hits] == list(range(1, 9))
    assert status2.startswith(f"{n} photos searched; showing 8")
    *_, results3, more3, _ = photo_page.load_more(results2, REQUEST)
    assert len(results3.hits) == n and more3.visible is False
    # select the third hit, then more like it: the date filter is kept, the photo itself left out
    _, _, results, _, _ = photo_page.search_text("a dog", "2019", "", "", "", 10, REQUEST)
    selected, button = photo_page.select(results, SimpleNamespace(index=1))
    assert selected == results.hits[1].path and button.value == f"More like {os.path.basename(selected)}"
    items, status, liked, _, _ = photo_page.more_like(selected, results, 10, REQUEST)
    assert status.startswith(f"Photos like {page.as_text(os.path.basename(selected))}. ")
    assert liked.text == "after:2019-01-01" and selected not in {h.path for h in liked.hits}
    assert all(h.taken_at >= "2019" for h in liked.hits)


def test_refusals_are_errors_with_the_reason(photo_page):
    with pytest.raises(gr.Error, match="after:2019-13: not a valid date"):
        photo_page.search_text("a dog", "2019-13", "", "", "", 4, REQUEST)
    with pytest.raises(gr.Error, match="k must be from 1 to 50"):
        photo_page.search_text("a dog", "", "", "", "", 51, REQUEST)
    with pytest.raises(gr.Error, match="search first"):
        photo_page.load_more(None, REQUEST)
    with pytest.raises(gr.Error, match="select a photo"):
        photo_page.more_like(None, None, 4, REQUEST)
    with pytest.raises(gr.Error, match="threshold must be a number from 0.5"):
        photo_page.duplicates(1.0)
    with pytest.raises(gr.Error, match="not an indexed photo"):
        photo_page.search_photos("a dog", 3, 0, "nowhere.jpg")


def test_the_api_is_the_same_pipeline(photo_page):
    hits = photo_page.search("a dog in:A", 3)
    assert [h["rank"] for h in hits] == [1, 2, 3] and all(h["folder"].startswith("A") for h in hits)
    assert {"rank", "image_path", "name", "score", "confidence", "confident", "captions", "folder", "taken_at",
            "camera", "matched"} == set(hits[0])
    result = photo_page.search_photos("a dog in:A", 3, 0, "")
    assert [h["name"] for h in result["hits"]] == [h["name"] for h in hits] and result["indexing"] is None
    assert result["total"] == 4 and result["understood"] == "a dog in:A"
    photo_page.indexer = Indexer(True, 3, 8)
    assert photo_page.search_photos("a dog", 3, 0, "")["indexing"] == {"done": 3, "total": 8}
    groups = photo_page.duplicates(0.5)
    assert groups and all(len(g["closest"]) == len(g["names"]) - 1 for g in groups)


def test_the_layout_shows_what_the_collection_has(photo_page, world, tmp_path):  # noqa: F811
    """Own photos get date, folder and order controls; a dataset (no dates, no folders) does not. The
    first line says what is searched; the index and models are under Details."""
    def visible(demo: gr.Blocks) -> dict[str, bool]:
        return {b.elem_id: b.visible for b in demo.blocks.values() if getattr(b, "elem_id", None)}

    shown = visible(photo_page.blocks())
    assert all(shown[c] for c in ("after", "before", "folder", "sort", "details", "duplicates"))
    assert photo_page.info().startswith(f"Searching {len(FILES)} photos in ")
    assert "**index**: exact (exact search)" in photo_page.details()
    # the same photos as a captioned dataset: their vectors in a feature cache, a caption each
    view = photo_page.engine.current()
    collection = view.collection
    write_cache(tmp_path / "cache", list(collection.names), collection.pooled(0, collection.matrix_size()),
                {k: collection.identity[k] for k in ("backbone", "weights", "preprocess", "dim")}, [])
    captions = tmp_path / "captions.token"
    captions.write_text("".join(f"{n}#0\ta photo named {n}\n" for n in collection.names), encoding="utf-8")
    dataset = DatasetCollection.open(tmp_path / "cache", collection.root, captions)
    old = photo_page.engine
    dataset_page = page.Page(SearchEngine(dataset, old.model, {"backbones": old.backbones}, old.checkpoint,
                                          device="cpu", text_weights=world["bert"]))
    shown = visible(dataset_page.blocks())
    assert not any(shown[c] for c in ("after", "before", "folder", "sort"))
    hits = dataset_page.search("a dog", 2)
    assert hits[0]["captions"] == [f"a photo named {hits[0]['name']}"] and hits[0]["taken_at"] is None
    assert page.hit_label(dataset_page.run("a dog", 1).hits[0]).endswith(f"— a photo named {hits[0]['name']}")


def test_names_and_queries_are_shown_as_text():
    """A photo named with HTML and a query holding HTML and backticks show as written, not as markup."""
    from crossmodal.search import SearchResult

    result = SearchResult([], 3, True, 'a <b>bold</b> `dog` "x"')
    text = page.summary(result, 5.0, 0, like="/p/<img src=x onerror=alert(1)>.jpg")
    assert "Photos like &lt;img src=x onerror=alert(1)&gt;.jpg." in text
    assert 'Understood as: ``a <b>bold</b> `dog` "x"``' in text  # a code span: HTML inside it is text
    assert page.as_text("*not bold* [no](link)") == "\\*not bold\\* \\[no\\](link)"
