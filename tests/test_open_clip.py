"""The open_clip family (``open_clip:ARCH:WEIGHTS``) with random ViT-B-32 weights saved to a local file,
as a user's downloaded weights would be: the towers equal open_clip's own model and preprocessing;
zero-shot search (``--model``) over photo folders, the page API, duplicates, evaluation with
CLIP_benchmark's keys and calibration on judged pairs; a photo index of one model refused to another;
the offline error; heads trained on the towers' features through every stage."""
from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import open_clip
import pytest
import torch
from helpers import random_photo, write_captioned_photos

from crossmodal.backbones import BackboneUnavailable, create_image_backbone, create_text_backbone

ARCH = "ViT-B-32"


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    """Random ViT-B-32 weights (float16, half the size; loaded into the float32 model) and the model."""
    torch.manual_seed(0)
    model = open_clip.create_model(ARCH).eval()
    path = tmp_path_factory.mktemp("clip") / "vit-b-32-random.pt"
    torch.save({k: v.half() for k, v in model.state_dict().items()}, path)
    model.load_state_dict(torch.load(path, weights_only=True))  # the same rounded weights
    return path, model


@pytest.fixture(scope="module")
def name(clip_file):
    return f"open_clip:{ARCH}:{clip_file[0]}"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Twelve random photos in two folders, one a copy of another (a duplicate)."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(12):
        folder = root / ("A" if i < 6 else "B")
        folder.mkdir(exist_ok=True)
        random_photo(rng, 160, 120).save(folder / f"p{i:02d}.jpg")
    shutil.copy(root / "A" / "p00.jpg", root / "B" / "copy_of_p00.jpg")
    return root


def test_towers_are_open_clip_with_its_preprocessing(clip_file, name):
    path, reference = clip_file
    image = create_image_backbone(name)
    text = create_text_backbone(name)
    assert image.name == text.name == f"open_clip:{ARCH}:{path.resolve()}" and image.dim == text.dim == 512
    assert image.preprocess["interpolation"] == "bicubic+antialias" and image.image_size == 224
    photo = random_photo(np.random.default_rng(1), 300, 200)
    preprocess = open_clip.image_transform(224, is_train=False, mean=image.mean, std=image.std)
    with torch.no_grad():
        ours = image.model(image.pil_transform()(photo).unsqueeze(0))
        theirs = reference.encode_image(preprocess(photo).unsqueeze(0))
    # tensor resizing against PIL's: the same bicubic, rounded differently
    assert torch.nn.functional.cosine_similarity(ours, theirs).item() > 0.9999
    texts = ["a dog", "two children playing on the beach at sunset with a red kite", "snow"]
    with torch.no_grad():
        theirs = reference.encode_text(open_clip.get_tokenizer(ARCH)(texts)).numpy()
    assert np.allclose(text.encode(texts), theirs, atol=1e-4)  # padding after the end token is not computed
    assert np.allclose(text.forward_pooled(text.tokenize_one(texts[1])).detach().numpy(), theirs[1:2], atol=1e-4)
    assert text.logit_scale == pytest.approx(reference.logit_scale.exp().item(), rel=1e-3)



def test_weights_named_by_folder_or_models_dir_are_the_same_file(clip_file, tmp_path):
    from crossmodal.backbones.openclip import canonical_name, weights_file

    path = clip_file[0]
    folder = tmp_path / "vit-b-32"
    folder.mkdir()
    (folder / "open_clip_pytorch_model.bin").symlink_to(path)
    by_file = weights_file(f"open_clip:{ARCH}:{path}")
    by_folder = weights_file(f"open_clip:{ARCH}:{folder}")
    in_models = weights_file(f"open_clip:{ARCH}:vit-b-32", models_dir=tmp_path)
    assert by_folder == in_models and by_folder[1].resolve() == by_file[1].resolve() == path.resolve()
    assert canonical_name(f"open_clip:{ARCH}:vit-b-32", tmp_path) == by_folder[0].name
    with pytest.raises(BackboneUnavailable, match="holds none of open_clip_model.safetensors"):
        weights_file(f"open_clip:{ARCH}:{tmp_path}")


def test_missing_weights_say_what_to_fetch(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(BackboneUnavailable) as err:
        create_text_backbone(f"open_clip:{ARCH}:laion2b_s34b_b79k")
    message = str(err.value)
    assert "\n" not in message and "open_clip_pytorch_model.bin" in message
    assert "laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in message and "pretrained='laion2b_s34b_b79k'" in message
    with pytest.raises(BackboneUnavailable, match="weights file not found: .*nowhere/vit.bin"):
        create_image_backbone(f"open_clip:{ARCH}:{tmp_path}/nowhere/vit.bin")
    with pytest.raises(BackboneUnavailable, match="neither a local file nor an open_clip pretrained tag"):
        create_image_backbone(f"open_clip:{ARCH}:no_such_tag")
    with pytest.raises(ValueError, match="open_clip has no architecture"):
        create_image_backbone("open_clip:ViT-Q-99:laion2b_s34b_b79k")


def test_search_offline_without_weights_is_one_line(tmp_path, capsys, monkeypatch, photos):
    import search

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    code = search.main(["a dog", "--photos", str(photos), "--work-dir", str(tmp_path / "w"),
                        "--model", f"open_clip:{ARCH}:laion2b_s34b_b79k"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: open_clip:ViT-B-32:laion2b_s34b_b79k")
    assert "hf download" in err[0] and "Traceback" not in err[0]


def test_zero_shot_search_page_duplicates_and_a_refused_index(name, clip_file, photos, tmp_path, capsys):
    import index_folder
    import search
    from crossmodal import page
    from crossmodal.collection import path_of
    from crossmodal.engine import SearchEngine
    from crossmodal.photos.collection import PhotoCollection
    from crossmodal.search import search as search_photos

    from model import load_checkpoint

    work = tmp_path / "w"
    args = ["--photos", str(photos), "--work-dir", str(work), "--model", name, "--k", "3", "--json",
            "--workers", "0"]
    assert search.main(["a dog on the grass"] + args) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert len(hits) == 3 and hits[0]["confidence"] is None  # no curves yet: scores only

    # the zero-shot model: identity heads, the towers' own space and temperature, its own photo index
    folder = next((work / "zero_shot").iterdir())
    assert folder.name.startswith("ViT-B-32-vit-b-32-random.pt-")
    model, state = load_checkpoint(folder / "model.pt")
    assert state["model_config"]["zero_shot"] == create_text_backbone(name).name
    assert state["temperature"] == pytest.approx(1 / clip_file[1].logit_scale.exp().item(), rel=1e-3)
    collection = PhotoCollection.open(folder / "photo_index", [photos])
    engine = SearchEngine(collection, model, state, folder / "model.pt", device="cpu")
    text = create_text_backbone(name)
    expected = text.encode(["a dog on the grass"])[0]
    assert np.allclose(engine.embed_text("a dog on the grass"), expected / np.linalg.norm(expected), atol=1e-4)
    assert [h["path"] for h in hits] == [h.path for h in search_photos(engine, "a dog on the grass", k=3).hits]
    # the page API over it, a photo query through the image tower
    p = page.Page(engine)
    api = p.search("a dog in:A", 2)
    assert len(api) == 2 and all(h["folder"] == "A" for h in api)
    _, status, *_ = p.search_text("a dog", "", "", "", "", 2, SimpleNamespace(headers={"host": "photos:7860"}))
    assert "Scores only: this model's match confidence is not calibrated." in status
    like = engine.embed_image(path_of(engine.collection, 0))
    stored = engine.current().embeddings[0].astype(np.float32)
    assert float(like @ stored) > 0.99  # the indexed vector of that photo
    engine.close()

    # duplicates through index_folder.py with the same model (random towers find every noise photo alike:
    # a threshold near 1 leaves the copy)
    assert index_folder.main([str(photos), "--work-dir", str(work), "--model", name, "--duplicates",
                              "--duplicate-threshold", "0.9999", "--workers", "0", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "kept 13" in out and "1 group(s) of near-duplicate photos, 2 photos" in out
    assert "1.000  B/copy_of_p00.jpg  ~ A/p00.jpg" in out

    # an index of one model is refused to another, in one line
    shipped = ["--checkpoint", "models/pretrained/model.pt"]
    assert search.main(["a dog", "--collection", str(folder / "photo_index")] + shipped) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"open_clip:{ARCH}" in err[0] and "efficientnet_lite0" in err[0]


def test_evaluate_zero_shot_with_clip_benchmark_keys_and_judged_calibration(name, tmp_path):
    import evaluate
    from crossmodal.collection import DatasetCollection
    from crossmodal.engine import SearchEngine

    from model import load_checkpoint

    data, names, captions = write_captioned_photos(tmp_path, 16, dev=8, words_per_caption=6)
    judged = tmp_path / "judged.tsv"
    rows = ["sheet\tkind\tquery_from\tquery\trank\tphoto\tscore\tmatch\tnote"]
    rng = np.random.default_rng(1)
    for s in range(4):  # sheets of two kinds; matches and misses in each half
        for r, photo in enumerate(names[8:]):
            query = "dog" if s % 2 else f"a dog and a cat playing on the grass in the park number {s}"
            rows.append(f"s{s}\t{'short' if s % 2 else 'sentence'}\ttyped\t{query}\t{r + 1}\t{photo}\t0\t"
                        f"{int(rng.random() < 0.5) if r > 1 else r}\t")
    judged.write_text("\n".join(rows) + "\n")
    assert evaluate.main(data + ["--model", name, "--split", "dev", "--word-queries", "0",
                                 "--calibrate", str(judged)]) == 0
    folder = next((tmp_path / "work" / "zero_shot").iterdir())
    report = json.loads((folder / "results" / "eval_val.json").read_text())
    (row_name, row), = [(k, v) for k, v in report["results"].items() if k.startswith("zero-shot")]
    keys = report["clip_benchmark"][row_name]
    assert keys["image_retrieval_recall@5"] == pytest.approx(row["t2i_r5"] / 100)
    assert keys["text_retrieval_recall@1"] == pytest.approx(row["i2t_r1"] / 100)
    assert "untrained heads" not in report["results"]
    # the curves are stored with the model; search then gives a calibrated confidence
    model, state = load_checkpoint(folder / "model.pt")
    assert {"sentence", "short"} <= set(state["calibration"]) and state["calibration"]["labels"]["pairs"] == 32
    engine = SearchEngine(DatasetCollection.open(folder / "image_embeddings", tmp_path / "images", captions),
                          model, state, folder / "model.pt", device="cpu")
    assert engine.text_query("dog").curve is not None and "calibrated" in engine.details()["match confidence"]
    engine.close()


def test_heads_trained_on_clip_features_through_every_stage(name, tmp_path):
    import batch_image_feature_extract
    import batch_text_feature_extract
    import evaluate
    import extract_aug_text_features
    import run_train
    import sentence_augment
    from crossmodal.pretrained import export_checkpoint

    from model import load_checkpoint, read_checkpoint

    data, _, captions = write_captioned_photos(tmp_path, 20, dev=6, words_per_caption=6)
    text_args = ["--captions", str(captions), "--work-dir", str(tmp_path / "work")]
    assert batch_image_feature_extract.main(data + ["--image-backbone", name]) == 0
    assert batch_text_feature_extract.main(text_args + ["--text-backbone", name]) == 0
    assert sentence_augment.main(text_args) == 0
    assert extract_aug_text_features.main(text_args) == 0  # with the caption features' backbone
    assert run_train.main(data + ["--epochs", "2", "--batch-size", "4", "--hidden-dim", "16", "--embed-dim", "8",
                                  "--threads", "1", "--bf16", "off", "--querybank-size", "8"]) == 0
    checkpoint = tmp_path / "work" / "checkpoints" / "best.pt"
    model, state = load_checkpoint(checkpoint)
    assert state["backbones"]["image"]["backbone"] == state["backbones"]["text"]["backbone"] == \
        create_image_backbone(name).name
    # the export a shipped model is made with, evaluated as search serves it
    shipped = tmp_path / "shipped.pt"
    export_checkpoint(read_checkpoint(checkpoint), shipped, bank_size=4)
    assert evaluate.main(data + ["--checkpoint", str(shipped), "--split", "dev", "--word-queries", "0"]) == 0
    report = json.loads((tmp_path / "work" / "results" / "eval_val.json").read_text())
    row_name = next(k for k in report["results"] if k.startswith("trained"))
    row = report["results"][row_name]
    assert report["clip_benchmark"][row_name]["image_retrieval_recall@10"] == pytest.approx(row["t2i_r10"] / 100)
