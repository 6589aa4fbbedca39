"""The training loop: heads + InfoNCE on cached features, selected on the validation split.

AdamW over the heads *and* the loss temperature; linear warm-up then one cosine decay (no
restarts); after each epoch the validation rsum decides the best checkpoint and early stopping.
Checkpoints are written atomically with the config, backbone and data identities and metrics;
``last.pt`` is also written within an epoch every ``CHECKPOINT_SECONDS``. ``resume`` continues
from it exactly (model, temperature, optimiser, schedule, RNG, log, the step within the epoch),
on the same features, data and settings; only ``epochs`` may differ (the schedule is rebuilt).

Speed on a CPU (the heads are the whole cost; loading is one fancy-index per batch): fused AdamW,
dropout masks from random bytes (``model.dropout``) and, on CPUs with AMX, bf16 autocast of the
heads' products (docs/performance.md has the figures).

Under ``torchrun --nproc-per-node N`` (``Distributed``) every process draws the same global batches,
embeds its share of each, and computes InfoNCE over the whole batch's gathered embeddings
(``loss.gather_rows``); the summed gradients equal one process's on the whole batch, so every
process takes the same step. Rank 0 alone writes checkpoints and logs; a run resumes with another N.
"""
from __future__ import annotations

import copy
import csv
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from crossmodal.atomic_io import atomic_open, atomic_save_with, atomic_write_json
from crossmodal.backbones import TextBackbone, TextTop
from crossmodal.calibration import calibrate_dev
from crossmodal.captions import CaptionSet, list_hash
from crossmodal.evaluation import embed_split, encode_rows, plain_metrics
from crossmodal.metrics import retrieval_metrics
from crossmodal.querybank import caption_bias, make_querybank, querybank_bias

import config
from data_loader import SplitData
from loss import InfoNCELoss, gather_rows
from model import EnsembleModel, RetrievalModel, dropout, load_checkpoint, read_checkpoint
from smart_sampler import UniqueImageBatchSampler

log = logging.getLogger(__name__)

BEST, LAST = "best.pt", "last.pt"
# Seconds between the saves of last.pt within an epoch (a Flickr30K epoch takes minutes on a CPU):
# a killed run loses at most about this much training. A save costs a fraction of a second.
CHECKPOINT_SECONDS = 30.0


class ResumeError(ValueError):
    """A resume that cannot continue the run it finds (other features, data or settings)."""


def _option(default, help: str):
    """A TrainConfig field: its default and the help text of its run_train.py flag."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    epochs: int = _option(config.EPOCHS, "most epochs; early stopping usually ends sooner")
    batch_size: int = _option(config.BATCH_SIZE, "caption-image pairs per step (each image at most once)")
    lr: float = _option(config.LEARNING_RATE, "peak learning rate of AdamW")
    weight_decay: float = _option(config.WEIGHT_DECAY, "AdamW weight decay (not on biases and norms)")
    warmup_epochs: float = _option(config.WARMUP_EPOCHS, "epochs of linear warm-up before the cosine decay")
    patience: int = _option(config.EARLY_STOP_PATIENCE, "epochs without a better validation rsum before stopping")
    caption_ratio: int = _option(config.AUG_CAPTION_RATIO, "caption samples per keyword sample; 0 = no keywords")
    embed_dim: int = _option(config.EMBED_DIM, "size of the shared space")
    hidden_dim: int = _option(config.HEAD_HIDDEN_DIM, "hidden size of each head's MLP")
    dropout: float = _option(config.HEAD_DROPOUT, "dropout inside the heads")
    init_temperature: float = _option(config.INIT_TEMPERATURE, "starting InfoNCE temperature (it is learned)")
    input_dropout: float = _option(config.INPUT_DROPOUT, "dropout on the frozen features before the heads")
    seed: int = _option(config.SEED, "seed of initialisation, sampling and dropout")
    threads: int = _option(0, "torch CPU threads; 0 = torch's default")
    bf16: str = _option(config.TRAIN_BF16, "bf16 autocast of the heads' products: auto (where the CPU has AMX) | "
                                           "on | off")
    text_top_layers: int = _option(config.TEXT_TOP_LAYERS, "train the text encoder's last N layers with the heads, "
                                                           "on token states cached by the text stages' "
                                                           "--text-top-layers N (0 = frozen features)")
    top_lr_scale: float = _option(config.TOP_LR_SCALE, "learning rate of the text top, as a share of --lr")


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """The random generators' states as tensors and plain data (a checkpoint loads with weights_only)."""
    numpy_state = np.random.get_state(legacy=False)
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": {**numpy_state, "state": {"key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
                                               "pos": int(numpy_state["state"]["pos"])}}}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    np.random.set_state({**numpy_state, "state": {"key": numpy_state["state"]["key"].numpy().astype(np.uint32),
                                                  "pos": numpy_state["state"]["pos"]}})


def use_bf16(mode: str) -> bool:
    """Whether training runs the heads under bf16 autocast: "on", "off", or "auto" = on a CPU with
    AMX tiles, where bf16 matrix products are several times faster than float32 (without AMX they
    are slower). The loss and validation stay float32."""
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"bf16 must be auto, on or off, got {mode!r}")
    if mode != "auto":
        return mode == "on"
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private, hence the guard
    return bool(amx is not None and amx())


@dataclass(frozen=True)
class Distributed:
    """This process's place among ``torchrun``'s processes (rank 0 of 1 without torchrun)."""
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        """The process that writes checkpoints and logs."""
        return self.rank == 0

    def share(self, batch: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """This process's contiguous share of a global batch, and every process's share size."""
        parts = np.array_split(np.asarray(batch), self.world)
        return parts[self.rank], [len(part) for part in parts]

    def broadcast(self, *modules: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers in every process."""
        import torch.distributed as dist

        for module in modules:
            for tensor in module.state_dict().values():
                dist.broadcast(tensor, 0)

    def reduce_gradients(self, model: torch.nn.Module, loss_fn: torch.nn.Module) -> None:
        """Sum the model's gradients (each process's covers its own rows of the batch); average the
        temperature's (each process's is already the whole batch's)."""
        import torch.distributed as dist

        for module, average in ((model, False), (loss_fn, True)):
            for param in module.parameters():
                if not param.requires_grad:
                    continue
                if param.grad is None:  # every process must join every reduction
                    param.grad = torch.zeros_like(param)
                dist.all_reduce(param.grad)
                if average:
                    param.grad /= self.world


def distributed() -> Distributed:
    """The process group ``torchrun`` describes in the environment (gloo: the heads train on CPUs),
    joined on first use; rank 0 of 1 without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return Distributed(dist.get_rank(), dist.get_world_size())


def make_optimizer(model: RetrievalModel, loss_fn: InfoNCELoss, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the heads, the temperature and a text top (at ``top_lr_scale`` of the rate: pretrained
    layers move less than new heads); fused: one kernel over all parameters, much faster than the
    per-tensor default on a CPU."""
    return torch.optim.AdamW(_param_groups(model, loss_fn, cfg.weight_decay, cfg.lr * cfg.top_lr_scale),
                             lr=cfg.lr, fused=True)


def training_step(model: RetrievalModel, loss_fn: InfoNCELoss, optim: torch.optim.Optimizer,
                  img: torch.Tensor, txt: torch.Tensor, image_idx: torch.Tensor, cfg: TrainConfig,
                  bf16: bool, procs: Distributed = Distributed(), sizes: list[int] | None = None) -> torch.Tensor:
    """One optimisation step on a batch of paired features; returns the (detached) loss. ``txt`` is
    features, or (token states, mask) that the model's text top pools first. Across processes
    (``procs``), ``img`` and ``txt`` are this process's share of the global batch (``sizes``: every
    process's share), ``image_idx`` the whole batch's image rows."""
    if isinstance(txt, tuple):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            txt = model.text_top(*txt)
    img, txt = img.float(), txt.float()
    if cfg.input_dropout:
        img = dropout(img, cfg.input_dropout)
        txt = dropout(txt, cfg.input_dropout)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        image_emb, text_emb = model.encode_image(img).float(), model.encode_text(txt).float()
    if procs.world > 1:  # every process's rows: this batch's rows meet all the others' as negatives
        image_emb, text_emb = gather_rows(image_emb, sizes), gather_rows(text_emb, sizes)
    loss = loss_fn(image_emb, text_emb, image_idx)
    optim.zero_grad(set_to_none=True)
    loss.backward()
    if procs.world > 1:
        procs.reduce_gradients(model, loss_fn)
    optim.step()
    return loss.detach()


def lr_lambda(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up, then a single cosine decay to 0 over the remaining steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@torch.inference_mode()
def validate(model: RetrievalModel, data: SplitData, others: dict[str, SplitData] | None = None) -> dict:
    """Recall on the validation split; with ``others`` (the validation splits of further sources) also
    theirs, as ``<name>_<metric>``, and ``selection_rsum``, the mean rsum of all, which then selects.
    With a text top, the splits' text features are made its output first (``SplitData.pool_text``)."""
    _pool_text(model, [data, *(others or {}).values()])
    img, txt = embed_split(model, data)
    metrics = plain_metrics(retrieval_metrics(img, txt, data.caption_image))
    if others:
        rsums = [metrics["rsum"]]
        for name, other in others.items():
            other_img, other_txt = embed_split(model, other)
            found = plain_metrics(retrieval_metrics(other_img, other_txt, other.caption_image))
            metrics.update({f"{name}_{key}": value for key, value in found.items()})
            rsums.append(found["rsum"])
        metrics["selection_rsum"] = float(np.mean(rsums))
    return metrics


def selection_rsum(metrics: dict) -> float:
    """What selects the best epoch: the validation rsum, or with several sources their mean."""
    return float(metrics.get("selection_rsum", metrics["rsum"]))


def _param_groups(model: torch.nn.Module, loss: torch.nn.Module, weight_decay: float, top_lr: float) -> list[dict]:
    """Weight decay on weight matrices only; biases, LayerNorms and the temperature are exempt. A text
    top's parameters learn at ``top_lr``."""
    top = getattr(model, "text_top", None)
    top_ids = {id(p) for p in top.parameters()} if top is not None else set()
    decay, no_decay, top_decay, top_no_decay = [], [], [], []
    for p in model.parameters():
        if id(p) in top_ids:
            (top_decay if p.ndim >= 2 else top_no_decay).append(p)
        else:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay + list(loss.parameters()), "weight_decay": 0.0}]
    if top_ids:
        groups += [{"params": top_decay, "weight_decay": weight_decay, "lr": top_lr},
                   {"params": top_no_decay, "weight_decay": 0.0, "lr": top_lr}]
    return groups


def _plot(history: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot(epochs, [h["train_loss"] for h in history], marker="o")
    ax1.set(xlabel="epoch", ylabel="train InfoNCE loss", title="training loss")
    for key, label in (("t2i_r1", "text→image R@1"), ("t2i_r5", "R@5"), ("t2i_r10", "R@10"),
                       ("i2t_r1", "image→text R@1")):
        ax2.plot(epochs, [h[f"val_{key}"] for h in history], marker=".", label=label)
    ax2.set(xlabel="epoch", ylabel="%", title="validation recall")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def _describe_backbones(backbones: dict) -> str:
    return " + ".join(f"{b.get('backbone')} ({b.get('weights')})" for b in (backbones.get("image", {}),
                                                                            backbones.get("text", {})))


def check_resume(state: dict, path: Path, cfg: TrainConfig, backbones: dict, data_identity: dict) -> None:
    """Refuse (ResumeError, one line naming both sides) to continue the run saved in ``state`` on other
    features, other data or other settings than this run's; another ``epochs`` is allowed."""
    if state.get("backbones") != backbones:
        old = state.get("backbones") or {}
        diffs = [f"{kind} {key} {old.get(kind, {}).get(key)!r} there, {backbones[kind].get(key)!r} here"
                 for kind in ("image", "text") for key in sorted({*old.get(kind, {}), *backbones[kind]})
                 if old.get(kind, {}).get(key) != backbones[kind].get(key)]
        raise ResumeError(f"{path} was trained on {_describe_backbones(old)} features, these are "
                          f"{_describe_backbones(backbones)} ({'; '.join(diffs)}); resume with the features "
                          "it was trained on, or start a new run in another --out")
    saved = state.get("data_identity") or {}
    diffs = [f"{key} {saved[key]} there, {data_identity[key]} here" for key in saved
             if key in data_identity and saved[key] != data_identity[key]]
    if diffs:
        raise ResumeError(f"{path} was trained on other data ({'; '.join(diffs)}); resume with the same captions "
                          "and splits, or start a new run in another --out")
    now = asdict(cfg)
    # a setting newer than the saved run is missing from it: that run had the setting's default
    saved = {**asdict(TrainConfig()), **state["train_config"]}
    diffs = [f"--{key.replace('_', '-')} {saved[key]} there, {now[key]} here"
             for key in now if key != "epochs" and saved[key] != now[key]]
    if diffs:
        raise ResumeError(f"{path} was trained with another config ({'; '.join(diffs)}); pass the same settings, "
                          "or start a new run in another --out")


def train(
    cfg: TrainConfig,
    train_data: SplitData,
    val_data: SplitData,
    out_dir: str | Path,
    backbones: dict,
    resume: bool = False,
    extra: dict | None = None,
    data_identity: dict | None = None,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
    other_val: dict[str, SplitData] | None = None,
    text_top: TextTop | None = None,
) -> dict:
    """Train, writing best.pt / last.pt, log.csv and log.json into ``out_dir`` after every epoch,
    last.pt also every ``checkpoint_seconds`` within an epoch, and curves.png when training ends.

    ``data_identity`` (plain strings, e.g. the caches' id hashes) is recorded with the hashes of
    the two splits' image lists; ``resume`` refuses a last.pt made from other backbones, data or
    settings (``check_resume``). ``other_val``: validation splits of further training sources, by
    name; the best epoch is then the best mean rsum (``validate``). ``text_top``: the text encoder's
    last ``cfg.text_top_layers`` layers (``TextTop.from_backbone``), trained with the heads on the
    splits' token states. Returns the best checkpoint's validation metrics.
    """
    out_dir = Path(out_dir)
    procs = distributed()
    if procs.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    set_seed(cfg.seed)
    bf16 = use_bf16(cfg.bf16)
    if bf16:
        log.info("training the heads under bf16 autocast (--bf16 %s)", cfg.bf16)
    if cfg.text_top_layers and (text_top is None or len(text_top.layers) != cfg.text_top_layers
                                or train_data.caption_states is None):
        raise ValueError(f"--text-top-layers {cfg.text_top_layers} needs the text encoder's top and the captions' "
                         "token states of that many layers")
    model = RetrievalModel(image_dim=train_data.image_features.shape[1], text_dim=train_data.caption_features.shape[1],
                           embed_dim=cfg.embed_dim, hidden_dim=cfg.hidden_dim, dropout=cfg.dropout,
                           text_top=copy.deepcopy(text_top) if cfg.text_top_layers else None)
    loss_fn = InfoNCELoss(init_temperature=cfg.init_temperature)
    use_kw = cfg.caption_ratio > 0 and train_data.keyword_features is not None
    sampler = UniqueImageBatchSampler(train_data.caption_image, train_data.keyword_image if use_kw else None,
                                      batch_size=cfg.batch_size, caption_ratio=cfg.caption_ratio if use_kw else 0,
                                      seed=cfg.seed)
    optim = make_optimizer(model, loss_fn, cfg)
    steps_per_epoch = len(sampler)
    total = steps_per_epoch * cfg.epochs
    warmup = max(1, int(cfg.warmup_epochs * steps_per_epoch))
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: lr_lambda(s, warmup, total))
    identity = {"train_images_sha256": list_hash(train_data.image_names),
                "val_images_sha256": list_hash(val_data.image_names), **(data_identity or {}),
                **{f"{name}_val_images_sha256": list_hash(d.image_names) for name, d in (other_val or {}).items()}}

    history: list[dict] = []
    best = {"val_rsum": -1.0, "epoch": 0}
    start_epoch = 1
    # where the first epoch run here starts: (step, loss sum, samples, seconds) already done in it
    resume_point = (0, 0.0, 0, 0.0)
    last_path = out_dir / LAST
    if resume and last_path.is_file():
        state = read_checkpoint(last_path)
        check_resume(state, last_path, cfg, backbones, identity)
        model.load_state_dict(state["model"])
        loss_fn.load_state_dict(state["loss"])
        optim.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history, best = state["history"], state["best"]
        start_epoch = state["epoch"] + 1
        partial = state.get("partial")
        if partial:  # saved within an epoch: redo its batches from the next step
            start_epoch = partial["epoch"]
            resume_point = (partial["step"], partial["loss_sum"], partial["samples"], partial["seconds"])
        if state["train_config"]["epochs"] != cfg.epochs:
            # the lambda above already uses the new total; the optimiser's current rate is set to match
            for group, base in zip(optim.param_groups, sched.base_lrs):
                group["lr"] = base * lr_lambda(sched.last_epoch, warmup, total)
            log.info("--epochs %d (the run had %d): the learning-rate schedule is rebuilt for %d epochs from "
                     "step %d on", cfg.epochs, state["train_config"]["epochs"], cfg.epochs, sched.last_epoch)
        set_rng_state(state["rng"])
        log.info("resumed from %s at epoch %d, step %d (best val rsum %.1f at epoch %d)", last_path, start_epoch,
                 resume_point[0], best["val_rsum"], best["epoch"])
    elif resume:
        log.info("--resume: no %s yet, starting from scratch", last_path)
    if procs.world > 1:  # one model in every process; dropout draws its own masks in each
        procs.broadcast(model, loss_fn)
        torch.manual_seed(torch.initial_seed() + procs.rank)
        log.info("process %d of %d: %d rows of each batch of %d", procs.rank, procs.world,
                 len(procs.share(np.arange(cfg.batch_size))[0]), cfg.batch_size)

    def checkpoint(epoch: int, metrics: dict | None, partial: dict | None = None) -> dict:
        """``epoch``: the last finished one; ``partial``: where within the next one (a mid-epoch save)."""
        return {
            "model_config": model.config_dict(), "model": model.state_dict(), "loss": loss_fn.state_dict(),
            "temperature": loss_fn.temperature, "optimizer": optim.state_dict(), "scheduler": sched.state_dict(),
            "epoch": epoch, "metrics": metrics, "best": best, "history": history,
            "train_config": asdict(cfg), "backbones": backbones, "data_identity": identity, **(extra or {}),
            "rng": rng_state(), "partial": partial,
        }

    stale = sum(1 for h in history if h["epoch"] > best["epoch"])
    for epoch in range(start_epoch, cfg.epochs + 1):
        if stale >= cfg.patience:
            break
        model.train()
        sampler.set_epoch(epoch)
        batches = list(sampler)  # deterministic per seed and epoch: a resumed epoch gets the same ones
        done, total_loss, n, seconds_before = resume_point if epoch == start_epoch else (0, 0.0, 0, 0.0)
        t0 = time.perf_counter()
        saved_at = time.monotonic()
        for step in tqdm(range(done, len(batches)), initial=done, total=len(batches), disable=not procs.is_main,
                         desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", leave=False, dynamic_ncols=True):
            batch = batches[step]
            mine, sizes = procs.share(batch)
            img, txt, image_idx = train_data.gather(mine)
            if procs.world > 1:
                image_idx = train_data.image_index(batch)
            if model.text_top is not None:
                txt = train_data.text_states(mine)
            loss = training_step(model, loss_fn, optim, img, txt, image_idx, cfg, bf16, procs, sizes)
            sched.step()
            total_loss += loss.item() * len(batch)
            n += len(batch)
            if procs.is_main and step + 1 < len(batches) and time.monotonic() - saved_at >= checkpoint_seconds:
                seconds = seconds_before + time.perf_counter() - t0
                state = checkpoint(epoch - 1, None, {"epoch": epoch, "step": step + 1, "loss_sum": total_loss,
                                                     "samples": n, "seconds": seconds})
                atomic_save_with(last_path, lambda f: torch.save(state, f))
                saved_at = time.monotonic()
        train_time = seconds_before + time.perf_counter() - t0
        metrics = validate(model, val_data, other_val)
        row = {"epoch": epoch, "train_loss": total_loss / max(n, 1), "temperature": loss_fn.temperature,
               "lr": sched.get_last_lr()[0], "epoch_seconds": round(train_time, 2),
               **{f"val_{k}": float(v) for k, v in metrics.items()}}
        history.append(row)
        improved = selection_rsum(metrics) > best["val_rsum"]
        if improved:
            best = {"val_rsum": selection_rsum(metrics), "epoch": epoch, "metrics": metrics}
            stale = 0
        else:
            stale += 1
        if procs.is_main:
            state = checkpoint(epoch, metrics)
            if improved:
                atomic_save_with(out_dir / BEST, lambda f: torch.save(state, f))
            atomic_save_with(last_path, lambda f: torch.save(state, f))
            _write_logs(history, out_dir)
        others = "".join(f", {name} {metrics[f'{name}_rsum']:.1f}" for name in other_val or {})
        log.info("epoch %d: loss %.4f  T %.4f  val R@1 %.1f/%.1f  rsum %.1f%s%s  (%.1f s)", epoch, row["train_loss"],
                 row["temperature"], metrics["t2i_r1"], metrics["i2t_r1"], metrics["rsum"], others,
                 "  *best*" if improved else "", train_time)
    if stale >= cfg.patience:
        log.info("early stop: no better validation rsum for %d epochs (best %.1f at epoch %d)",
                 cfg.patience, best["val_rsum"], best["epoch"])
    if history and procs.is_main:  # once, at the end: a plot per epoch costs a noticeable share of a short epoch
        _plot(history, out_dir / "curves.png")
    if procs.world > 1:  # the others wait until rank 0's files are written
        import torch.distributed as dist

        dist.barrier()
    return best


def train_ensemble(
    cfg: TrainConfig,
    train_data: SplitData,
    val_data: SplitData,
    out_dir: str | Path,
    backbones: dict,
    members: int = config.ENSEMBLE,
    resume: bool = False,
    extra: dict | None = None,
    data_identity: dict | None = None,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
    other_val: dict[str, SplitData] | None = None,
    text_top: TextTop | None = None,
) -> dict:
    """``members`` head pairs trained one after another (seeds seed, seed+1, ...) into
    ``out_dir/member<i>/`` and joined into ``out_dir/best.pt`` as one ``EnsembleModel``; with one
    member this is ``train`` itself. Returns the best checkpoint's validation metrics (of the ensemble)."""
    out_dir = Path(out_dir)
    if members < 1:
        raise ValueError(f"--ensemble must be at least 1, got {members}")
    if members == 1:
        return train(cfg, train_data, val_data, out_dir, backbones, resume, extra, data_identity, checkpoint_seconds,
                     other_val, text_top)
    if cfg.text_top_layers:
        raise ValueError("--ensemble with --text-top-layers: the members' text tops would need a text encoder each")
    states = []
    for i in range(members):
        member_cfg = TrainConfig(**{**asdict(cfg), "seed": cfg.seed + i})
        log.info("ensemble member %d of %d (seed %d)", i + 1, members, member_cfg.seed)
        train(member_cfg, train_data, val_data, out_dir / f"member{i}", backbones, resume, extra, data_identity,
              checkpoint_seconds, other_val)
        states.append(read_checkpoint(out_dir / f"member{i}" / BEST))
    model = EnsembleModel([st["model_config"] for st in states])
    for member, st in zip(model.members, states):
        member.load_state_dict(st["model"])
    metrics = validate(model.eval(), val_data, other_val)
    state = {"model_config": model.config_dict(), "model": model.state_dict(),
             "temperature": float(np.mean([st["temperature"] for st in states])),
             "epoch": "+".join(str(st["epoch"]) for st in states), "metrics": metrics,
             "members": [{"epoch": st["epoch"], "seed": st["train_config"]["seed"], "metrics": st["metrics"]}
                         for st in states],
             "train_config": asdict(cfg), "ensemble": members, "backbones": backbones, **(extra or {})}
    atomic_save_with(out_dir / BEST, lambda f: torch.save(state, f))
    log.info("ensemble of %d: val rsum %.1f (members %s)", members, metrics["rsum"],
             ", ".join(f"{st['metrics']['rsum']:.1f}" for st in states))
    return {"val_rsum": selection_rsum(metrics), "epoch": state["epoch"], "metrics": metrics}


def add_querybank(checkpoint: str | Path, train_data: SplitData, val_data: SplitData,
                  size: int = config.QUERYBANK_SIZE) -> dict | None:
    """Store a querybank of the trained model's training-split embeddings in ``checkpoint``
    (``crossmodal.querybank``) and return the validation metrics with querybank normalisation."""
    if size <= 0:
        return None
    model, state = load_checkpoint(checkpoint)
    _pool_text(model, [train_data, val_data])
    train_img, train_txt = embed_split(model, train_data)
    keywords = None
    if train_data.keyword_features is not None:  # trained with keyword samples: a bank of them too
        keywords = encode_rows(model.encode_text, train_data.keyword_features)
    bank = make_querybank(train_txt, train_img, state["temperature"], size, keyword_emb=keywords)
    val_img, val_txt = embed_split(model, val_data)
    metrics = plain_metrics(retrieval_metrics(val_img, val_txt, val_data.caption_image,
                                              querybank_bias(val_img, bank["text"], bank["beta"]),
                                              caption_bias(bank, val_txt)))
    state.update(querybank=bank, metrics_querybank=metrics)
    atomic_save_with(Path(checkpoint), lambda f: torch.save(state, f))
    return metrics


def add_calibration(checkpoint: str | Path, sets: list[tuple[SplitData, CaptionSet]],
                    text_backbone: TextBackbone) -> dict:
    """Fit the match-confidence curves (``crossmodal.calibration``) on half of each dev split in
    ``sets`` ((split, its captions) per dataset), scored as search scores (with the checkpoint's
    querybank; short queries encoded by ``text_backbone`` with the checkpoint's text top, as search
    encodes them), store them in ``checkpoint`` and return them with their quality on the other half."""
    model, state = load_checkpoint(checkpoint)
    _pool_text(model, [split for split, _ in sets])
    if getattr(model, "text_top", None) is not None:
        text_backbone.set_top(model.text_top)
    report = calibrate_dev(model, sets, text_backbone.encode, state.get("querybank"))
    state["calibration"] = report
    atomic_save_with(Path(checkpoint), lambda f: torch.save(state, f))
    return report


def _pool_text(model: torch.nn.Module, splits: list[SplitData]) -> None:
    """With a text top, make the splits' text features its output (``SplitData.pool_text``)."""
    if getattr(model, "text_top", None) is not None:
        for split in splits:
            split.pool_text(model.text_top)


def _write_logs(history: list[dict], out_dir: Path) -> None:
    atomic_write_json(out_dir / "log.json", history)
    with atomic_open(out_dir / "log.csv", "w") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
