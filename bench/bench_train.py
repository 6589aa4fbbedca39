#!/usr/bin/env python
"""Training at Flickr30K size on synthetic features: time to the best validation rsum, and s/epoch
against the original design's one-.npy-file-per-sample loader.

Data (synthetic, real dims): 29,000 train images x 5 captions = 145,000 caption samples, and a
validation split of 1,014 images x 5 captions, as Karpathy's Flickr30K split. Image features are
1280-d (EfficientNet-Lite0), caption features 384-d (MiniLM), both stored float16 like the caches.
They are made correlated so the heads have something to learn:

    z     ~ N(0, I_64)                   one latent "scene" per image
    image = relu(z P + 0.5 e)            P: 64x1280 random; e: per-image noise (CNN features are >= 0)
    text  = image W + sigma * n          W: 1280x384 random; n: per-caption noise (sigma = --text-noise)

so each caption is a noisy linear map of its image's features; sigma sets how hard retrieval is.

* ours: ``train.train(...)`` on a ``SplitData`` built directly (features held in memory, a batch
  is one fancy-index; UniqueImageBatchSampler; AdamW + warm-up/cosine; validation each epoch,
  checkpoints, logs). Reported: epochs, per-epoch training seconds, and wall time from the start
  to the end of the validation of the best epoch.
* baseline: the original design's loader, a torch Dataset that ``np.load``s one image .npy and
  one caption .npy per sample (float32 files written to a temp dir once, untimed), a DataLoader
  with batch 256, shuffle and --baseline-workers workers, feeding the same model/loss/optimiser
  step. Timed over --baseline-batches batches and scaled to an epoch; ours is also timed over the
  same number of batches in the same process (same step code) as a cross-check.

Ratio = baseline s/epoch / ours s/epoch.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench import _common as C  # first: it sets what torch reads when it loads

# isort: split
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

import config  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-images", type=int, default=29000)
    p.add_argument("--val-images", type=int, default=1014)
    p.add_argument("--captions-per-image", type=int, default=5)
    p.add_argument("--image-dim", type=int, default=1280)
    p.add_argument("--text-dim", type=int, default=384)
    p.add_argument("--text-noise", type=float, default=3.0, help="sigma of the per-caption noise")
    p.add_argument("--epochs", type=int, default=8, help="upper bound on epochs for ours")
    p.add_argument("--patience", type=int, default=2, help="early-stopping patience for ours")
    p.add_argument("--batch-size", type=int, default=config.BATCH_SIZE)
    p.add_argument("--lr", type=float, default=config.LEARNING_RATE)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--baseline-batches", type=int, default=120,
                   help="batches timed for the baseline (and ours' same-step cross-check); 0 = a full epoch")
    p.add_argument("--baseline-workers", type=int, default=2, help="DataLoader workers of the baseline")
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument("--tmp", type=Path, default=None, help="where the per-sample .npy files go (default: system temp)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def synthetic(args):
    """(train SplitData, val SplitData): correlated image/caption features, float16."""
    from data_loader import SplitData
    rng = np.random.default_rng(args.seed)
    k = 64
    P = rng.standard_normal((k, args.image_dim), dtype=np.float32) / np.sqrt(k)
    W = rng.standard_normal((args.image_dim, args.text_dim), dtype=np.float32) / np.sqrt(args.image_dim)

    def split(n_img: int, prefix: str) -> SplitData:
        z = rng.standard_normal((n_img, k), dtype=np.float32)
        img = np.maximum(z @ P + 0.5 * rng.standard_normal((n_img, args.image_dim), dtype=np.float32), 0)
        owner = np.repeat(np.arange(n_img), args.captions_per_image)
        txt = np.empty((len(owner), args.text_dim), dtype=np.float16)
        for s in range(0, len(owner), 16384):  # in blocks: keeps the float32 temporaries small
            o = owner[s : s + 16384]
            txt[s : s + len(o)] = img[o] @ W + args.text_noise * rng.standard_normal((len(o), args.text_dim),
                                                                                     dtype=np.float32)
        names = [f"{prefix}{i:06d}.jpg" for i in range(n_img)]
        return SplitData(names, torch.from_numpy(img.astype(np.float16)), torch.from_numpy(txt), owner)

    return split(args.train_images, "train"), split(args.val_images, "val")


class PerSampleNpy(Dataset):
    """The original design: every sample's image and caption features in their own .npy files."""

    def __init__(self, root: Path, caption_image: np.ndarray):
        self.root, self.caption_image = root, caption_image

    def __len__(self) -> int:
        return len(self.caption_image)

    def __getitem__(self, i: int):
        j = int(self.caption_image[i])
        img = np.load(self.root / "img" / f"{j}.npy")
        txt = np.load(self.root / "txt" / f"{i}.npy")
        return torch.from_numpy(img), torch.from_numpy(txt), j


def write_per_sample(data, root: Path) -> float:
    t0 = time.perf_counter()
    (root / "img").mkdir(parents=True)
    (root / "txt").mkdir()
    img = data.image_features.float().numpy()
    txt = data.caption_features.float().numpy()
    for j in range(len(img)):
        np.save(root / "img" / f"{j}.npy", img[j])
    for i in range(len(txt)):
        np.save(root / "txt" / f"{i}.npy", txt[i])
    return time.perf_counter() - t0


def make_step(train_data, cfg):
    """train.train's model, loss, optimiser and step (train.training_step), for timing batches."""
    from loss import InfoNCELoss
    from model import RetrievalModel
    from train import make_optimizer, training_step, use_bf16
    torch.manual_seed(cfg.seed)
    model = RetrievalModel(train_data.image_features.shape[1], train_data.caption_features.shape[1],
                           embed_dim=cfg.embed_dim, hidden_dim=cfg.hidden_dim, dropout=cfg.dropout)
    loss_fn = InfoNCELoss(init_temperature=cfg.init_temperature)
    optim = make_optimizer(model, loss_fn, cfg)
    bf16 = use_bf16(cfg.bf16)
    model.train()

    def step(img, txt, image_idx):
        return training_step(model, loss_fn, optim, img, txt, image_idx, cfg, bf16).item()
    return step


def time_batches(batches_iter, step, n_batches: int) -> float:
    t0 = time.perf_counter()
    for k, (img, txt, idx) in enumerate(batches_iter):
        if k == n_batches:
            break
        step(img, txt, idx)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    import train as train_mod
    from smart_sampler import UniqueImageBatchSampler

    t0 = time.perf_counter()
    train_data, val_data = synthetic(args)
    gen_s = time.perf_counter() - t0
    C.print_machine("bench_train: Flickr30K-size training on synthetic features")
    print(f"- train {len(train_data.image_names):,} images / {train_data.n_captions:,} caption samples, val "
          f"{len(val_data.image_names):,} / {val_data.n_captions:,}; dims {args.image_dim}/{args.text_dim}; "
          f"text = image W + {args.text_noise} noise (made in {gen_s:.1f} s, untimed)")
    print(f"- batch {args.batch_size}, learning rate {args.lr:g}; ours: up to {args.epochs} epochs, "
          f"patience {args.patience}")

    # --- ours: the real trainer, timestamps taken at each validation --------------------------------
    stamps: list[float] = []
    real_validate = train_mod.validate

    def validate(model, data):
        m = real_validate(model, data)
        stamps.append(time.perf_counter())
        return m

    train_mod.validate = validate
    out = Path(tempfile.mkdtemp(prefix="bench_train_"))
    cfg = train_mod.TrainConfig(epochs=args.epochs, patience=args.patience, batch_size=args.batch_size, lr=args.lr,
                                caption_ratio=0, seed=args.seed, threads=args.threads)
    backbones = {"image": {"backbone": "synthetic", "dim": args.image_dim},
                 "text": {"backbone": "synthetic", "dim": args.text_dim}}
    start = time.perf_counter()
    best = train_mod.train(cfg, train_data, val_data, out, backbones)
    total = time.perf_counter() - start
    train_mod.validate = real_validate
    import json
    history = json.loads((out / "log.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    to_best = stamps[best["epoch"] - 1] - start
    epoch_s = [h["epoch_seconds"] for h in history]
    ours_epoch = statistics.median(epoch_s)
    n_batches_epoch = len(UniqueImageBatchSampler(train_data.caption_image, None, args.batch_size, 0, args.seed))

    print()
    print(C.table(["epoch", "train s", "wall s at validation end", "loss", "val R@1 t2i", "val R@1 i2t", "val rsum"],
                  [[h["epoch"], h["epoch_seconds"], round(stamps[i] - start, 1), round(h["train_loss"], 3),
                    round(h["val_t2i_r1"], 1), round(h["val_i2t_r1"], 1), round(h["val_rsum"], 1)]
                   for i, h in enumerate(history)]))
    print()
    print(C.table(["ours (train.train)", "value", "target"], [
        ["epochs run", len(history), "-"],
        ["best epoch (val rsum)", f"{best['epoch']} ({best['val_rsum']:.1f})", "-"],
        ["wall s to the best val rsum", round(to_best, 1), "≤ 120 on the 2-core CPU"],
        ["wall s total (incl. patience epochs)", round(total, 1), "-"],
        ["median training s/epoch", round(ours_epoch, 2), "-"],
        ["batches per epoch", n_batches_epoch, "-"],
    ]))

    if args.skip_baseline:
        return 0
    # --- baseline: one .npy per sample -------------------------------------------------------------
    tmp_root = Path(tempfile.mkdtemp(prefix="bench_train_npy_", dir=args.tmp))
    try:
        write_s = write_per_sample(train_data, tmp_root)
        nb = args.baseline_batches or n_batches_epoch
        ds = PerSampleNpy(tmp_root, train_data.caption_image)
        loader = DataLoader(ds, batch_size=args.batch_size, shuffle=True, num_workers=args.baseline_workers,
                            generator=torch.Generator().manual_seed(args.seed),
                            persistent_workers=False, prefetch_factor=4 if args.baseline_workers else None)
        step_b = make_step(train_data, cfg)
        time_batches(iter(loader), step_b, 3)  # warm-up: page cache, allocator (untimed)
        t_base = time_batches(iter(loader), step_b, nb)  # includes worker start, as an epoch does
        # ours, same step code, same number of batches, in this process
        sampler = UniqueImageBatchSampler(train_data.caption_image, None, args.batch_size, 0, args.seed)
        step_o = make_step(train_data, cfg)
        t_ours = time_batches((train_data.gather(b) for b in sampler), step_o, nb)
        # loading alone, no model step
        t_load_b = time_batches(iter(loader), lambda *a: None, nb)
        t_load_o = time_batches((train_data.gather(b) for b in sampler), lambda *a: None, nb)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    base_epoch = t_base / nb * n_batches_epoch
    print(f"\nbaseline files: {len(train_data.image_names):,} image + {train_data.n_captions:,} caption .npy "
          f"(float32) written in {write_s:.0f} s (untimed); {args.baseline_workers} DataLoader workers; "
          f"{nb} batches timed, scaled to {n_batches_epoch} batches/epoch")
    print()
    print(C.table(["run", "s per epoch", "note"], [
        ["ours: train.train, median training s/epoch", round(ours_epoch, 2), "measured over full epochs"],
        ["ours: gather + step, same batches", round(t_ours / nb * n_batches_epoch, 2), f"{nb} batches, scaled"],
        ["baseline: .npy per sample + DataLoader", round(base_epoch, 2), f"{nb} batches, scaled"],
        ["loading only: ours gather", round(t_load_o / nb * n_batches_epoch, 2), "no model step"],
        ["loading only: baseline DataLoader", round(t_load_b / nb * n_batches_epoch, 2), "no model step"],
    ]))
    print()
    print(C.table(["ratio", "value", "target"], [
        ["baseline s/epoch ÷ ours (trainer epochs)", base_epoch / ours_epoch, "> 1"],
        ["baseline ÷ ours (same step, same batch count)", t_base / t_ours, "> 1"],
        ["loading only: baseline ÷ ours", t_load_b / t_load_o, "> 1"],
    ]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
