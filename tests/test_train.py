"""The trainer on small synthetic features: learning, checkpoints, logs, exact resume."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from data_loader import SplitData
from model import load_checkpoint
from train import BEST, LAST, TrainConfig, lr_lambda, train

BACKBONES = {"image": {"backbone": "fake-img", "weights": "w1", "dim": 24, "preprocess": {}},
             "text": {"backbone": "fake-txt", "weights": "w2", "dim": 16, "preprocess": {}}}


def make_split(n_images: int, seed: int, with_keywords: bool = False) -> SplitData:
    """Images with random features; captions are noisy linear maps of them (learnable)."""
    g = np.random.default_rng(seed)
    proj = np.random.default_rng(123).normal(size=(24, 16))  # the same map for every split
    img = g.normal(size=(n_images, 24)).astype(np.float32)
    cap_image = np.repeat(np.arange(n_images), 3)
    cap = img[cap_image] @ proj + 0.5 * g.normal(size=(len(cap_image), 16))
    data = SplitData([f"{i}.jpg" for i in range(n_images)], torch.tensor(img, dtype=torch.float16),
                     torch.tensor(cap, dtype=torch.float16), cap_image)
    if with_keywords:
        kw_image = np.arange(n_images)
        data.keyword_features = torch.tensor(img @ proj, dtype=torch.float16)
        data.keyword_image = kw_image
    return data


def small_cfg(**kw) -> TrainConfig:
    base = dict(epochs=4, batch_size=32, lr=3e-3, hidden_dim=32, embed_dim=16, warmup_epochs=0.5, patience=10,
                dropout=0.1, input_dropout=0.0)
    base.update(kw)
    return TrainConfig(**base)


def test_training_learns_and_writes_everything(tmp_path):
    train_data, val_data = make_split(120, 0, with_keywords=True), make_split(40, 1)
    best = train(small_cfg(caption_ratio=4), train_data, val_data, tmp_path, BACKBONES)
    # chance rsum for 40 images / 120 captions is about 3*(2.5+12.5+25) ~ 120 at most; learning beats it
    assert best["val_rsum"] > 250
    for name in (BEST, LAST, "log.csv", "log.json", "curves.png"):
        assert (tmp_path / name).is_file(), name
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    temps = [float(r["temperature"]) for r in rows]
    assert temps[-1] != pytest.approx(0.07, abs=1e-4), "the temperature is optimised"
    model, state = load_checkpoint(tmp_path / BEST)
    assert state["backbones"] == BACKBONES
    assert state["epoch"] == best["epoch"]
    assert json.load(open(tmp_path / "log.json"))[best["epoch"] - 1]["val_rsum"] == pytest.approx(best["val_rsum"])


def test_resume_continues_exactly(tmp_path):
    train_data, val_data = make_split(80, 0), make_split(30, 1)
    straight = tmp_path / "straight"
    train(small_cfg(epochs=3), train_data, val_data, straight, BACKBONES)
    # an interrupted run: same config, stopped after epoch 2 by running with a patched epoch count
    resumed = tmp_path / "resumed"
    cfg = small_cfg(epochs=3)
    import train as train_module

    calls = {"n": 0}
    real_validate = train_module.validate

    def validate_then_stop(model, data):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the kill arrives during epoch 3's validation
        return real_validate(model, data)

    train_module.validate = validate_then_stop
    try:
        with pytest.raises(KeyboardInterrupt):
            train(cfg, train_data, val_data, resumed, BACKBONES)
    finally:
        train_module.validate = real_validate
    assert torch.load(resumed / LAST, weights_only=True)["epoch"] == 2
    train(cfg, train_data, val_data, resumed, BACKBONES, resume=True)
    a = torch.load(straight / LAST, weights_only=True)
    b = torch.load(resumed / LAST, weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert torch.equal(a["loss"]["log_temperature"], b["loss"]["log_temperature"])
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]


def test_resume_refuses_another_config(tmp_path):
    train_data, val_data = make_split(40, 0), make_split(20, 1)
    train(small_cfg(epochs=1), train_data, val_data, tmp_path, BACKBONES)
    with pytest.raises(ValueError, match="another config"):
        train(small_cfg(epochs=1, lr=1e-2), train_data, val_data, tmp_path, BACKBONES, resume=True)


def test_early_stopping(tmp_path):
    train_data, val_data = make_split(40, 0), make_split(20, 1)
    # lr 0: nothing improves after the first epoch, so patience 2 stops after epoch 3
    train(small_cfg(epochs=10, lr=0.0, patience=2), train_data, val_data, tmp_path, BACKBONES)
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert len(rows) == 3


def test_schedule_warms_up_then_decays_once():
    total, warm = 100, 10
    values = [lr_lambda(s, warm, total) for s in range(total)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[10:], values[11:])), "no restarts"
    assert values[-1] < 0.01


@pytest.mark.parametrize("mode", ["on", "off"])
def test_training_learns_in_bf16_and_float32(tmp_path, mode):
    train_data, val_data = make_split(120, 0), make_split(40, 1)
    best = train(small_cfg(bf16=mode, input_dropout=0.2), train_data, val_data, tmp_path, BACKBONES)
    assert best["val_rsum"] > 250  # chance is ~120 (see above)
    model, _ = load_checkpoint(tmp_path / BEST)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast keeps float32 weights


def test_use_bf16_modes(monkeypatch):
    from train import use_bf16
    assert use_bf16("on") and not use_bf16("off")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert not use_bf16("auto")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert use_bf16("auto")
    with pytest.raises(ValueError, match="auto, on or off"):
        use_bf16("yes")


def test_views_cache_trains_on_sampled_views_and_validates_on_their_mean(tmp_path):
    from crossmodal.features.cache import FeatureCache

    from data_loader import Caches, split_data

    g = np.random.default_rng(0)
    names = [f"{i}.jpg" for i in range(6)]
    views = g.normal(size=(6, 3, 4)).astype(np.float16)  # 3 views of 4-d per image, view-major rows
    manifest = {"backbone": "b", "weights": "w", "dim": 12, "views": ["full", "full_flip", "center80"],
                "preprocess": {"views": ["full", "full_flip", "center80"]}}
    images = FeatureCache(tmp_path, views.reshape(6, 12), names, manifest)
    captions = FeatureCache(tmp_path, g.normal(size=(12, 5)).astype(np.float16),
                            [f"{n}#{k}" for n in names for k in range(2)], {"backbone": "t", "weights": "w",
                                                                            "dim": 5, "preprocess": {}})
    caches = Caches(images, captions)
    assert caches.backbones["image"]["dim"] == 4  # the heads see one view
    data = split_data(caches, names[::-1], use_keywords=False)  # another order than the cache's
    np.testing.assert_allclose(data.image_features.float().numpy(),
                               views[::-1].astype(np.float32).mean(1), atol=1e-3)  # the plain feature: the mean
    seen = set()
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        img, _, image_idx = data.gather(np.arange(12), generator=gen)
        for row, j in zip(img.numpy(), image_idx.numpy()):
            match = [v for v in range(3) if np.array_equal(row, views[::-1][j, v])]
            assert len(match) == 1  # every training row is one cached view of its own image
            seen.add(match[0])
    assert seen == {0, 1, 2}

    train_data, val_data = make_split(120, 0), make_split(40, 1)
    offsets = g.normal(size=(120, 3, 24)).astype(np.float32)
    offsets -= offsets.mean(1, keepdims=True)
    train_data.image_views = torch.tensor(train_data.image_features.float().numpy()[:, None] + 0.3 * offsets,
                                          dtype=torch.float16)
    best = train(small_cfg(), train_data, val_data, tmp_path / "run", BACKBONES)
    assert best["val_rsum"] > 250  # chance is ~120 (see test_training_learns_and_writes_everything)


def test_ensemble_trains_members_joins_them_and_resumes(tmp_path):
    from model import EnsembleModel
    from train import add_querybank, train_ensemble

    train_data, val_data = make_split(80, 0), make_split(30, 1)
    cfg = small_cfg(epochs=3)
    best = train_ensemble(cfg, train_data, val_data, tmp_path, BACKBONES, members=2)
    model, state = load_checkpoint(tmp_path / BEST)
    assert isinstance(model, EnsembleModel) and len(model.members) == 2
    assert [m["seed"] for m in state["members"]] == [cfg.seed, cfg.seed + 1]
    assert state["metrics"]["rsum"] == pytest.approx(best["val_rsum"])
    assert state["backbones"] == BACKBONES and state["ensemble"] == 2
    for i in range(2):
        member, _ = load_checkpoint(tmp_path / f"member{i}" / BEST)
        torch.testing.assert_close(member.state_dict()["text_head.skip.weight"],
                                   model.members[i].state_dict()["text_head.skip.weight"])
    # resuming finished members trains nothing more: their logs are unchanged
    log_before = (tmp_path / "member1" / "log.json").read_text()
    train_ensemble(cfg, train_data, val_data, tmp_path, BACKBONES, members=2, resume=True)
    assert (tmp_path / "member1" / "log.json").read_text() == log_before
    # the querybank is stored with beta = 1 / the members' mean temperature, and its metrics returned
    qb = add_querybank(tmp_path / BEST, train_data, val_data, size=50)
    _, state = load_checkpoint(tmp_path / BEST)
    assert state["querybank"]["text"].shape == (50, 32) and state["querybank"]["image"].shape == (50, 32)
    assert state["querybank"]["beta"] == pytest.approx(1 / state["temperature"])
    assert state["metrics_querybank"] == qb and qb["rsum"] > 0
    assert "keywords" not in state["querybank"]  # trained without keyword samples
    kw_train = make_split(80, 0, with_keywords=True)
    add_querybank(tmp_path / BEST, kw_train, val_data, size=50)
    assert load_checkpoint(tmp_path / BEST)[1]["querybank"]["keywords"].shape == (50, 32)
    assert add_querybank(tmp_path / BEST, train_data, val_data, size=0) is None
    with pytest.raises(ValueError, match="at least 1"):
        train_ensemble(cfg, train_data, val_data, tmp_path, BACKBONES, members=0)
