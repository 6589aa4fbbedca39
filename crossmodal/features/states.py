"""Cached trunk states of texts: what a trained text top (``backbones.TextTop``) reads instead of the
text itself, so the encoder's first layers run once, at extraction, and training runs only its top.

A states cache sits beside the pooled cache of the same texts (``states_dir``: ``<that folder>-top<N>``
holds the input of the last N layers) and has its row ids::

    part-00000.npy           float16 (tokens, dim): the token states of texts 0..PART_TEXTS-1, in order
    part-00000.offsets.npy   int64 (texts + 1,): where each text's tokens start and end in it
    manifest.json            backbone, weights, top layers, dim, rows, ids hash: written last

Texts are computed part by part, each part's offsets written after its states, so a killed run keeps
its finished parts and resumes at the next (a part is finished when both files are there and agree).
A folder made by another backbone, other layers or other texts is refused, naming ``--force``.
"""
from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from crossmodal.atomic_io import atomic_save_npy, atomic_write_json
from crossmodal.backbones import TEXT_BATCH_SIZE, TextBackbone, resolve_device
from crossmodal.captions import list_hash
from crossmodal.features.cache import MANIFEST_FILE, StaleCacheError, identity_mismatch, read_manifest

log = logging.getLogger(__name__)

PART_TEXTS = 8192  # texts per part: what a killed extraction can lose
PLAN_FILE = "plan.json"  # while building: the identity the parts belong to


def states_dir(pooled_dir: str | os.PathLike, top_layers: int) -> Path:
    """Where the states for a top of ``top_layers`` layers of the texts cached in ``pooled_dir`` go."""
    pooled_dir = Path(pooled_dir)
    return pooled_dir.with_name(f"{pooled_dir.name}-top{top_layers}")


@dataclass
class TextStates:
    """Token states of texts, row i's tokens at ``states[offsets[i]:offsets[i + 1]]``."""

    states: torch.Tensor  # (tokens, dim) float16
    offsets: np.ndarray  # (rows + 1,) int64

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def batch(self, rows: Sequence[int] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows -> (B, T, dim) float32 states, zero-padded to the longest, and their (B, T) mask."""
        rows = np.asarray(rows, dtype=np.int64)
        starts, ends = self.offsets[rows], self.offsets[rows + 1]
        lengths = ends - starts
        hidden = torch.zeros(len(rows), int(lengths.max(initial=1)), self.states.shape[1])
        mask = torch.zeros(hidden.shape[:2], dtype=torch.long)
        for j, (s, e) in enumerate(zip(starts, ends)):
            hidden[j, : e - s] = self.states[s:e]
            mask[j, : e - s] = 1
        return hidden, mask

    def subset(self, rows: Sequence[int] | np.ndarray) -> "TextStates":
        """The given rows, in that order, as their own states."""
        rows = np.asarray(rows, dtype=np.int64)
        lengths = self.offsets[rows + 1] - self.offsets[rows]
        if len(rows) == 0:
            return TextStates(self.states[:0], np.zeros(1, dtype=np.int64))
        index = np.concatenate([np.arange(s, e) for s, e in zip(self.offsets[rows], self.offsets[rows + 1])])
        return TextStates(self.states[torch.from_numpy(index)], np.concatenate([[0], np.cumsum(lengths)]))

    @staticmethod
    def concat(parts: Sequence["TextStates"]) -> "TextStates":
        shifts = np.cumsum([0] + [int(p.offsets[-1]) for p in parts])
        return TextStates(torch.cat([p.states for p in parts]),
                          np.concatenate([[0]] + [p.offsets[1:] + s for p, s in zip(parts, shifts)]))

    @torch.inference_mode()
    def pooled(self, top: torch.nn.Module, batch_size: int = 512) -> torch.Tensor:
        """(rows, dim) float16 features of every row through ``top`` (in eval mode), rows of similar
        length batched together."""
        training = top.training
        top.eval()
        order = np.argsort(np.diff(self.offsets), kind="stable")
        out = torch.empty(len(self), self.states.shape[1], dtype=torch.float16)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            out[torch.from_numpy(rows)] = top(*self.batch(rows)).to(torch.float16)
        top.train(training)
        return out


def _part_files(directory: Path, part: int) -> tuple[Path, Path]:
    return directory / f"part-{part:05d}.npy", directory / f"part-{part:05d}.offsets.npy"


def _read_part(directory: Path, part: int, texts: int) -> tuple[np.ndarray, np.ndarray] | None:
    """A finished part's (states, offsets), memory-mapped; None when missing or damaged."""
    states_file, offsets_file = _part_files(directory, part)
    if not offsets_file.is_file():
        return None
    try:
        states, offsets = np.load(states_file, mmap_mode="r"), np.load(offsets_file)
    except (OSError, ValueError):
        return None
    if len(offsets) != texts + 1 or int(offsets[-1]) != len(states) or states.ndim != 2:
        return None
    return states, offsets


def extract_text_states(
    backbone: TextBackbone,
    texts: Sequence[str],
    ids: Sequence[str],
    out_dir: str | os.PathLike,
    top_layers: int,
    *,
    kind: str = "text",
    batch_size: int = TEXT_BATCH_SIZE,
    part_texts: int = PART_TEXTS,
    device: str | None = None,
    force: bool = False,
) -> Path:
    """The trunk states of every text (the input of the last ``top_layers`` layers), cached in
    ``out_dir`` (resumable by part). Returns ``out_dir``."""
    if len(texts) != len(ids):
        raise ValueError(f"{len(texts)} texts but {len(ids)} ids")
    out_dir = Path(out_dir)
    identity = {"kind": f"{kind}-states", "backbone": backbone.name, "weights": backbone.weights,
                "preprocess": backbone.preprocess, "top_layers": top_layers, "dim": backbone.dim,
                "rows": len(ids), "ids_sha256": list_hash(ids), "part_texts": part_texts}
    done = read_manifest(out_dir)
    planned = read_manifest(out_dir / PLAN_FILE) if (out_dir / PLAN_FILE).is_file() else None
    for found in (done, planned):
        diff = identity_mismatch(found, identity) if found is not None else []
        if diff and not force:
            raise StaleCacheError(f"{out_dir} holds the states of other texts or another model "
                                  f"({'; '.join(diff)}); pass --force to replace them")
    if done is not None and not force:
        return out_dir
    if force and out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / PLAN_FILE, identity)
    device = resolve_device(device)
    backbone.model.to(device).eval()
    use_bf16 = device.type == "cuda"
    parts = range(0, len(texts), part_texts)
    with tqdm(total=len(texts), desc=f"{kind} states ({backbone.name}, top {top_layers})", unit="text",
              dynamic_ncols=True) as bar:
        for part, start in enumerate(parts):
            chunk = list(texts[start : start + part_texts])
            if _read_part(out_dir, part, len(chunk)) is not None:
                bar.update(len(chunk))
                continue
            enc = backbone.tokenizer(chunk, truncation=True, max_length=backbone.max_length)["input_ids"]
            lengths = np.array([len(e) for e in enc], dtype=np.int64)
            offsets = np.concatenate([[0], np.cumsum(lengths)])
            states = np.empty((int(offsets[-1]), backbone.dim), dtype=np.float16)
            order = np.argsort(lengths, kind="stable")  # similar lengths share a batch: little padding
            for b in range(0, len(order), batch_size):
                rows = order[b : b + batch_size]
                batch = backbone.tokenizer.pad({"input_ids": [enc[i] for i in rows]}, return_tensors="pt")
                batch = {k: v.to(device) for k, v in batch.items()}
                with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    hidden = backbone.trunk_states(batch, top_layers).float().cpu().numpy()
                for j, i in enumerate(rows):
                    states[offsets[i] : offsets[i + 1]] = hidden[j, : lengths[i]]
                bar.update(len(rows))
            states_file, offsets_file = _part_files(out_dir, part)
            atomic_save_npy(states_file, states)
            atomic_save_npy(offsets_file, offsets)  # last: the part is finished
    atomic_write_json(out_dir / MANIFEST_FILE, {**identity, "parts": len(parts)})
    (out_dir / PLAN_FILE).unlink(missing_ok=True)
    return out_dir


def load_text_states(directory: str | os.PathLike, expected: dict, rerun: str = "") -> TextStates:
    """A finished states cache, in memory, refused unless its manifest matches ``expected`` (backbone,
    weights, top layers, ids hash)."""
    directory = Path(directory)
    hint = f"; make it with: {rerun}" if rerun else ""
    manifest = read_manifest(directory)
    if manifest is None:
        raise StaleCacheError(f"no finished text states in {directory}{hint}")
    diff = identity_mismatch(manifest, expected)
    if diff:
        raise StaleCacheError(f"the text states in {directory} do not match ({'; '.join(diff)}){hint}")
    per_part, rows = manifest["part_texts"], manifest["rows"]
    states, offsets, base = [], [np.zeros(1, dtype=np.int64)], 0
    for part in range(manifest["parts"]):
        found = _read_part(directory, part, min(per_part, rows - part * per_part))
        if found is None:
            raise StaleCacheError(f"the text states in {directory} are damaged (part {part}){hint}")
        states.append(torch.from_numpy(np.array(found[0])))
        offsets.append(found[1][1:] + base)
        base += int(found[1][-1])
    return TextStates(torch.cat(states) if states else torch.zeros(0, manifest["dim"], dtype=torch.float16),
                      np.concatenate(offsets))
