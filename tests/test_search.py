"""The query pipeline (crossmodal/search.py) over the photo index: filters, exclusions, sort by date,
photo + text, more like this, name and OCR fusion, pagination, good_match, the search index and the
exact path agreeing, and search.py --photos over it.

Backbones are a random ResNet18 and a tiny BERT (tests/helpers.py), so the semantic ranking means
nothing: every expectation is computed here from the engine's own embeddings and scores, and dates
and folders are set on constructed files (mtimes). Calibration curves are made up to put chosen
photos above or below the confident threshold.
"""
from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from helpers import random_photo
from test_photos import models, run  # noqa: F401 - the module fixture

from crossmodal import calibration, images, search
from crossmodal import engine as engine_module
from crossmodal.engine import SearchEngine
from crossmodal.fusion import RRF_K, rrf_fuse
from crossmodal.name_match import NAME_WEIGHT
from crossmodal.photos import PhotoCollection
from crossmodal.querybank import bank_for_query
from crossmodal.search import OCR_WEIGHT

search_photos = search.search

# name, folder, year taken: three folders, dates from 2015 to 2024
FILES = [("dog_beach.png", "A/2019", 2019), ("b.png", "A/2019", 2019), ("c.png", "A", 2016), ("d.png", "A", 2021),
         ("zebra.png", "B", 2015), ("f.png", "B", 2022), ("g.png", "B/deep/2019", 2018), ("h.png", "", 2024),
         ("i.png", "", 2020), ("stop.png", "", 2017)]


@pytest.fixture(scope="module")
def world(models, tmp_path_factory):  # noqa: F811
    base = tmp_path_factory.mktemp("photo_search")
    root, index = base / "photos", base / "index"
    rng = np.random.default_rng(21)
    for name, folder, year in FILES:
        (root / folder).mkdir(parents=True, exist_ok=True)
        random_photo(rng).save(root / folder / name)
        when = time.mktime((year, 6, 15, 12, 0, 0, 0, 0, -1))

        os.utime(root / folder / name, (when, when))
    texts = {"stop.png": "STOP\nMain Street", "d.png": "Happy birthday"}
    report = run(models, index, root, read_text=lambda p: texts.get(Path(p).name, ""))
    assert report.texts_read == len(FILES)
    return dict(root=root, index=index, **models)


def engine(world, calibration_curve=None) -> SearchEngine:
    state = dict(world["state"])
    if calibration_curve is not None:
        state["calibration"] = {"sentence": calibration_curve, "short": calibration_curve, "top_k": 10}
    return SearchEngine(PhotoCollection.open(world["index"], [world["root"]]), world["model"], state,
                        world["checkpoint"], device="cpu", text_weights=world["bert"], image_weights=world["resnet"])


def names(e: SearchEngine) -> list[str]:
    return list(e.current().collection.names)


def ranking_scores(e: SearchEngine, text: str) -> dict[str, float]:
    """name -> the score search ranks by for ``text`` (cosine minus the querybank bias), from the embeddings."""
    view = e.current()
    q = e.embed_text(text)
    cos = np.asarray(view.embeddings, dtype=np.float32) @ q
    bank = bank_for_query(text, tuple(view.biases))
    if bank:
        cos = cos - view.biases[bank]
    return dict(zip(view.collection.names, cos.tolist()))


def splitting_curve(scores: list[float], above: int) -> dict:
    """A curve whose confident threshold (0.5: where slope * score + intercept = 0) falls between the
    ``above``-th and the next best score."""
    s = sorted(scores, reverse=True)
    mid = (s[above - 1] + s[above]) / 2
    return {"method": "platt", "slope": 100.0, "intercept": -100.0 * mid}


def test_filters_by_date_and_folder(world):
    e = engine(world)
    res = search_photos(e, "a dog after:2019 before:2022 in:A", k=50)
    want = {n for n, f, y in FILES if 2019 <= y < 2022 and f.split("/")[0] == "A"}
    assert {Path(h.path).name for h in res.hits} == want == {"dog_beach.png", "b.png", "d.png"}
    assert res.total == 3 and res.understood == "a dog after:2019-01-01 before:2022-01-01 in:A"
    by = {Path(h.path).name: h for h in res.hits}
    assert by["b.png"].folder == "A/2019" and by["b.png"].name == "A/2019/b.png"
    assert by["d.png"].taken_at.startswith("2021-06-15") and by["d.png"].folder == "A"
    assert [h.rank for h in res.hits] == [1, 2, 3]
    # in:2019 is a folder name at any depth; date: a whole year
    assert {Path(h.path).name for h in search_photos(e, "in:2019", k=50).hits} == {"dog_beach.png", "b.png",
                                                                                   "g.png"}
    assert {Path(h.path).name for h in search_photos(e, "date:2018", k=50).hits} == {"g.png"}
    # filters alone: newest first; sort:date oldest first
    years = [int(h.taken_at[:4]) for h in search_photos(e, "in:B", k=50).hits]
    assert years == [2022, 2018, 2015]
    assert [int(h.taken_at[:4]) for h in search_photos(e, "in:B sort:date", k=50).hits] == [2015, 2018, 2022]


def test_exclusion_by_confidence_when_calibrated_else_top_fraction(world):
    e = engine(world)
    term = ranking_scores(e, "red ball")
    top_term = max(term, key=term.get)
    # uncalibrated: the term's top MATCH_TOP_FRACTION (here 1 of 10 photos) is left out
    assert search.MATCH_TOP_FRACTION * len(FILES) <= 1
    res = search_photos(e, "a dog -\"red ball\"", k=50)
    assert res.total == len(FILES) - 1 and top_term not in {h.name for h in res.hits}
    # calibrated: every photo confident for the term is left out (here its best three)
    calibrated = engine(world, splitting_curve(list(term.values()), 3))
    res = search_photos(calibrated, "a dog -\"red ball\"", k=50)
    best3 = sorted(term, key=term.get, reverse=True)[:3]
    assert res.total == len(FILES) - 3 and not set(best3) & {h.name for h in res.hits}


def test_sort_by_date_orders_the_confident_matches_then_the_rest(world):
    query = "a dog runs on the grass"
    scores = ranking_scores(engine(world), query)
    e = engine(world, splitting_curve(list(scores.values()), 4))
    by_rank = search_photos(e, query, k=50)
    confident = [h.name for h in by_rank.hits if h.confident]
    assert len(confident) == 4 and by_rank.good_match
    for sort, newest in (("date", False), ("-date", True)):
        res = search_photos(e, f"{query} sort:{sort}", k=50)
        head = res.hits[:4]
        assert {h.name for h in head} == set(confident)
        assert [h.taken_at for h in head] == sorted((h.taken_at for h in head), reverse=newest)
        rest = [h.name for h in res.hits[4:]]
        assert rest == [h.name for h in by_rank.hits if not h.confident]  # in rank order
    curve = splitting_curve(list(scores.values()), 4)
    for h in by_rank.hits:
        c = 1 / (1 + np.exp(-(curve["slope"] * scores[h.name] + curve["intercept"])))
        assert h.confidence == pytest.approx(c, abs=1e-3) and h.confident == (c >= calibration.CONFIDENT)


def test_more_like_this_uses_the_stored_vector_and_decodes_nothing(world, monkeypatch):
    e = engine(world)
    rows = names(e)
    emb = np.asarray(e.current().embeddings, dtype=np.float32)
    decodes = []
    for module, name in ((images, "open_image"), (images, "load_image"), (images, "upright_rgb"),
                         (engine_module, "load_image")):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _o=original, **kw: decodes.append(a) or _o(*a, **kw))
    e.embed_image(world["root"] / "h.png")  # (what counting sees when a photo is decoded)
    assert decodes != []
    decodes.clear()
    source = world["root"] / "B" / "zebra.png"
    res = search_photos(e, "", like=str(source), k=50)
    assert decodes == []
    row = rows.index("B/zebra.png")
    sims = emb @ (emb[row] / np.linalg.norm(emb[row]))
    want = [rows[i] for i in np.argsort(-sims, kind="stable") if i != row]
    assert [h.name for h in res.hits] == want and res.total == len(FILES) - 1  # the photo itself left out
    assert [h.score for h in res.hits] == pytest.approx(sorted(np.delete(sims, row), reverse=True), abs=1e-5)
    assert all(h.confidence is None for h in res.hits) and res.good_match
    # by its name below the root, with a filter
    assert {h.name for h in search_photos(e, "in:A", like="B/zebra.png", k=50).hits} == \
        {n for n in rows if n.startswith("A/")}
    with pytest.raises(ValueError, match="not an indexed photo"):
        search_photos(e, "", like=str(world["root"] / "nope.png"))


def test_photo_plus_text_is_the_normalised_sum(world, tmp_path):
    e = engine(world)
    rows, emb = names(e), np.asarray(e.current().embeddings, np.float32)
    query_photo = tmp_path / "q.png"
    random_photo(np.random.default_rng(99)).save(query_photo)
    img = e.embed_image(query_photo)
    img = img / np.linalg.norm(img)
    txt = e.embed_text("a man at night on the grass")
    vec = (img + txt) / np.linalg.norm(img + txt)
    sims = emb @ vec
    res = search_photos(e, "a man at night on the grass", photo=query_photo, k=50)
    assert [h.name for h in res.hits] == [rows[i] for i in np.argsort(-sims, kind="stable")]
    alone = search_photos(e, "", photo=query_photo, k=50)
    assert [h.score for h in alone.hits] == pytest.approx(sorted(emb @ img, reverse=True), abs=1e-4)
    assert [h.name for h in res.hits] != [h.name for h in alone.hits] or len(FILES) < 3


def test_file_names_and_text_in_photos_are_fused(world):
    e = engine(world)
    semantic = search_photos(e, "a zebra", k=50)  # "zebra" is no word of the tiny text model
    scores = ranking_scores(e, "a zebra")
    plain = sorted(scores, key=scores.get, reverse=True)
    zebra = next(h for h in semantic.hits if h.name == "B/zebra.png")
    assert zebra.matched == ["semantic", "file name: zebra"]
    row = {n: i for i, n in enumerate(names(e))}
    fused = rrf_fuse([[row[n] for n in plain], [[row["B/zebra.png"]]]], RRF_K, [1.0, NAME_WEIGHT])
    assert [h.name for h in semantic.hits] == [names(e)[i] for i in fused]
    moved = [zebra.rank < plain.index("B/zebra.png") + 1]
    # text read in a photo: an FTS5 match, fused; the words found are shown
    res = search_photos(e, "stop street", k=50)
    hit = next(h for h in res.hits if h.name == "stop.png")
    assert hit.matched == ["semantic", "file name: stop", "text in photo: STOP Street"]
    res = search_photos(e, "happy birthday", k=50)
    d = next(h for h in res.hits if h.name == "A/d.png")
    assert d.matched == ["semantic", "text in photo: Happy birthday"]
    ranks = ranking_scores(e, "happy birthday")
    plain = sorted(ranks, key=ranks.get, reverse=True)
    fused = rrf_fuse([[row[n] for n in plain], [], [row["A/d.png"]]], RRF_K, [1.0, NAME_WEIGHT, OCR_WEIGHT])
    assert [h.name for h in res.hits] == [names(e)[i] for i in fused]
    moved.append(d.rank < plain.index("A/d.png") + 1)
    assert any(moved)  # the constructed data lets fusion change an order


def test_pagination_and_good_match(world):
    e = engine(world)
    query = "a dog on the beach"
    full = search_photos(e, query, k=50)
    page = search_photos(e, query, k=3, offset=3)
    assert [h.rank for h in page.hits] == [4, 5, 6] and page.total == full.total == len(FILES)
    assert [h.name for h in page.hits] == [h.name for h in full.hits[3:6]]
    assert search_photos(e, query, k=3, offset=9).hits[0].rank == 10
    assert search_photos(e, query, offset=10).hits == []
    assert full.good_match and all(h.confidence is None for h in full.hits)  # uncalibrated: nothing called weak
    scores = ranking_scores(e, query)
    nothing = engine(world, {"method": "platt", "slope": 1.0, "intercept": -50.0})
    weak = search_photos(nothing, query, k=3)
    assert not weak.good_match and not any(h.confident for h in weak.hits)
    one = engine(world, splitting_curve(list(scores.values()), 1))
    assert search_photos(one, query, k=3, offset=5).good_match  # the confident hit is on the first page
    for bad, kw in (("after:2019-13", {}), (query, {"k": 0}), (query, {"offset": -1}), ("", {})):
        with pytest.raises(ValueError):
            search_photos(e, bad, **kw)


def test_an_unfiltered_query_goes_through_the_search_index_and_agrees_with_exact_scoring(world, monkeypatch):
    """Nothing filters, nothing is fused: the index answers (asked for offset + 2 k rows: k more, for
    hits whose file is gone); a filter that passes every photo takes the exact path; both give the same
    page."""
    e = engine(world)
    view = e.current()
    asked = []
    real = type(view.index).search

    def spy(index, queries, k, bank=None):
        asked.append(k)
        return real(index, queries, k, bank)

    monkeypatch.setattr(type(view.index), "search", spy)
    query = "a cat on a red bike"  # no word of any file name, no text read in a photo
    by_index = search_photos(e, query, k=3, offset=2)
    assert asked == [8]
    everything = search_photos(e, query + " after:1900", k=3, offset=2)  # passes every photo: exact scoring
    assert asked == [8] and everything.understood.endswith("after:1900-01-01")
    assert [(h.name, round(h.score, 5)) for h in by_index.hits] == [(h.name, round(h.score, 5))
                                                                      for h in everything.hits]
    assert by_index.total == everything.total == len(FILES)
    search_photos(e, "", like="B/zebra.png", k=2)  # more like this: the index, one more row for the photo itself
    assert asked == [8, 5]


def test_ocr_is_resumable_and_follows_changes(world, tmp_path, models):  # noqa: F811
    import shutil

    root, index = tmp_path / "p", tmp_path / "index"
    shutil.copytree(world["root"] / "B", root)
    calls = []

    def read_text(path):
        calls.append(Path(path).name)
        if Path(path).name == "f.png":
            raise ValueError("not a readable image file")  # recorded as no text
        return "WELCOME" if Path(path).name == "zebra.png" else ""

    assert run(models, index, root).texts_read == 0  # without OCR nothing is read
    assert run(models, index, root, read_text=read_text).texts_read == 3 and sorted(calls) == ["f.png", "g.png",
                                                                                                "zebra.png"]
    assert run(models, index, root, read_text=read_text).texts_read == 3 - 3  # all read: nothing again
    from crossmodal.photos.store import PhotoStore

    with PhotoStore(index) as s:
        assert [(Path(s.record(root / "zebra.png").path).name, t) for _, t in s.ocr_matches(["welcome"])] == [
            ("zebra.png", "WELCOME")]
        assert s.record(root / "f.png").ocr_text == ""
    random_photo(np.random.default_rng(5)).save(root / "zebra.png")  # new content: its old text is gone

    st = (root / "zebra.png").stat()
    os.utime(root / "zebra.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    calls.clear()
    run(models, index, root)
    with PhotoStore(index) as s:
        assert s.ocr_matches(["welcome"]) == [] and s.record(root / "zebra.png").ocr_text is None
    assert run(models, index, root, read_text=read_text).texts_read == 1 and calls == ["zebra.png"]


def test_search_script_shows_confidence_date_folder_and_weak_matches(world, capsys, tmp_path):
    import torch

    import search as search_script

    ckpt = tmp_path / "calibrated.pt"
    state = torch.load(world["checkpoint"], weights_only=True)
    state["calibration"] = {"sentence": {"method": "platt", "slope": 1.0, "intercept": -50.0}, "top_k": 10}
    torch.save(state, ckpt)
    common = ["--collection", str(world["index"]), "--image-weights", str(world["resnet"]), "--text-weights",
              str(world["bert"]), "--workers", "0", "--device", "cpu", "--no-progress", "--k", "3"]
    assert search_script.main(common + ["--checkpoint", str(ckpt), "--photos", str(world["root"]), "--query",
                                        "a dog runs on the grass in:A"]) == 0
    out = capsys.readouterr()
    lines = out.out.strip().splitlines()
    assert lines[0] == "no good match — nearest photos shown, marked weak"
    assert len(lines) == 4 and all(line.endswith("(weak)") for line in lines[1:])
    rank, score, conf, day, folder, path, _ = lines[1].split()
    assert rank == "1" and float(conf) < 0.5 and folder.startswith("A") and Path(path).is_file()
    assert datetime.fromisoformat(day).year in (2016, 2019, 2021)
    assert "of 4 photo(s) searched; understood as: a dog runs on the grass in:A" in out.err
    assert search_script.main(common + ["--checkpoint", str(world["checkpoint"]), "--photos", str(world["root"]),
                                        "--like", str(world["root"] / "h.png")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and "h.png" not in " ".join(lines) and "no good match" not in lines[0]
    assert search_script.main(common + ["after:2019-13", "--photos", str(world["root"])]) == 2
    assert "after:2019-13: not a valid date" in capsys.readouterr().err
    fresh = tmp_path / "fresh_index"  # a refused query indexes nothing first
    assert search_script.main([*common[2:], "--collection", str(fresh), "   ", "--photos", str(world["root"])]) == 2
    assert "empty query" in capsys.readouterr().err and not fresh.exists()
    # a word after --photos is a folder, never the query, said before anything is indexed: here "models"
    # names a folder of the current directory (the project's own)
    for words, message in [(["no-such-folder"], "no such folder: no-such-folder (the words after --photos are "
                                                "folders; a query goes before --photos, after --, or in --query)"),
                           (["models"], f"the query is required (every word after --photos is a folder, here "
                                        f"{world['root']}, models; a query goes before --photos")]:
        with pytest.raises(SystemExit) as exit_:
            search_script.main(common + ["--photos", str(world["root"]), *words])
        assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_index_folder_ocr_flag_reads_text_and_says_what_to_install(world, tmp_path, monkeypatch, capsys):
    import shutil

    import index_folder
    from crossmodal import ocr

    folder = tmp_path / "p"
    shutil.copytree(world["root"] / "B", folder)
    argv = [str(folder), "--out", str(tmp_path / "index"), "--checkpoint", str(world["checkpoint"]),
            "--image-weights", str(world["resnet"]), "--workers", "0", "--device", "cpu", "--no-progress", "--ocr"]
    monkeypatch.setattr(ocr, "ocr_available", lambda: False)
    assert index_folder.main(argv) == 2
    monkeypatch.setattr(ocr, "ocr_available", lambda: True)
    monkeypatch.setattr(ocr, "read_text", lambda path: "OPEN" if Path(path).name == "f.png" else "")
    assert index_folder.main(argv) == 0
    assert "text read in 3 photos" in capsys.readouterr().out
    from crossmodal.photos.store import PhotoStore

    with PhotoStore(tmp_path / "index") as s:
        assert [t for _, t in s.ocr_matches(["open"])] == ["OPEN"]


def test_a_read_only_index_is_searched_with_a_one_line_warning(world, monkeypatch, capsys, caplog):
    import errno
    import logging

    import search as search_script
    from crossmodal.photos.store import PhotoStore

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self.folder / "index.lock"))

    monkeypatch.setattr(PhotoStore, "writing", read_only)
    argv = ["a dog", "--photos", str(world["root"]), "--collection", str(world["index"]), "--checkpoint",
            str(world["checkpoint"]), "--image-weights", str(world["resnet"]), "--text-weights", str(world["bert"]),
            "--device", "cpu", "--workers", "0", "--no-progress", "--k", "3"]
    with caplog.at_level(logging.WARNING):
        assert search_script.main(argv) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [f"cannot update the photo index in {world['index']} (Read-only file system): searching it "
                        "as it is"]


def test_dates_reach_the_last_year_and_folders_their_own_name(world):
    e = engine(world)
    assert search_photos(e, "date:9999", k=5).understood == "after:9999-01-01"  # no photo, no error
    assert search_photos(e, "date:9999", k=5).total == 0
    everything = search_photos(e, "in:photos", k=50)  # the indexed folder's own name
    assert everything.total == len(FILES)
    assert search_photos(e, "in:photos/A", k=50).total == 4
    with pytest.raises(ValueError, match="is not an indexed photo"):
        search_photos(e, "", like="nowhere\x00.jpg")
