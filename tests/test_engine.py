"""The search engine over a dataset, and search.py, on a tiny image set with random local backbones.

The backbones are a randomly initialised ResNet18 (saved as a local state dict) and a 2-layer BERT;
the checkpoint's heads are random too. The checks compare the engine with an independent brute-force
computation, so a misaligned row, a wrong pooling or a preprocessing mismatch fails them.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import random_photo, save_checkpoint, save_random_resnet18, save_tiny_bert
from PIL import Image

from crossmodal import photos, projection
from crossmodal.backbones import create_image_backbone, create_text_backbone
from crossmodal.collection import CollectionError, DatasetCollection
from crossmodal.demo_data import write_blank_png
from crossmodal.engine import EngineError, SearchEngine, load_image_backbone
from crossmodal.features import extract
from crossmodal.search import search

from model import RetrievalModel, load_checkpoint

N_IMAGES = 16
WORDS = ("a an the two dog dogs cat man woman child girl boy is are runs running plays sits jumps on in "
         "with of and at near red blue green white black ball grass water street park beach snow bike").split()
EMBED = 16


def jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Images (one unreadable), captions, an image feature cache, two random backbones and a checkpoint."""
    base = tmp_path_factory.mktemp("engine")
    resnet_file = save_random_resnet18(base / "resnet18.pth")
    bert_dir = save_tiny_bert(base / "bert-base-uncased", words=WORDS)

    images = base / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    names = [f"img_{i:02d}.jpg" for i in range(N_IMAGES)]
    for n in names:
        (images / n).write_bytes(jpeg(random_photo(rng)))
    names.insert(5, "broken.jpg")
    (images / "broken.jpg").write_bytes(b"not a jpeg at all")
    lines = []
    for n in names:
        for j in range(2):
            lines.append(f"{n}#{j}\t{' '.join(rng.choice(WORDS, 6))}\n")
    captions = base / "captions.token"
    captions.write_text("".join(lines), encoding="utf-8")

    image_bb = create_image_backbone("resnet18", resnet_file)
    text_bb = create_text_backbone("bert-base-uncased", bert_dir)
    cache_dir = base / "image_embeddings"
    extract.extract_image_features(image_bb, images, names, cache_dir, num_workers=0, batch_size=8,
                                   chunk_size=8, device="cpu", extra={"images_dir": str(images)})
    checkpoint = base / "best.pt"
    save_checkpoint(checkpoint, 1, image_bb, text_bb)
    return dict(base=base, images=images, names=names, captions=captions, cache=cache_dir, checkpoint=checkpoint,
                resnet_file=resnet_file, bert_dir=bert_dir, image_bb=image_bb, text_bb=text_bb)


def serve(checkpoint, cache, images, captions=None, **kw) -> SearchEngine:
    """A SearchEngine over the dataset with the heads loaded from ``checkpoint``, as the app opens it."""
    model, state = load_checkpoint(checkpoint)
    return SearchEngine(DatasetCollection.open(cache, images, captions), model, state, checkpoint, **kw)


def open_engine(world, checkpoint=None, **kw) -> SearchEngine:
    return serve(checkpoint or world["checkpoint"], world["cache"], world["images"], world["captions"],
                 device="cpu", text_weights=world["bert_dir"], image_weights=world["resnet_file"], **kw)


@pytest.fixture(scope="module")
def engine(world) -> SearchEngine:
    return open_engine(world)


def hits_for(engine: SearchEngine, query: str = "", k: int = 5, **kw) -> list:
    return search(engine, query, k=k, **kw).hits


def embeddings(engine: SearchEngine) -> np.ndarray:
    return np.asarray(engine.current().embeddings)


def brute_force(world, query: str, checkpoint=None) -> dict[str, float]:
    """Scores of every readable image, computed without the engine: raw BERT + heads + numpy."""
    state = torch.load(checkpoint or world["checkpoint"], map_location="cpu", weights_only=True)
    model = RetrievalModel(**state["model_config"])
    model.load_state_dict(state["model"])
    model.eval()
    feats = np.load(world["cache"] / "features.npy").astype(np.float32)
    ids = (world["cache"] / "ids.txt").read_text().splitlines()
    tok = world["text_bb"].tokenizer(query, return_tensors="pt", truncation=True, max_length=64)
    with torch.no_grad():
        hidden = world["text_bb"].model(**tok).last_hidden_state[0]
        q = model.encode_text(hidden.mean(0, keepdim=True)).numpy()[0]
        img = model.encode_image(torch.from_numpy(feats)).numpy()
    return {n: float(img[i] @ q) for i, n in enumerate(ids) if n != "broken.jpg"}


# --------------------------------------------------------------------------------------------------
# text and image search

@pytest.mark.parametrize("query", ["a dog runs on the grass", "two children at the beach in the snow",
                                   "red ball"])
def test_text_ranking_matches_brute_force(world, engine, query):
    expected = brute_force(world, query)
    best = sorted(expected.values(), reverse=True)
    hits = hits_for(engine, query, k=N_IMAGES)
    assert [h.rank for h in hits] == list(range(1, N_IMAGES + 1))
    assert sorted(h.name for h in hits) == sorted(expected)
    for h, b in zip(hits, best):
        # float16 storage: scores agree to ~1e-3; a wrong order puts a lower score at a higher rank
        assert h.score == pytest.approx(b, abs=3e-3), (h.rank, h.name)
        assert h.score == pytest.approx(expected[h.name], abs=3e-3), h.name
        assert h.path == str(world["images"].resolve() / h.name)
    top5 = hits_for(engine, query, k=5)
    assert [h.name for h in top5] == [h.name for h in hits[:5]]
    page2 = search(engine, query, k=5, offset=5)
    assert [h.name for h in page2.hits] == [h.name for h in hits[5:10]] and page2.total == N_IMAGES


def test_hits_carry_captions_and_are_json_friendly(world, engine):
    hit = hits_for(engine, "a cat", k=1)[0]
    lines = world["captions"].read_text().splitlines()
    assert hit.captions == [line.split("\t")[1] for line in lines if line.startswith(hit.name + "#")]
    assert json.loads(json.dumps(hit.to_dict()))["name"] == hit.name


def test_image_search_finds_the_photo_itself(world, engine):
    for name in ("img_00.jpg", "img_07.jpg", "img_15.jpg"):
        hits = hits_for(engine, photo=Image.open(world["images"] / name), k=3)
        assert hits[0].name == name
        assert hits[0].score > 0.99
        assert hits[1].score < hits[0].score
        # a file is decoded within the pixel budget (crossmodal.images), to the same result
        from_file = hits_for(engine, photo=world["images"] / name, k=3)
        assert [(h.name, round(h.score, 4)) for h in from_file] == [(h.name, round(h.score, 4)) for h in hits]
        # more like this: the stored vector, the photo itself left out
        like = hits_for(engine, like=name, k=2)
        assert [h.name for h in like] == [h.name for h in hits[1:3]]


def test_image_search_refuses_a_file_over_the_pixel_budget(world, engine, tmp_path):
    big = write_blank_png(tmp_path / "big.png", 10_000, 10_000)
    with pytest.raises(ValueError, match="10,000 x 10,000 pixels"):
        hits_for(engine, photo=big, k=3)
    (tmp_path / "page.png").write_bytes(b"<html></html>")
    with pytest.raises(ValueError, match="not a readable image"):
        hits_for(engine, photo=tmp_path / "page.png", k=3)
    tall = write_blank_png(tmp_path / "tall.png", 1, 100_000)  # few pixels, but a shape no photo has
    with pytest.raises(ValueError, match="1 x 100,000 pixels, 100,000 times longer than wide; photos up to 25 to 1"):
        hits_for(engine, photo=tall, k=3)


def test_unreadable_rows_are_never_returned(engine):
    collection = engine.current().collection
    assert "broken.jpg" not in collection.names
    assert len(collection) == N_IMAGES
    hits = hits_for(engine, "a man", k=50)  # more than there are
    assert len(hits) == N_IMAGES and "broken.jpg" not in {h.name for h in hits}


def test_query_validation(engine):
    for bad in ("", "   ", "\n\t"):
        with pytest.raises(ValueError, match="empty query"):
            hits_for(engine, bad)
    with pytest.raises(ValueError, match="too long"):
        hits_for(engine, "dog " * 501)  # 2,004 characters
    long_ok = ("a dog runs on the grass " * 80)[:2000]
    assert len(hits_for(engine, long_ok, k=2)) == 2  # truncated by the tokenizer, not refused
    for bad_k, why in [(0, "from 1 to 50"), (-3, "from 1 to 50"), (51, "from 1 to 50"), (2.5, "whole number"),
                       ("3", "whole number"), (True, "whole number"), (None, "whole number")]:
        with pytest.raises(ValueError, match=f"k must be .*{why}|k must be a {why}"):
            hits_for(engine, "a dog", k=bad_k)
    assert len(hits_for(engine, "a dog", k=3.0)) == 3
    with pytest.raises(ValueError, match="offset must be a whole number from 0"):
        search(engine, "a dog", offset=-1)


def test_check_page_names_the_value_and_the_range():
    from crossmodal.search import check_page

    assert check_page(7) == (7, 0) and check_page(50.0, 3.0) == (50, 3)
    assert check_page(np.int64(4), np.int64(2)) == (4, 2)
    for bad, message in [((51,), "k must be from 1 to 50, got 51"), ((0,), "k must be from 1 to 50, got 0"),
                         ((2.5,), "k must be a whole number of results, got 2.5"),
                         (("5",), "k must be a whole number of results, got '5'"),
                         ((5, 2.5), "offset must be a whole number from 0 to 100,000, got 2.5"),
                         ((5, True), "offset must be a whole number from 0 to 100,000, got True")]:
        with pytest.raises(ValueError) as err:
            check_page(*bad)
        assert str(err.value) == message


def test_index_kind_and_description(engine):
    details = engine.details()
    assert details["index"].startswith("exact") and f"{N_IMAGES:,} photos" in details["collection"]
    assert f"{N_IMAGES:,} photos" in engine.describe()
    assert engine.current().embeddings.dtype == np.float16


def test_faiss_recall_is_tuned_on_text_queries(world, monkeypatch):
    """A FAISS index's recall is measured on the collection's captions encoded as queries."""
    import crossmodal.index as search_index
    seen = {}
    real_build = search_index.FaissIndex.build.__func__

    def spy(cls, vectors, kind="faiss-ivf", **kw):
        seen.update(kw)
        return real_build(cls, vectors, kind, **kw)

    monkeypatch.setattr(search_index.FaissIndex, "build", classmethod(spy))
    e = open_engine(world, index_kind="faiss-ivf")
    view = e.current()
    assert view.index.kind == "faiss-ivf" and view.index.recall_at_10 is not None
    assert "measured recall@10" in e.details()["index"]
    queries = seen["queries"]
    captions = [c for row in view.collection.captions for c in row.split("\n")]
    assert len(queries) == len(captions) > len(view)  # every caption (fewer than TUNING_QUERIES)
    np.testing.assert_allclose(queries[0], e.embed_text(captions[0]), atol=1e-4)
    assert seen["biases"] is view.biases  # measured with the querybank the page ranks with

    exact = open_engine(world)  # small collections stay exact and need no tuning queries
    assert exact.current().index.kind == "exact"


# --------------------------------------------------------------------------------------------------
# the projected-matrix cache

def projected_files(world) -> list[Path]:
    return sorted(world["cache"].glob("projected-*"))


def test_projected_cache_reused_then_rebuilt_when_checkpoint_changes(world, engine, monkeypatch, tmp_path):
    files = projected_files(world)
    assert len(files) == 1
    first = files[0]
    stamp = first.stat().st_mtime_ns
    with monkeypatch.context() as m:  # a reload must not project again
        m.setattr(projection.ProjectionCache, "_project", lambda *a, **k: pytest.fail("projected again"))
        again = open_engine(world)
    assert first.stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(embeddings(again), embeddings(engine))

    other = tmp_path / "other.pt"
    save_checkpoint(other, 2, world["image_bb"], world["text_bb"])  # same architecture, other weights
    changed = open_engine(world, checkpoint=other)
    files = projected_files(world)
    assert len(files) == 1 and files[0] != first  # the stale projection is replaced
    assert not np.allclose(embeddings(changed).astype(np.float32), embeddings(engine).astype(np.float32), atol=1e-2)
    query = "a girl plays with a ball"
    expected = brute_force(world, query, checkpoint=other)
    top = hits_for(changed, query, k=1)[0]
    assert top.score == pytest.approx(max(expected.values()), abs=3e-3)

    # the same file path rewritten with new weights also invalidates it (the digest is of the bytes)
    save_checkpoint(other, 3, world["image_bb"], world["text_bb"])
    rewritten = open_engine(world, checkpoint=other)
    assert projected_files(world)[0] != files[0]
    assert not np.allclose(embeddings(rewritten).astype(np.float32), embeddings(changed).astype(np.float32),
                           atol=1e-2)
    open_engine(world)  # leave the module's checkpoint projection in place for the other tests


def test_a_damaged_projection_is_made_again(world, engine):
    path = projected_files(world)[0]
    path.write_bytes(np.random.default_rng(4).integers(0, 256, path.stat().st_size, dtype=np.uint8).tobytes())
    again = open_engine(world)
    np.testing.assert_array_equal(embeddings(again), embeddings(engine))


def test_a_torn_projection_is_completed(world, engine):
    path = projected_files(world)[0]
    with open(path, "r+b") as f:  # 3 whole rows and half of the next: a write killed halfway
        f.truncate(3 * EMBED * 2 + EMBED)
    again = open_engine(world)
    np.testing.assert_array_equal(embeddings(again), embeddings(engine))


def test_refuses_features_or_backbone_of_another_model(world, tmp_path):
    wrong = tmp_path / "wrong_image.pt"
    save_checkpoint(wrong, 1, world["image_bb"], world["text_bb"], image_weights="resnet18.pth:0000000000000000")
    with pytest.raises(EngineError, match="was trained on resnet18 .*resnet18.pth:0000000000000000.*extract the image"):
        open_engine(world, checkpoint=wrong)

    other_bert = tmp_path / "bert-base-uncased"
    from transformers import BertConfig, BertModel

    for f in world["bert_dir"].iterdir():
        if f.suffix not in (".safetensors", ".bin"):
            (other_bert / f.name).parent.mkdir(exist_ok=True)
            (other_bert / f.name).write_bytes(f.read_bytes())
    torch.manual_seed(5)
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                         vocab_size=len(WORDS) + 5, max_position_embeddings=128)).save_pretrained(str(other_bert))
    with pytest.raises(EngineError, match="text backbone"):
        serve(world["checkpoint"], world["cache"], world["images"], device="cpu",
              text_weights=other_bert).text_backbone


def test_missing_checkpoint_names_the_training_command(world, tmp_path, capsys):
    import search as search_script

    with pytest.raises(FileNotFoundError, match="run_train.py"):
        serve(tmp_path / "nope.pt", world["cache"], world["images"])
    args = ["a dog", "--checkpoint", str(tmp_path / "nope.pt"), "--work-dir", str(tmp_path / "W")]
    assert search_script.main(args) == 2
    assert "python run_train.py" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# own photo folders (tests/test_photos.py tests the photo index itself)

def test_index_folder_cli_prints_summary(world, tmp_path, capsys):
    folder = tmp_path / "pics"
    folder.mkdir()
    random_photo(np.random.default_rng(3)).save(folder / "one.jpg")
    argv = [str(folder), "--checkpoint", str(world["checkpoint"]), "--out", str(tmp_path / "idx"),
            "--image-weights", str(world["resnet_file"]), "--workers", "0", "--device", "cpu"]
    import index_folder as index_folder_script

    assert index_folder_script.main(argv) == 0
    assert "embedded 1 new/changed, removed 0, kept 0" in capsys.readouterr().out
    assert index_folder_script.main(argv) == 0
    assert "embedded 0 new/changed, removed 0, kept 1" in capsys.readouterr().out
    assert index_folder_script.main([str(tmp_path / "absent"), "--checkpoint", str(world["checkpoint"]),
                                     "--out", str(tmp_path / "idx")]) == 2
    capsys.readouterr()

    import search as search_script  # what app.py --collection serves: the index, with its recorded checkpoint

    collection = ["--collection", str(tmp_path / "idx"), "--text-weights", str(world["bert_dir"]),
                  "--image-weights", str(world["resnet_file"]), "--device", "cpu", "--json"]
    assert search_script.main(["--image", str(folder / "one.jpg"), "--k", "1", *collection]) == 0
    hit = json.loads(capsys.readouterr().out)["hits"][0]
    assert (hit["name"], hit["path"], hit["captions"], hit["folder"]) == ("one.jpg", str(folder / "one.jpg"), [], "")
    assert search_script.main(["a dog", "--collection", str(tmp_path / "none")]) == 2
    assert "no photo index" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# the command line

def test_search_cli(world, engine, capsys):
    import search as search_script

    args = ["a dog runs on the grass", "--k", "3", "--checkpoint", str(world["checkpoint"]),
            "--image-features", str(world["cache"]), "--images", str(world["images"]),
            "--text-weights", str(world["bert_dir"])]
    assert search_script.main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    expected = hits_for(engine, "a dog runs on the grass", k=3)
    assert len(lines) == 3
    for line, h in zip(lines, expected):
        rank, score, confidence, path = line.split(maxsplit=3)  # no dates or folders in a dataset
        assert (int(rank), confidence, path) == (h.rank, "-", h.path)
        assert float(score) == pytest.approx(h.score, abs=1e-4)
    assert search_script.main(args + ["--json"]) == 0
    assert [d["name"] for d in json.loads(capsys.readouterr().out)["hits"]] == [h.name for h in expected]
    assert search_script.main(["  "]) == 2
    assert "empty query" in capsys.readouterr().err
    assert search_script.main(["a dog", "--k", "51"]) == 2
    assert "k must be from 1 to 50" in capsys.readouterr().err
    assert search_script.main(["a dog", "--checkpoint", str(world["base"] / "absent.pt")]) == 2
    assert "python run_train.py" in capsys.readouterr().err


def test_search_never_returns_a_path_outside_the_photos_folder(world, tmp_path, capsys):
    """A caption file naming '../secret/private.jpg' is refused naming its line, and so is an image
    cache holding such a name (written by an older version): no hit ever points there."""
    import search as search_script
    from crossmodal.features.cache import load_cache, write_cache

    secret = world["images"].parent / "secret"
    secret.mkdir(exist_ok=True)
    (secret / "private.jpg").write_bytes((world["images"] / "img_00.jpg").read_bytes())
    args = ["a dog", "--json", "--checkpoint", str(world["checkpoint"]), "--images", str(world["images"]),
            "--text-weights", str(world["bert_dir"])]
    captions = tmp_path / "captions.token"
    captions.write_text("img_00.jpg#0\ta dog\n../secret/private.jpg#0\ta dog\n", encoding="utf-8")
    assert search_script.main(args + ["--image-features", str(world["cache"]), "--captions", str(captions)]) == 2
    out = capsys.readouterr()
    assert out.out == "" and f"{captions}:2: " in out.err and "outside the images folder" in out.err

    cache = load_cache(world["cache"])
    ids = ["../secret/private.jpg" if n == "img_00.jpg" else n for n in cache.ids]
    old_cache = tmp_path / "old_cache"
    identity = {k: cache.manifest[k] for k in ("backbone", "weights", "preprocess", "dim")}
    write_cache(old_cache, ids, np.asarray(cache.features), identity, cache.manifest["failures"])
    assert search_script.main(args + ["--image-features", str(old_cache)]) == 2
    out = capsys.readouterr()
    assert out.out == "" and "'../secret/private.jpg', a path outside the photos folder" in out.err


def test_a_dataset_collection_refuses_names_outside_its_folder(tmp_path):
    from crossmodal.features.cache import write_cache

    identity = {"backbone": "x", "weights": "-", "preprocess": {}, "dim": 4}
    write_cache(tmp_path / "ok", ["a.jpg", "sub/b.jpg", "..c.jpg"], np.eye(3, 4, dtype=np.float16), identity, [])
    assert len(DatasetCollection.open(tmp_path / "ok", tmp_path)) == 3
    for i, bad in enumerate(("../private.jpg", "/etc/private.jpg", "sub/../../private.jpg", "C:\\private.jpg")):
        write_cache(tmp_path / f"bad{i}", ["a.jpg", bad, "c.jpg"], np.eye(3, 4, dtype=np.float16), identity, [])
        with pytest.raises(CollectionError, match="outside the photos folder"):
            DatasetCollection.open(tmp_path / f"bad{i}", tmp_path)


def test_concurrent_queries_match_sequential(engine):
    """The app answers requests from several threads at once; results must not change."""
    from concurrent.futures import ThreadPoolExecutor

    def ranked(q: str) -> list:
        return [(h.name, round(h.score, 5)) for h in hits_for(engine, q, k=4)]

    queries = [f"a {w} near the {v}" for w in ("dog", "cat", "man", "girl") for v in ("park", "water", "street")]
    sequential = [ranked(q) for q in queries]
    with ThreadPoolExecutor(6) as pool:
        parallel = list(pool.map(ranked, queries * 3))
    assert parallel == sequential * 3


def test_views_checkpoint_searches_the_mean_of_views_everywhere(world, tmp_path, monkeypatch):
    from crossmodal.backbones import first_views

    views = first_views(2)
    image_bb = create_image_backbone("resnet18", world["resnet_file"])
    image_bb.set_views(views)
    checkpoint = tmp_path / "views.pt"
    save_checkpoint(checkpoint, 1, image_bb, world["text_bb"])
    with pytest.raises(EngineError, match="views"):  # a one-view cache for a views checkpoint
        open_engine(world, checkpoint=checkpoint)

    cache_dir = tmp_path / "image_embeddings"
    cache = extract.extract_image_features(image_bb, world["images"], world["names"], cache_dir, views=views,
                                           num_workers=0, batch_size=8, chunk_size=8, device="cpu")
    stacked = np.asarray(cache.features, dtype=np.float32).reshape(len(world["names"]), 2, -1)
    collection = DatasetCollection.open(cache_dir, world["images"])
    np.testing.assert_allclose(collection.pooled(0, len(world["names"])), stacked.mean(1), rtol=1e-6)
    r = serve(checkpoint, cache_dir, world["images"], device="cpu", text_weights=world["bert_dir"],
              image_weights=world["resnet_file"])
    photo_name = world["names"][0]
    hit = hits_for(r, photo=Image.open(world["images"] / photo_name), k=1)[0]
    assert hit.name == photo_name and hit.score == pytest.approx(1.0, abs=1e-3)  # the query also takes the mean

    folder, index = tmp_path / "photos", tmp_path / "index"
    folder.mkdir()
    for n in world["names"][:3]:
        (folder / n).write_bytes((world["images"] / n).read_bytes())
    kw = dict(device="cpu", workers=0, batch_size=4, progress=False)
    _, one_view_state = load_checkpoint(world["checkpoint"])
    photos.index_photos(index, [folder], load_image_backbone(one_view_state["backbones"]["image"],
                                                             world["resnet_file"]), **kw)
    _, views_state = load_checkpoint(checkpoint)
    result = photos.index_photos(index, [folder], load_image_backbone(views_state["backbones"]["image"],
                                                                      world["resnet_file"]), **kw)
    assert result.embedded == 3 and result.kept == 0  # other views: nothing reused
    with photos.PhotoStore(index) as store:
        identity, snap = store.identity(), store.snapshot()
    assert identity["preprocess"]["views"] == list(views) and identity["dim"] == image_bb.dim
    np.testing.assert_allclose(np.asarray(snap.vectors, dtype=np.float32), stacked[:3].mean(1), atol=2e-3, rtol=2e-3)


def test_querybank_checkpoint_ranks_by_normalised_score_and_reports_cosines(world, tmp_path, monkeypatch):
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(world["cache"], cache, ignore=shutil.ignore_patterns("projected-*", "querybias-*"))
    ckpt = tmp_path / "qb.pt"
    save_checkpoint(ckpt, 1, world["image_bb"], world["text_bb"])
    state = torch.load(ckpt, weights_only=True)
    g = torch.Generator().manual_seed(5)
    bank = torch.nn.functional.normalize(torch.randn(40, EMBED, generator=g), dim=1).half()
    kw_bank = torch.nn.functional.normalize(torch.randn(30, EMBED, generator=g), dim=1).half()
    state["querybank"] = {"text": bank, "image": bank, "keywords": kw_bank, "beta": 8.0}
    torch.save(state, ckpt)

    def open_qb():
        return serve(ckpt, cache, world["images"], world["captions"], device="cpu",
                     text_weights=world["bert_dir"], image_weights=world["resnet_file"])

    r = open_qb()
    assert r.details()["querybank normalisation"] == "text, keywords"
    assert len(list(cache.glob("querybias-*"))) == 1
    query = "a dog runs on the grass"
    cosine = brute_force(world, query, checkpoint=ckpt)
    ids = [n for n in (cache / "ids.txt").read_text().splitlines() if n != "broken.jpg"]
    emb = embeddings(r).astype(np.float32)
    bias = np.log(np.exp(8.0 * emb @ bank.float().numpy().T).sum(1)) / 8.0  # by the formula, per row
    row_of = {n: i for i, n in enumerate(r.current().collection.names)}
    normalised = {n: cosine[n] - bias[row_of[n]] for n in ids}
    hits = hits_for(r, query, k=N_IMAGES)
    want = sorted(normalised.values(), reverse=True)
    for h, w in zip(hits, want):
        assert normalised[h.name] == pytest.approx(w, abs=3e-3), h.rank  # ranked by the normalised score
        assert h.score == pytest.approx(cosine[h.name], abs=3e-3)  # and reports the cosine
    assert [h.name for h in hits] != sorted(cosine, key=cosine.get, reverse=True)  # the bias mattered
    # a two-word query is keyword-like: ranked against the keyword bank
    short = "red ball"
    cos2 = brute_force(world, short, checkpoint=ckpt)
    kw_bias = np.log(np.exp(8.0 * emb @ kw_bank.float().numpy().T).sum(1)) / 8.0
    norm2 = {n: cos2[n] - kw_bias[row_of[n]] for n in ids}
    for h, w in zip(hits_for(r, short, k=N_IMAGES), sorted(norm2.values(), reverse=True)):
        assert norm2[h.name] == pytest.approx(w, abs=3e-3), h.rank
    # filtered (an exclusion): ranked exactly, over the rows that pass, by the same normalised score
    filtered = hits_for(r, query + " -zebra", k=N_IMAGES)
    kept = {h.name for h in filtered}
    assert len(filtered) == N_IMAGES - 1 and [h.name for h in filtered] == [h.name for h in hits if h.name in kept]
    # photo queries rank by plain similarity (the bank holds captions)
    img_hits = hits_for(r, photo=Image.open(world["images"] / "img_03.jpg"), k=3)
    assert img_hits[0].name == "img_03.jpg"
    # a reload reuses the bias file
    with monkeypatch.context() as m:
        from crossmodal import querybank
        m.setattr(querybank, "querybank_bias", lambda *a, **k: pytest.fail("bias recomputed"))
        again = open_qb().current().biases
    assert set(again) == {"text", "keywords"}
    for b in again:
        np.testing.assert_array_equal(again[b], r.current().biases[b])


def test_hits_carry_the_calibrated_confidence_of_their_ranking_score(world, tmp_path):
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(world["cache"], cache, ignore=shutil.ignore_patterns("projected-*", "querybias-*"))
    ckpt = tmp_path / "calibrated.pt"
    save_checkpoint(ckpt, 1, world["image_bb"], world["text_bb"])
    state = torch.load(ckpt, weights_only=True)
    bank = torch.nn.functional.normalize(torch.randn(40, EMBED, generator=torch.Generator().manual_seed(5)), dim=1)
    state["querybank"] = {"text": bank.half(), "image": bank.half(), "beta": 8.0}
    sentence, short = {"method": "platt", "slope": 9.0, "intercept": 1.0}, {"method": "platt", "slope": 4.0,
                                                                              "intercept": -0.5}
    state["calibration"] = {"sentence": sentence, "short": short, "top_k": 10, "threshold": 0.5}
    torch.save(state, ckpt)
    r = serve(ckpt, cache, world["images"], world["captions"], device="cpu", text_weights=world["bert_dir"],
              image_weights=world["resnet_file"])
    emb = embeddings(r).astype(np.float32)
    bias = np.log(np.exp(8.0 * emb @ bank.float().numpy().T).sum(1)) / 8.0
    row_of = {n: i for i, n in enumerate(r.current().collection.names)}

    def expected(curve, z):
        return 1 / (1 + np.exp(-(curve["slope"] * z + curve["intercept"])))

    query = "a dog runs on the grass"
    cosine = brute_force(world, query, checkpoint=ckpt)
    hits = hits_for(r, query, k=10)
    for h in hits:  # a phrase, calibrated before phrases had a curve: the sentences' curve, over the
        # querybank-normalised score
        assert h.confidence == pytest.approx(expected(sentence, cosine[h.name] - bias[row_of[h.name]]), abs=2e-2)
        assert h.confident == (h.confidence >= 0.5)
    assert [h.confidence for h in hits] == sorted((h.confidence for h in hits), reverse=True)
    short_cos = brute_force(world, "red ball", checkpoint=ckpt)
    for h in hits_for(r, "red ball", k=5):  # a short query: no keyword bank here, so the plain cosine
        assert h.confidence == pytest.approx(expected(short, short_cos[h.name]), abs=2e-2)
    assert all(h.confidence is None for h in hits_for(r, photo=Image.open(world["images"] / "img_03.jpg"), k=3))
    phrase = {"method": "platt", "slope": 2.0, "intercept": 0.3}
    state["calibration"]["phrase"] = phrase
    torch.save(state, tmp_path / "phrases.pt")
    r2 = serve(tmp_path / "phrases.pt", cache, world["images"], world["captions"], device="cpu",
               text_weights=world["bert_dir"], image_weights=world["resnet_file"])
    for h in hits_for(r2, query, k=5):  # with its own curve, a phrase uses it
        assert h.confidence == pytest.approx(expected(phrase, cosine[h.name] - bias[row_of[h.name]]), abs=2e-2)
    long_query = "a dog runs on the grass near a red ball in the park"
    long_cos = brute_force(world, long_query, checkpoint=ckpt)
    for h in hits_for(r2, long_query, k=3):  # a sentence keeps the sentences' curve
        assert h.confidence == pytest.approx(expected(sentence, long_cos[h.name] - bias[row_of[h.name]]), abs=2e-2)
    assert all(h.confidence is None and not h.confident for h in hits_for(open_engine(world), query, k=3))
