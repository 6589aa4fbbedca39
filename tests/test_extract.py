"""Feature extraction end to end on a tiny generated image set (features/extract.py, gpu_decode.py, stage scripts).

Backbones are randomly initialised and saved locally: a ResNet18 state dict and a 2-layer BERT.
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from helpers import save_tiny_bert
from PIL import Image

import batch_image_feature_extract
import batch_text_feature_extract
from crossmodal import backbones
from crossmodal.backbones import create_image_backbone, create_text_backbone
from crossmodal.captions import list_hash, read_captions
from crossmodal.features import extract, gpu_decode
from crossmodal.features.cache import FEATURES_FILE, IDS_FILE, MANIFEST_FILE, PARTIAL_DIR, StaleCacheError, load_cache

N_GOOD = 24
BAD = {  # name -> position in the name list (one per chunk of 8)
    "corrupt.jpg": 2,
    "truncated.jpg": 9,
    "notes.jpg": 17,
    "missing.jpg": 25,
}
WORDS = ("a an the two one dog dogs cat man men woman women child children girl boy is are runs running "
         "plays playing sits sitting jumps on in with of and at near red blue green white black ball grass "
         "water street park beach snow bike shirt hat . ,").split()


# --------------------------------------------------------------------------------------------------
# fixtures

def jpeg_bytes(rng: np.random.Generator, w: int = 80, h: int = 60) -> bytes:
    base = rng.integers(0, 256, 3)
    noise = rng.integers(-40, 40, (h, w, 3))
    arr = np.clip(base + noise, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def image_set(tmp_path_factory) -> tuple[Path, list[str]]:
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    good = [f"{i:04d}.jpg" for i in range(N_GOOD)]
    for n in good:
        (d / n).write_bytes(jpeg_bytes(rng))
    (d / "corrupt.jpg").write_bytes(rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    whole = jpeg_bytes(rng, 160, 120)
    (d / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (d / "notes.jpg").write_text("this is not a picture\n")
    names = list(good)
    for name, pos in sorted(BAD.items(), key=lambda kv: kv[1]):
        names.insert(pos, name)
    assert [names.index(n) for n in BAD] == list(BAD.values())
    return d, names


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("resnet") / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def resnet(resnet_file):
    """The random ResNet18 at 112 px instead of 224 (4x less compute; same code paths).

    The stage-script tests below build it from the file themselves, at the real 224 px.
    """
    return dataclasses.replace(create_image_backbone("resnet18", weights=resnet_file), image_size=112)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("bert") / "bert-base-uncased", words=WORDS)


@pytest.fixture(scope="module")
def bert(bert_dir):
    return create_text_backbone("bert-base-uncased", weights=bert_dir)


IMAGE_KW = dict(num_workers=0, batch_size=4, chunk_size=8, device="cpu")


def cache_files(directory: Path) -> dict[str, bytes]:
    return {n: (directory / n).read_bytes() for n in (FEATURES_FILE, IDS_FILE, MANIFEST_FILE)}


@pytest.fixture(scope="module")
def image_reference(tmp_path_factory, image_set, resnet) -> Path:
    """An uninterrupted extraction, to compare the others with."""
    images, names = image_set
    out = tmp_path_factory.mktemp("ref") / "image_embeddings"
    extract.extract_image_features(resnet, images, names, out, **IMAGE_KW)
    return out


class CountingGetItem:
    """Wraps ImageFileDataset.__getitem__: counts calls, optionally raises on the n-th one."""

    def __init__(self, monkeypatch, fail_at: int | None = None):
        self.original = extract.ImageFileDataset.__getitem__
        self.calls = 0
        self.fail_at = fail_at
        counter = self

        def getitem(ds, i):
            counter.calls += 1
            if counter.fail_at is not None and counter.calls == counter.fail_at:
                raise RuntimeError("simulated kill")
            return counter.original(ds, i)

        monkeypatch.setattr(extract.ImageFileDataset, "__getitem__", getitem)


# --------------------------------------------------------------------------------------------------
# images

def test_image_failures_are_recorded_as_zero_rows(image_reference, image_set, resnet):
    images, names = image_set
    cache = load_cache(image_reference, {"kind": "image", "backbone": "resnet18", "dim": 512,
                                         "weights": resnet.weights, "ids_sha256": list_hash(names)})
    assert cache.ids == names
    assert cache.features.shape == (len(names), 512) and cache.features.dtype == np.float16
    manifest = json.loads((image_reference / MANIFEST_FILE).read_text())
    reasons = {f["id"]: f["reason"] for f in manifest["failures"]}
    assert set(reasons) == set(BAD)
    assert all(reasons.values())
    assert reasons["missing.jpg"].startswith("FileNotFoundError")
    assert "truncated" in reasons["truncated.jpg"].lower()
    for name in ("corrupt.jpg", "notes.jpg"):
        assert "cannot identify image file" in reasons[name]
    feats = np.asarray(cache.features, dtype=np.float32)
    for i, n in enumerate(names):
        assert feats[i].any() != (n in BAD), n
    assert np.isfinite(feats).all()
    assert cache.valid_mask().tolist() == [n not in BAD for n in names]
    assert manifest["preprocess"]["jpeg_draft"] is True and manifest["preprocess"]["decode"] == "cpu"
    assert not (image_reference / PARTIAL_DIR).exists()


def test_image_rows_match_direct_model_output(image_reference, image_set, resnet):
    images, names = image_set
    cache = load_cache(image_reference)
    x = torch.stack([resnet.pil_transform()(Image.open(images / n).convert("RGB")) for n in names[:2]])
    with torch.inference_mode():
        direct = resnet.model(x).numpy()
    np.testing.assert_allclose(np.asarray(cache.features[:2], dtype=np.float32), direct, rtol=2e-3, atol=2e-3)


def test_image_extraction_resumes_byte_identical_then_reuses(tmp_path, monkeypatch, image_set, resnet,
                                                             image_reference):
    images, names = image_set
    out = tmp_path / "image_embeddings"
    with monkeypatch.context() as m:
        first = CountingGetItem(m, fail_at=13)
        with pytest.raises(RuntimeError, match="simulated kill"):
            extract.extract_image_features(resnet, images, names, out, **IMAGE_KW)
    assert first.calls == 13
    assert not (out / MANIFEST_FILE).exists()
    # batches of 4, a chunk per 8 rows: rows 8-11 were done but not saved yet, rows 12- not begun
    assert sorted(p.name for p in (out / PARTIAL_DIR).glob("chunk_*")) == ["chunk_0000000_0000002.json",
                                                                          "chunk_0000000_0000002.npy"]

    with monkeypatch.context() as m:
        second = CountingGetItem(m)
        cache = extract.extract_image_features(resnet, images, names, out, **IMAGE_KW)
    assert second.calls == len(names) - 8  # only the missing chunks were computed
    assert cache_files(out) == cache_files(image_reference)
    assert not (out / PARTIAL_DIR).exists()

    with monkeypatch.context() as m:
        third = CountingGetItem(m)
        again = extract.extract_image_features(resnet, images, names, out, **IMAGE_KW)
    assert third.calls == 0  # the finished cache is reused
    np.testing.assert_array_equal(again.features, cache.features)
    assert cache_files(out) == cache_files(image_reference)


def test_image_chunk_size_does_not_change_features(tmp_path, image_set, resnet, image_reference):
    """A chunk size that is not a multiple of the batch size gives the same features."""
    images, names = image_set
    out = tmp_path / "emb"
    extract.extract_image_features(resnet, images, names, out, num_workers=0, batch_size=4, chunk_size=10,
                                   device="cpu")
    assert (out / FEATURES_FILE).read_bytes() == (image_reference / FEATURES_FILE).read_bytes()


def test_gpu_decode_needs_cuda(tmp_path, image_set, resnet):
    images, names = image_set
    with pytest.raises(ValueError, match="CUDA"):
        extract.extract_image_features(resnet, images, names, tmp_path / "x", decode="gpu", **IMAGE_KW)


@pytest.mark.parametrize("threads", [0, 1, 3])
def test_device_decode_pipeline_matches_per_image(tmp_path, resnet, threads):
    """The --decode gpu input pipeline (packed reads in workers or in-process, batched decode,
    batched resize, decode threads), run on the CPU: every row equals its own file decoded and resized alone, in order,
    across mixed sizes, a PNG, and files that fail (zeros and a reason)."""
    from torchvision.io import ImageReadMode, decode_image

    rng = np.random.default_rng(1)
    names = []
    for i, (w, h) in enumerate([(120, 90), (90, 120), (120, 90), (100, 67)] * 4):
        names.append(f"{i:02d}.jpg")
        (tmp_path / names[-1]).write_bytes(jpeg_bytes(rng, w, h))
    Image.fromarray(rng.integers(0, 256, (70, 110, 3), dtype=np.uint8)).save(tmp_path / "pic.png")
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8" + rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
    names[3:3] = ["pic.png"]
    names[9:9] = ["corrupt.jpg", "missing.jpg"]
    batches = [list(range(i, min(i + 5, len(names)))) for i in range(0, len(names), 5)]
    byte_batches = gpu_decode.byte_batches([tmp_path / n for n in names], batches, num_workers=min(threads, 1))
    got = list(gpu_decode.gpu_decoded_batches(byte_batches, resnet, torch.device("cpu"), threads))
    assert [len(x) for x, _ in got] == [len(b) for b in batches]
    x = torch.cat([x for x, _ in got])
    errors = [e for _, es in got for e in es]
    resize = resnet.tensor_transform()
    for i, name in enumerate(names):
        if name in ("corrupt.jpg", "missing.jpg"):
            assert errors[i] and not x[i].any(), name
        else:
            assert not errors[i], (name, errors[i])
            ref = resize(decode_image(str(tmp_path / name), mode=ImageReadMode.RGB))
            assert torch.equal(x[i], ref), name


# --------------------------------------------------------------------------------------------------
# texts

TEXTS = [
    "a dog runs on the grass .",
    "two children are playing with a red ball in the park",
    "a man",
    "the woman in a white shirt sits near the water , and a black dog jumps in the snow at the beach",
    "girl",
    "a boy on a bike in the street",
    "dogs playing",
    "a man",  # duplicate of row 2
    "one cat sits on the green grass",
    "men and women at the beach",
    "a child in a blue hat",
    "the dog",
    "two dogs playing in the snow near a street",
    "a girl jumps",
    "an old man sits on a bike",  # "old" is not in the vocabulary: [UNK]
    "dogs playing",  # duplicate of row 6
    "a black cat and a white cat",
    "children running in the water at the beach with a ball",
    "a boy",
    "woman",
]
TEXT_IDS = [f"{i // 5:04d}.jpg#{i % 5}" for i in range(len(TEXTS))]
TEXT_KW = dict(kind="caption", batch_size=4, chunk_size=4, device="cpu")


@pytest.fixture(scope="module")
def text_reference(tmp_path_factory, bert) -> Path:
    out = tmp_path_factory.mktemp("tref") / "text_embeddings"
    extract.extract_text_features(bert, TEXTS, TEXT_IDS, out, **TEXT_KW)
    return out


def test_text_rows_in_ids_order(text_reference, bert):
    cache = load_cache(text_reference, {"kind": "caption", "backbone": "bert-base-uncased", "dim": 32,
                                        "ids_sha256": list_hash(TEXT_IDS)})
    assert cache.ids == TEXT_IDS
    assert (text_reference / IDS_FILE).read_text() == "".join(i + "\n" for i in TEXT_IDS)
    feats = np.asarray(cache.features, dtype=np.float32)
    direct = bert.encode(TEXTS, batch_size=8, device="cpu")
    np.testing.assert_allclose(feats, direct, atol=5e-3, rtol=2e-3)
    # each row is nearest to its own text's vector (so rows were not shuffled)
    dist = ((feats[:, None, :] - direct[None, :, :]) ** 2).sum(-1)
    for i, t in enumerate(TEXTS):
        assert TEXTS[int(dist[i].argmin())] == t
    np.testing.assert_array_equal(cache.features[2], cache.features[7])
    np.testing.assert_array_equal(cache.features[6], cache.features[15])
    assert cache.manifest["failures"] == []


def test_text_extraction_resumes_byte_identical(tmp_path, monkeypatch, bert, text_reference):
    out = tmp_path / "text_embeddings"
    original = bert.encode
    calls = []

    def flaky(texts, *args, **kwargs):
        calls.append(len(texts))
        if len(calls) == 2:
            raise RuntimeError("simulated kill")
        return original(texts, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(bert, "encode", flaky)
        with pytest.raises(RuntimeError, match="simulated kill"):
            extract.extract_text_features(bert, TEXTS, TEXT_IDS, out, **TEXT_KW)
    assert sorted(p.name for p in (out / PARTIAL_DIR).glob("chunk_*")) == ["chunk_0000000_0000001.json",
                                                                          "chunk_0000000_0000001.npy"]

    calls.clear()
    with monkeypatch.context() as m:
        m.setattr(bert, "encode", lambda texts, *a, **k: (calls.append(len(texts)), original(texts, *a, **k))[1])
        extract.extract_text_features(bert, TEXTS, TEXT_IDS, out, **TEXT_KW)
        assert len(calls) == 4  # 5 units of 4 texts, the first already done
        assert cache_files(out) == cache_files(text_reference)
        calls.clear()
        extract.extract_text_features(bert, TEXTS, TEXT_IDS, out, **TEXT_KW)
        assert calls == []  # reused


def test_text_ids_must_match_texts(tmp_path, bert):
    with pytest.raises(ValueError, match="ids"):
        extract.extract_text_features(bert, TEXTS, TEXT_IDS[:-1], tmp_path / "x", **TEXT_KW)


# --------------------------------------------------------------------------------------------------
# stage scripts

def write_captions(path: Path, names: list[str]) -> Path:
    lines = [f"{n}#{k}\t{TEXTS[(i * 2 + k) % len(TEXTS)]}" for i, n in enumerate(names) for k in range(2)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_stage_scripts_end_to_end(tmp_path, image_set, resnet_file, bert_dir, capsys):
    images, all_names = image_set
    names = all_names[:10] + ["missing.jpg"]  # holds corrupt.jpg and truncated.jpg too
    bad = {"corrupt.jpg", "truncated.jpg", "missing.jpg"}
    captions = write_captions(tmp_path / "captions.token", names)
    work = tmp_path / "work"
    image_args = ["--images", str(images), "--captions", str(captions), "--work-dir", str(work),
                  "--image-backbone", "resnet18", "--image-weights", str(resnet_file), "--workers", "0",
                  "--device", "cpu", "--batch-size", "4", "--chunk-size", "8"]
    assert batch_image_feature_extract.main(image_args) == 0
    out = capsys.readouterr().out
    assert "could not be read" in out and "missing.jpg" in out

    emb = work / "image_embeddings"
    assert sorted(p.name for p in emb.iterdir()) == sorted([FEATURES_FILE, IDS_FILE, MANIFEST_FILE])
    manifest = json.loads((emb / MANIFEST_FILE).read_text())
    assert manifest["backbone"] == "resnet18" and manifest["dim"] == 512 and manifest["rows"] == len(names)
    assert manifest["images_dir"] == str(images.resolve())
    assert manifest["captions_file"] == str(captions.resolve())
    assert {f["id"] for f in manifest["failures"]} == bad
    assert manifest["preprocess"]["resize_shorter"] == 224
    assert (emb / IDS_FILE).read_text().splitlines() == read_captions(captions).images == names
    assert np.load(emb / FEATURES_FILE, mmap_mode="r").shape == (len(names), 512)
    before = cache_files(emb)
    assert batch_image_feature_extract.main(image_args) == 0  # reuse
    assert cache_files(emb) == before

    text_args = ["--captions", str(captions), "--work-dir", str(work), "--text-backbone", "bert-base-uncased",
                 "--text-weights", str(bert_dir), "--device", "cpu", "--batch-size", "8"]
    assert batch_text_feature_extract.main(text_args) == 0
    temb = work / "text_embeddings"
    assert sorted(p.name for p in temb.iterdir()) == sorted([FEATURES_FILE, IDS_FILE, MANIFEST_FILE])
    tman = json.loads((temb / MANIFEST_FILE).read_text())
    assert tman["kind"] == "caption" and tman["backbone"] == "bert-base-uncased" and tman["dim"] == 32
    assert tman["rows"] == 2 * len(names)
    assert tman["image_ids_sha256"] == list_hash(names)
    keys = (temb / IDS_FILE).read_text().splitlines()
    assert keys == [f"{n}#{k}" for n in names for k in range(2)]
    assert "caption features" in capsys.readouterr().out


def test_stage_scripts_refuse_other_backbone_in_same_work_dir(tmp_path, image_set, resnet_file, capsys):
    """A second backbone into an existing cache is refused (exit 2), not mixed."""
    images, names = image_set
    captions = write_captions(tmp_path / "captions.token", names[:4])
    work = tmp_path / "work"
    args = ["--images", str(images), "--captions", str(captions), "--work-dir", str(work), "--workers", "0",
            "--device", "cpu", "--batch-size", "4"]
    assert batch_image_feature_extract.main(args + ["--image-backbone", "resnet18",
                                                    "--image-weights", str(resnet_file)]) == 0
    torch.manual_seed(1)
    other = tmp_path / "other.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), other)
    assert batch_image_feature_extract.main(args + ["--image-backbone", "resnet18",
                                                    "--image-weights", str(other)]) == 2


def test_stage_scripts_malformed_captions_exit_2(tmp_path, image_set, resnet_file, bert_dir, caplog):
    images, names = image_set
    bad = tmp_path / "bad.token"
    bad.write_text(f"{names[0]}#0\ta dog\n{names[0]}#1\ta cat\n{names[1]} no tab or number\n", encoding="utf-8")
    work = tmp_path / "work"
    with caplog.at_level(logging.ERROR):
        rc = batch_image_feature_extract.main(
            ["--images", str(images), "--captions", str(bad), "--work-dir", str(work), "--image-backbone",
             "resnet18", "--image-weights", str(resnet_file), "--workers", "0", "--device", "cpu"])
    assert rc == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(f"{bad}:3:" in e for e in errors), errors
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        rc = batch_text_feature_extract.main(
            ["--captions", str(bad), "--work-dir", str(work), "--text-backbone", "bert-base-uncased",
             "--text-weights", str(bert_dir), "--device", "cpu"])
    assert rc == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(f"{bad}:3:" in e for e in errors), errors
    assert not (work / "image_embeddings").exists() and not (work / "text_embeddings").exists()


def test_stage_script_missing_weights_exit_2(tmp_path, image_set, caplog):
    images, names = image_set
    captions = write_captions(tmp_path / "captions.token", names[:3])
    with caplog.at_level(logging.ERROR):
        rc = batch_image_feature_extract.main(
            ["--images", str(images), "--captions", str(captions), "--work-dir", str(tmp_path / "w"),
             "--image-backbone", "resnet18", "--image-weights", str(tmp_path / "nope.pth"), "--workers", "0",
             "--device", "cpu"])
    assert rc == 2
    assert any("nope.pth" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------------------------------
# several views per image

def test_views_geometry():
    size = 20
    # value = 10 x column
    cols = torch.arange(size, dtype=torch.uint8).view(1, 1, 1, size).expand(2, 3, size, size) * 10
    assert torch.equal(backbones.make_view(cols, "full"), cols)
    assert torch.equal(backbones.make_view(cols, "full_flip"), cols.flip(-1))
    tl, br = backbones.make_view(cols, "top_left80"), backbones.make_view(cols, "bottom_right80")
    assert tl.shape == br.shape == cols.shape
    # the top-left 16 columns stretched to 20 end near column 15; the bottom-right ones start near column 4
    assert abs(int(tl[0, 0, 0, -1]) - 150) <= 10 and abs(int(br[0, 0, 0, 0]) - 40) <= 10
    assert backbones.make_view(cols, "full_large").shape[-1] == round(size * 1.27 / 2) * 2
    center = backbones.make_view(cols, "center80")
    assert torch.equal(backbones.make_view(cols, "center80_flip"), center.flip(-1))
    with pytest.raises(ValueError, match="between 1 and 7"):
        backbones.first_views(8)


def test_views_cache_stacks_views_and_collections_take_their_mean(tmp_path, image_set, resnet, image_reference):
    images, names = image_set
    views = backbones.first_views(3)
    try:
        cache = extract.extract_image_features(resnet, images, names, tmp_path / "views", views=views, **IMAGE_KW)
        mean = extract.extract_image_features(resnet, images, names, tmp_path / "mean", views=views,
                                              stack_views=False, **IMAGE_KW)
    finally:
        resnet.set_views()  # the fixture is shared with other tests
    assert cache.manifest["views"] == list(views) and cache.manifest["preprocess"]["views"] == list(views)
    assert cache.dim == 3 * 512 and cache.features.shape == (len(names), 3 * 512)
    stacked = np.asarray(cache.features, dtype=np.float32).reshape(len(names), 3, 512)
    one_view = np.asarray(load_cache(image_reference).features, dtype=np.float32)
    np.testing.assert_allclose(stacked[:, 0], one_view, atol=2e-3, rtol=2e-3)  # "full" is the plain feature
    assert not np.allclose(stacked[:, 1], stacked[:, 0], atol=1e-2)  # a flip is another view
    assert "views" not in mean.manifest and mean.manifest["preprocess"]["views"] == list(views)
    np.testing.assert_allclose(np.asarray(mean.features, dtype=np.float32), stacked.mean(1), atol=2e-3, rtol=2e-3)


def test_bf16_precision_on_cpu_is_recorded_and_refuses_to_mix(tmp_path, image_set, resnet, image_reference):
    images, names = image_set
    cache = extract.extract_image_features(resnet, images, names, tmp_path / "bf16", precision="bf16", **IMAGE_KW)
    assert cache.manifest["preprocess"]["autocast"] == "bf16"
    assert "autocast" not in load_cache(image_reference).manifest["preprocess"]  # float32 caches keep their identity
    fp32 = np.asarray(load_cache(image_reference).features, dtype=np.float32)
    bf16 = np.asarray(cache.features, dtype=np.float32)
    ok = np.flatnonzero(np.abs(fp32).sum(1) > 0)  # rows of readable images
    cos = (fp32[ok] * bf16[ok]).sum(1) / np.linalg.norm(fp32[ok], axis=1) / np.linalg.norm(bf16[ok], axis=1)
    assert cos.min() > 0.98 and not np.array_equal(fp32[ok], bf16[ok])
    with pytest.raises(StaleCacheError, match="already holds other features"):
        extract.extract_image_features(resnet, images, names, tmp_path / "bf16", precision="fp32", **IMAGE_KW)
    with pytest.raises(ValueError, match="precision"):
        extract.extract_image_features(resnet, images, names, tmp_path / "x", precision="fp8", **IMAGE_KW)
