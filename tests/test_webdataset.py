"""img2dataset output as a dataset: shard folders and webdataset .tar shards (crossmodal/webdataset.py)."""
from __future__ import annotations

import dataclasses
import io
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
from helpers import WORDS, save_random_models, save_random_resnet18
from PIL import Image

import batch_image_feature_extract
from crossmodal import webdataset
from crossmodal.backbones import create_image_backbone
from crossmodal.captions import DatasetError, missing_images, read_captions
from crossmodal.features import extract
from crossmodal.features.cache import load_cache
from crossmodal.images import INDEX_BUDGET, open_image
from crossmodal.web import ServedPhotos
from scripts.shard_splits import shard_splits

SAMPLES = {  # shard -> key -> caption (None: no .txt file)
    "00000": {"000000000": "a dog on the beach", "000000001": "  two   red\ncars ", "000000002": None},
    "00001": {"000010000": "a bowl of soup", "000010001": "", "000010002": "a city at night"},
}


def jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def sample_files() -> dict[str, dict[str, bytes]]:
    """shard -> file name -> bytes, as img2dataset writes them."""
    files: dict[str, dict[str, bytes]] = {}
    for shard, keys in SAMPLES.items():
        files[shard] = {}
        for i, (key, caption) in enumerate(keys.items()):
            files[shard][f"{key}.jpg"] = jpeg(int(key))
            files[shard][f"{key}.json"] = b'{"status": "success"}'
            if caption is not None:
                files[shard][f"{key}.txt"] = caption.encode()
    return files


def write_folders(root: Path) -> Path:
    for shard, files in sample_files().items():
        (root / shard).mkdir(parents=True)
        for name, data in files.items():
            (root / shard / name).write_bytes(data)
    (root / "00000_stats.json").write_text("{}")  # img2dataset's side files are ignored
    return root


def write_tars(root: Path) -> Path:
    root.mkdir(parents=True)
    for shard, files in sample_files().items():
        with tarfile.open(root / f"{shard}.tar", "w") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return root


@pytest.fixture()
def folders(tmp_path) -> Path:
    return write_folders(tmp_path / "folders")


@pytest.fixture()
def tars(tmp_path) -> Path:
    return write_tars(tmp_path / "tars")


CAPTIONED = [("00000", "000000000", "a dog on the beach"), ("00000", "000000001", "two red cars"),
             ("00001", "000010000", "a bowl of soup"), ("00001", "000010002", "a city at night")]


def test_shard_folders_read_as_captions(folders, caplog):
    with caplog.at_level(logging.WARNING):
        captions = read_captions(folders)
    assert [(c.image, c.number, c.text) for c in captions.captions] == [
        (f"{shard}/{key}.jpg", 0, text) for shard, key, text in CAPTIONED]
    # an image without a caption file or with an empty one is left out, and counted
    assert "2 image(s)" in caplog.text and "000000002.txt" in caplog.text
    assert missing_images(folders, captions.images + ["00000/gone.jpg"]) == ["00000/gone.jpg"]


def test_tar_shards_read_like_folders(folders, tars):
    assert [(c.image, c.text) for c in read_captions(tars).captions] == [
        (f"{shard}.tar/{key}.jpg", text) for shard, key, text in CAPTIONED]
    names = read_captions(tars).images
    assert missing_images(tars, names + ["00000.tar/gone.jpg", "00009.tar/x.jpg"]) == [
        "00000.tar/gone.jpg", "00009.tar/x.jpg"]
    for name in names:  # a member opens as the same image as its file
        with open_image(tars / name, INDEX_BUDGET) as a, open_image(folders / name.replace(".tar", ""),
                                                                       INDEX_BUDGET) as b:
            assert np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")))


def test_bad_img2dataset_input_is_refused_by_name(tmp_path, folders, tars):
    (folders / "00001" / "000010002.txt").write_bytes(b"caf\xe9")
    with pytest.raises(DatasetError, match=r"00001/000010002\.txt: not UTF-8"):
        read_captions(folders)
    (tars / "00001.tar").write_bytes(b"this is no tar file" * 40)
    with pytest.raises(DatasetError, match=r"00001\.tar: not a readable tar shard"):
        read_captions(tars)
    (tmp_path / "plain").mkdir()
    with pytest.raises(DatasetError, match="not img2dataset output"):
        read_captions(tmp_path / "plain")


def test_a_changed_shard_is_indexed_again(tars):
    before = webdataset.member_index(tars / "00000.tar")
    with tarfile.open(tars / "00000.tar", "a") as tar:
        info = tarfile.TarInfo("000000009.jpg")
        data = jpeg(9)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    assert set(webdataset.member_index(tars / "00000.tar")) == set(before) | {"000000009.jpg"}
    assert webdataset.read_bytes(tars / "00000.tar" / "000000009.jpg") == jpeg(9)


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory) -> Path:
    return save_random_resnet18(tmp_path_factory.mktemp("resnet") / "resnet18.pth")


def test_tar_shards_extract_the_rows_of_folders(tmp_path, folders, tars, resnet_file):
    resnet = dataclasses.replace(create_image_backbone("resnet18", weights=resnet_file), image_size=64)
    kw = dict(num_workers=0, batch_size=2, device="cpu")
    names = read_captions(folders).images
    a = extract.extract_image_features(resnet, folders, names, tmp_path / "a", **kw)
    b = extract.extract_image_features(resnet, tars, [n.replace("/", ".tar/", 1) for n in names], tmp_path / "b",
                                       **kw)
    assert not a.manifest["failures"] and not b.manifest["failures"]
    assert np.array_equal(np.asarray(a.features), np.asarray(b.features))


def test_stage_script_reads_tar_shards_with_images_beside_captions(tmp_path, tars, resnet_file):
    work = tmp_path / "work"
    assert batch_image_feature_extract.main([
        "--captions", str(tars), "--work-dir", str(work), "--image-backbone", "resnet18",
        "--image-weights", str(resnet_file), "--workers", "1", "--device", "cpu"]) == 0
    cache = load_cache(work / "image_embeddings")
    assert cache.ids == read_captions(tars).images and not cache.manifest["failures"]
    assert cache.manifest["images_dir"] == str(tars.resolve())


def test_a_dataset_of_tar_shards_is_searched_and_its_hits_shown(tmp_path, tars):
    from crossmodal.collection import DatasetCollection
    from crossmodal.engine import SearchEngine
    from crossmodal.search import search

    from model import load_checkpoint

    (tmp_path / "models").mkdir()
    m = save_random_models(tmp_path / "models", WORDS)
    work = tmp_path / "work"
    assert batch_image_feature_extract.main([
        "--captions", str(tars), "--work-dir", str(work), "--image-backbone", "resnet18",
        "--image-weights", str(m["resnet"]), "--workers", "0", "--device", "cpu"]) == 0
    model, state = load_checkpoint(m["checkpoint"])
    engine = SearchEngine(DatasetCollection.open(work / "image_embeddings"), model, state, m["checkpoint"],
                          device="cpu", text_weights=m["bert"], image_weights=m["resnet"])
    hits = search(engine, "a dog on the beach", k=3).hits
    # every photo is a member of a shard, none a file of its own: each is still there, so each is shown
    assert len(hits) == 3 and all(webdataset.split_member(h.path) for h in hits)


def test_a_served_collection_serves_photos_inside_tar_shards(tars):
    names = read_captions(tars).images
    collection = type("C", (), {"names": names, "root": tars})()
    photos = ServedPhotos(lambda: collection)
    response = photos.response(names[0])
    assert response.status_code == 200 and response.media_type == "image/jpeg"
    assert response.body == webdataset.read_bytes(tars / names[0])
    assert photos.response("00000.tar/000000002.jpg").status_code == 404  # in the shard, not a searched row
    assert photos.response("00000.tar/nothing.jpg").status_code == 404


def test_shard_splits_hold_out_whole_shards():
    images = [f"{s}/{k:03d}.jpg" for s in ("00000", "00001", "00002") for k in range(10)]
    splits = shard_splits(images, {"00002"}, "00001", 4, seed=0)
    assert splits["test"] == images[20:]
    assert len(splits["dev"]) == 4 and all(n.startswith("00001/") for n in splits["dev"])
    assert sorted(splits["train"] + splits["dev"]) == images[:20]
    assert splits == shard_splits(images, {"00002"}, "00001", 4, seed=0)  # seeded
    with pytest.raises(DatasetError, match="no shard 00007"):
        shard_splits(images, {"00007"}, "00001", 4)
