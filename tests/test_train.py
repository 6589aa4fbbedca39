"""The trainer on small synthetic features: learning, checkpoints, logs, exact resume."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from data_loader import SplitData
from model import load_checkpoint
from train import BEST, LAST, ResumeError, TrainConfig, lr_lambda, train

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

    def validate_then_stop(model, data, others=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the kill arrives during epoch 3's validation
        return real_validate(model, data, others)

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
    with pytest.raises(ResumeError, match=r"another config \(--lr 0\.003 there, 0\.01 here\)"):
        train(small_cfg(epochs=1, lr=1e-2), train_data, val_data, tmp_path, BACKBONES, resume=True)
    # a run saved before a setting existed had its default: it resumes with it, and not with another
    state = torch.load(tmp_path / LAST, weights_only=True)
    del state["train_config"]["text_top_layers"], state["train_config"]["top_lr_scale"]
    torch.save(state, tmp_path / LAST)
    train(small_cfg(epochs=2), train_data, val_data, tmp_path, BACKBONES, resume=True)
    with pytest.raises(ResumeError, match=r"--top-lr-scale 0\.1 there, 0\.5 here"):
        train(small_cfg(epochs=3, top_lr_scale=0.5), train_data, val_data, tmp_path, BACKBONES, resume=True)


def test_resume_refuses_other_features_or_data(tmp_path):
    """A run on efficientnet_lite0 features is not continued on lite1 features of the same width,
    nor on other splits or other caches."""
    lite0 = {"image": {"backbone": "efficientnet_lite0", "weights": "lite0:aaaa", "dim": 24, "preprocess": {}},
             "text": BACKBONES["text"]}
    lite1 = {**lite0, "image": {**lite0["image"], "backbone": "efficientnet_lite1", "weights": "lite1:bbbb"}}
    train_data, val_data = make_split(40, 0), make_split(20, 1)
    ids = {"image_ids_sha256": "1111", "caption_ids_sha256": "2222"}
    train(small_cfg(epochs=1), train_data, val_data, tmp_path, lite0, data_identity=ids)
    before = (tmp_path / LAST).read_bytes()
    with pytest.raises(ResumeError) as info:
        train(small_cfg(epochs=2), train_data, val_data, tmp_path, lite1, resume=True, data_identity=ids)
    msg = str(info.value)
    assert "efficientnet_lite0 (lite0:aaaa)" in msg and "efficientnet_lite1 (lite1:bbbb)" in msg and "\n" not in msg
    with pytest.raises(ResumeError, match=r"other data \(caption_ids_sha256 2222 there, 3333 here\)"):
        train(small_cfg(epochs=2), train_data, val_data, tmp_path, lite0, resume=True,
              data_identity={**ids, "caption_ids_sha256": "3333"})
    with pytest.raises(ResumeError, match=r"other data \(val_images_sha256 "):
        train(small_cfg(epochs=2), train_data, make_split(21, 1), tmp_path, lite0, resume=True, data_identity=ids)
    assert (tmp_path / LAST).read_bytes() == before  # nothing trained, nothing written
    train(small_cfg(epochs=2), train_data, val_data, tmp_path, lite0, resume=True, data_identity=ids)
    assert torch.load(tmp_path / LAST, weights_only=True)["epoch"] == 2


def test_resume_with_more_epochs_rebuilds_the_schedule(tmp_path, monkeypatch, caplog):
    import train as train_module

    train_data, val_data = make_split(80, 0), make_split(30, 1)
    train(small_cfg(epochs=2), train_data, val_data, tmp_path, BACKBONES)
    steps_done = torch.load(tmp_path / LAST, weights_only=True)["scheduler"]["last_epoch"]
    rates = []
    real_step = train_module.training_step

    def recording_step(model, loss_fn, optim, *args):
        rates.append(optim.param_groups[0]["lr"])
        return real_step(model, loss_fn, optim, *args)

    monkeypatch.setattr(train_module, "training_step", recording_step)
    with caplog.at_level("INFO", logger="train"):
        train(small_cfg(epochs=3), train_data, val_data, tmp_path, BACKBONES, resume=True)
    assert "the learning-rate schedule is rebuilt for 3 epochs" in caplog.text
    state = torch.load(tmp_path / LAST, weights_only=True)
    assert state["epoch"] == 3 and state["train_config"]["epochs"] == 3 and len(state["history"]) == 3
    # every step of epoch 3 at the rate of a 3-epoch schedule (the 2-epoch one had decayed to 0)
    from smart_sampler import UniqueImageBatchSampler

    cfg = small_cfg(epochs=3)
    per_epoch = len(UniqueImageBatchSampler(train_data.caption_image, None, cfg.batch_size, 0, cfg.seed))
    warmup = max(1, int(cfg.warmup_epochs * per_epoch))
    expected = [cfg.lr * lr_lambda(s, warmup, 3 * per_epoch) for s in range(steps_done, steps_done + len(rates))]
    assert rates == pytest.approx(expected) and rates[0] > 0


def make_views_split(n_images: int, seed: int) -> SplitData:
    """A split with 3 cached views per image (training draws one per sample: more random numbers)."""
    data = make_split(n_images, seed, with_keywords=True)
    offsets = np.random.default_rng(seed + 50).normal(size=(n_images, 3, 24)).astype(np.float32)
    data.image_views = torch.tensor(data.image_features.float().numpy()[:, None] + 0.3 * offsets,
                                    dtype=torch.float16)
    return data


def test_resume_within_an_epoch_continues_exactly(tmp_path, monkeypatch):
    """A run stopped mid-epoch (last.pt saved every step here) resumes at the next step: the same
    weights, history and best checkpoint as a run never stopped, with keywords, views and dropout."""
    import train as train_module

    train_data, val_data = make_views_split(80, 0), make_split(30, 1)
    cfg = small_cfg(epochs=3, caption_ratio=4, input_dropout=0.2, batch_size=16)
    train(cfg, train_data, val_data, tmp_path / "straight", BACKBONES, checkpoint_seconds=0)
    real_step = train_module.training_step
    calls = {"n": 0}

    def stop_at_step_27(*args):
        calls["n"] += 1
        if calls["n"] == 27:  # epoch 1 has 20 steps: the kill arrives in the 7th of epoch 2
            raise KeyboardInterrupt
        return real_step(*args)

    monkeypatch.setattr(train_module, "training_step", stop_at_step_27)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, train_data, val_data, tmp_path / "resumed", BACKBONES, checkpoint_seconds=0)
    monkeypatch.setattr(train_module, "training_step", real_step)
    saved = torch.load(tmp_path / "resumed" / LAST, weights_only=True)
    assert saved["epoch"] == 1 and saved["partial"]["epoch"] == 2 and saved["partial"]["step"] == 6
    train(cfg, train_data, val_data, tmp_path / "resumed", BACKBONES, resume=True, checkpoint_seconds=0)
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")


def assert_same_run(a_dir, b_dir):
    for name in (LAST, BEST):
        a = torch.load(a_dir / name, weights_only=True)
        b = torch.load(b_dir / name, weights_only=True)
        assert a["epoch"] == b["epoch"] and a["partial"] is b["partial"] is None
        assert a["model"].keys() == b["model"].keys()
        for k in a["model"]:
            assert torch.equal(a["model"][k], b["model"][k]), (name, k)
        assert torch.equal(a["loss"]["log_temperature"], b["loss"]["log_temperature"])
        drop_time = [{k: v for k, v in h.items() if k != "epoch_seconds"} for h in a["history"]]
        assert drop_time == [{k: v for k, v in h.items() if k != "epoch_seconds"} for h in b["history"]]


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


# --------------------------------------------------------------------------------------------------
# run_train.py on tiny feature caches: a kill -9 mid-epoch, then --resume

def write_tiny_dataset(root, n_images: int = 48) -> list[str]:
    """Caption file, split lists and the three feature caches of a tiny dataset under ``root``;
    returns run_train.py's data flags."""
    from crossmodal.features.cache import write_cache

    g = np.random.default_rng(0)
    names = [f"{i:03d}.jpg" for i in range(n_images)]
    keys = [f"{n}#{k}" for n in names for k in range(3)]
    (root / "captions.token").write_text("".join(f"{k}\tcaption {k}\n" for k in keys), encoding="utf-8")
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("\n".join(names[:36]) + "\n")
    (root / "splits" / "dev.txt").write_text("\n".join(names[36:]) + "\n")
    img = g.normal(size=(n_images, 24)).astype(np.float32)
    proj = g.normal(size=(24, 16))
    text = {"backbone": "fake-txt", "weights": "w2", "dim": 16, "preprocess": {}}
    write_cache(root / "image_embeddings", names, img.astype(np.float16),
                {"backbone": "fake-img", "weights": "w1", "dim": 24, "preprocess": {}},
                extra={"captions_file": str(root / "captions.token")})
    caps = img[np.repeat(np.arange(n_images), 3)] @ proj + 0.5 * g.normal(size=(len(keys), 16))
    write_cache(root / "text_embeddings", keys, caps.astype(np.float16), text)
    write_cache(root / "aug_text_embeddings", [f"{n}#0::word" for n in names], (img @ proj).astype(np.float16), text)
    return ["--work-dir", str(root), "--captions", str(root / "captions.token"), "--splits", str(root / "splits"),
            "--epochs", "3", "--batch-size", "4", "--hidden-dim", "32", "--embed-dim", "16", "--lr", "3e-3",
            "--threads", "1", "--bf16", "off", "--querybank-size", "0", "--caption-ratio", "4"]


def test_run_train_killed_mid_epoch_resumes_to_the_same_weights(tmp_path):
    """kill -9 during an epoch, after last.pt was saved within it (--checkpoint-seconds 0: every
    step), then --resume: the final checkpoints equal an uninterrupted run's."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import run_train

    args = write_tiny_dataset(tmp_path)
    assert run_train.main(args + ["--out", str(tmp_path / "straight")]) == 0
    args += ["--checkpoint-seconds", "0"]

    killed = tmp_path / "killed"
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, str(root / "run_train.py"), *args, "--out", str(killed)], cwd=root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, seen = time.monotonic() + 60, None
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.005)
            try:
                stamp = (killed / LAST).stat().st_mtime_ns
                if stamp == seen:
                    continue
                seen, partial = stamp, torch.load(killed / LAST, weights_only=True)["partial"]
            except (FileNotFoundError, RuntimeError, EOFError):
                continue
            if partial and partial["epoch"] == 2:
                os.kill(proc.pid, signal.SIGSTOP)  # frozen, so what it saved is what the kill leaves
                break
    finally:
        proc.kill()
    assert proc.wait() == -signal.SIGKILL
    saved = torch.load(killed / LAST, weights_only=True)
    assert saved["partial"] and saved["partial"]["epoch"] == 2 and saved["partial"]["step"] > 0
    assert run_train.main(args + ["--out", str(killed), "--resume"]) == 0
    assert_same_run(tmp_path / "straight", killed)


def test_run_train_resume_refusals_are_one_line(tmp_path, caplog):
    import run_train

    args = write_tiny_dataset(tmp_path) + ["--epochs", "1", "--out", str(tmp_path / "out")]
    assert run_train.main(args) == 0
    caplog.clear()
    assert run_train.main(args + ["--resume", "--lr", "1e-3"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "--lr 0.003 there, 0.001 here" in errors[0] and "\n" not in errors[0]
    assert run_train.main(args + ["--resume", "--epochs", "2"]) == 0  # another --epochs continues the run
    assert torch.load(tmp_path / "out" / LAST, weights_only=True)["epoch"] == 2


def test_run_train_on_two_sources_validates_both_and_selects_on_their_mean(tmp_path, caplog):
    import run_train

    from data_loader import concat_splits

    (tmp_path / "a").mkdir()
    (tmp_path / "web").mkdir()
    args = write_tiny_dataset(tmp_path / "a") + ["--epochs", "2", "--out", str(tmp_path / "out")]
    write_tiny_dataset(tmp_path / "web", n_images=40)
    assert run_train.main(args + ["--add-source", str(tmp_path / "web")]) == 0
    state = torch.load(tmp_path / "out" / BEST, weights_only=True)
    metrics = state["metrics"]
    assert metrics["selection_rsum"] == pytest.approx((metrics["rsum"] + metrics["web_rsum"]) / 2)
    history = json.load(open(tmp_path / "out" / "log.json"))
    assert max(h["val_selection_rsum"] for h in history) == pytest.approx(metrics["selection_rsum"])
    assert state["data_identity"]["web_val_images_sha256"] and state["sources"] == [str(tmp_path / "web")]

    # the concatenation keeps each source's pairs, its images renamed apart
    a, b = make_split(5, 0, with_keywords=True), make_split(3, 1)
    both = concat_splits([a, b], ["", "web"])
    assert both.image_names == a.image_names + [f"web:{n}" for n in b.image_names]
    assert torch.equal(both.caption_features[a.n_captions:], b.caption_features)
    assert list(both.caption_image[a.n_captions:]) == list(b.caption_image + 5)
    assert torch.equal(both.image_features[both.caption_image[-1]], b.image_features[b.caption_image[-1]])
    assert len(both.keyword_image) == len(a.keyword_image)

    # a source extracted with other backbones is refused, naming it
    from crossmodal.features.cache import write_cache

    write_cache(tmp_path / "web" / "image_embeddings", [f"{i:03d}.jpg" for i in range(40)],
                np.zeros((40, 24), np.float16), {"backbone": "other-img", "weights": "w9", "dim": 24,
                                                 "preprocess": {}},
                extra={"captions_file": str(tmp_path / "web" / "captions.token")})
    caplog.clear()
    assert run_train.main(args + ["--add-source", str(tmp_path / "web"), "--out", str(tmp_path / "out2")]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "other-img" in errors[0] and str(tmp_path / "web") in errors[0]
