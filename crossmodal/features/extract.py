"""Batched feature extraction into resumable caches (``features.cache``): image features of a folder
or a caption file's images, and text features of captions or any list of texts.

Images: a DataLoader whose worker processes decode JPEGs (PIL, with JPEG draft-mode downscaling)
into compact uint8 tensors; the model runs under ``inference_mode`` in channels_last, and on a
GPU with bf16 autocast and pinned memory. With ``decode="gpu"`` workers only read the file bytes,
and nvJPEG decodes and resizes on the device in background threads (own CUDA streams) while the
model runs: decoding is off the CPU's critical path and overlaps the forward pass (``gpu_decode``).

Texts: one vector per text (captions are never averaged), through ``TextBackbone.encode`` —
the same code for captions, keyword phrases and the app's queries.
"""
from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from crossmodal.backbones import BUILD_LOCK, ONE_VIEW, TEXT_BATCH_SIZE, ImageBackbone, TextBackbone, resolve_device
from crossmodal.captions import CaptionSet, list_hash
from crossmodal.features.cache import FeatureCache, build_cache
from crossmodal.features.gpu_decode import GPU_DECODE_THREADS, byte_batches, gpu_decoded_batches
from crossmodal.images import INDEX_BUDGET, open_image

log = logging.getLogger(__name__)

IMAGE_BATCH_SIZE_CPU = 8  # small batches stay in cache: faster on a 2-core CPU (bench/bench_extract.py)
IMAGE_BATCH_SIZE_GPU = 256
NUM_WORKERS = 2  # JPEG-decoding worker processes (decode="cpu")
GPU_READ_WORKERS = 8  # decode="gpu": file-reading processes, at most one per core (16 starved nvJPEG's threads)
# At most this many image rows per resumable chunk (text: 4x); a chunk is also saved every
# resumable.FLUSH_SECONDS, whichever comes first.
CHUNK_SIZE = 2048


class ImageFileDataset(Dataset):
    """Decoded, resized uint8 images; an unreadable file gives a zero image and its reason."""

    def __init__(self, paths: Sequence[str | os.PathLike], transform: Callable, image_size: int):
        self.paths = [str(p) for p in paths]
        self.transform = transform
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        try:
            # Within the photo index's decode budget; JPEG draft mode decodes at 1/2, 1/4 or 1/8 scale
            # when the result stays larger than the target: large photos decode several times faster.
            with open_image(self.paths[i], INDEX_BUDGET, self.image_size) as im:
                return self.transform(im.convert("RGB")), ""
        except Exception as err:  # noqa: BLE001 - corrupt/truncated/non-image files are recorded
            return torch.zeros(3, self.image_size, self.image_size, dtype=torch.uint8), f"{type(err).__name__}: {err}"


def _collate(batch: list[tuple[torch.Tensor, str]]) -> tuple[torch.Tensor, list[str]]:
    return torch.stack([x for x, _ in batch]), [e for _, e in batch]


def default_num_workers(decode: str) -> int:
    """Worker processes by default: ``NUM_WORKERS`` PIL decoders for ``decode="cpu"``; for
    ``"gpu"`` only file reading is left to them, and nvJPEG needs more of it."""
    return NUM_WORKERS if decode == "cpu" else min(GPU_READ_WORKERS, os.cpu_count() or 1)


class ImageEmbedder:
    """A frozen image backbone on a device, embedding batches of uint8 images: the one loop body of
    every image path (dataset extraction, the photo indexer). channels_last, ``inference_mode``, and
    bf16 autocast where asked ("auto": on a GPU)."""

    def __init__(self, backbone: ImageBackbone, device: str | torch.device | None = None, precision: str = "auto"):
        if precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
        self.device = resolve_device(device)
        self.model = backbone.model.to(self.device).eval().to(memory_format=torch.channels_last)
        self.bf16 = precision == "bf16" or (precision == "auto" and self.device.type == "cuda")

    def __call__(self, x: torch.Tensor, zero_rows: Sequence[int] = ()) -> torch.Tensor:
        """(B, 3, S, S) uint8 -> (B, dim) float32 features, on the device; ``zero_rows`` (failed
        decodes) hold zeros."""
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            f = self.model(x).float()
            if zero_rows:  # inside inference_mode: an inference tensor cannot be changed outside it
                f[list(zero_rows)] = 0.0
        return f


def die_with_parent(worker_id: int = 0) -> None:
    """In a decoding worker: be killed when the process (the thread) that started it dies, so that a
    killed run leaves no workers behind, decoding on. Linux only; elsewhere nothing."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux/glibc
        return
    if os.getppid() == 1:  # the parent died before the call: nobody is left to read the results
        os._exit(1)


class _ImageLoader(DataLoader):
    """A DataLoader whose decoding workers are forked under ``BUILD_LOCK``, never while another thread
    builds a backbone (a worker forked then would inherit torch's generator lock held, and hang)."""

    def __iter__(self):
        with BUILD_LOCK:
            return super().__iter__()


def image_loader(dataset: Dataset, batches: list[list[int]], num_workers: int, device: torch.device,
                 collate_fn: Callable) -> DataLoader:
    """The DataLoader every image path decodes with: fixed batches, ``num_workers`` decoding
    processes (which die with their parent), pinned memory for a GPU."""
    return _ImageLoader(dataset, batch_sampler=batches, num_workers=num_workers, collate_fn=collate_fn,
                        pin_memory=device.type == "cuda", prefetch_factor=4 if num_workers else None,
                        persistent_workers=False, worker_init_fn=die_with_parent if num_workers else None)


def extract_image_features(
    backbone: ImageBackbone,
    images_dir: str | os.PathLike,
    names: Sequence[str],
    out_dir: str | os.PathLike,
    *,
    batch_size: int | None = None,
    num_workers: int = NUM_WORKERS,
    chunk_size: int = CHUNK_SIZE,
    device: str | None = None,
    decode: str = "cpu",
    decode_threads: int = GPU_DECODE_THREADS,
    views: tuple[str, ...] = ONE_VIEW,
    stack_views: bool = True,
    precision: str = "auto",
    force: bool = False,
    extra: dict | None = None,
) -> FeatureCache:
    """Features of ``images_dir/name`` for every name, cached in ``out_dir`` (resumable).

    With several ``views`` (``backbones.IMAGE_VIEWS``) each row holds one vector per view
    (len(views) x dim, view-major): training samples one per step, everything else takes their mean;
    without ``stack_views`` each row is that mean already (what a searched collection needs).
    ``precision``: "auto" = bf16 autocast on a GPU, float32 on a CPU; "bf16" or "fp32" everywhere
    (bf16 is much faster on a CPU with AMX; the cache records the precision).
    ``decode_threads``: with ``decode="gpu"``, threads that decode and resize beside the model.
    """
    embed = ImageEmbedder(backbone, device, precision)
    device = embed.device
    if decode == "gpu" and device.type != "cuda":
        raise ValueError("--decode gpu needs a CUDA device")
    if batch_size is None:
        batch_size = IMAGE_BATCH_SIZE_GPU if device.type == "cuda" else IMAGE_BATCH_SIZE_CPU
    images_dir = Path(images_dir)
    paths = [images_dir / n for n in names]
    stack_views = stack_views and views != ONE_VIEW
    backbone.set_views(views, stack=stack_views)
    cpu_transform = backbone.pil_transform()

    # One unit of the resumable build is one batch: a resumed run computes exactly the batches of
    # an uninterrupted one, so the features are byte-identical.
    def compute(units: list[np.ndarray], progress: Callable[[int], object]) -> Iterator:
        batches = [u.tolist() for u in units]
        if not batches:
            return
        if decode == "gpu":
            batch_iter = gpu_decoded_batches(byte_batches(paths, batches, num_workers), backbone, device,
                                              decode_threads)
        else:
            batch_iter = iter(image_loader(ImageFileDataset(paths, cpu_transform, backbone.image_size), batches,
                                           num_workers, device, _collate))
        for rows in batches:
            data, errors = next(batch_iter)  # (GPU-decoded batches are on the device already)
            bad = [j for j, e in enumerate(errors) if e]
            f = embed(data, zero_rows=bad)  # failed rows hold zeros and are listed in the manifest
            progress(len(rows))
            # on a GPU the tensor stays there until its chunk is saved: no synchronisation every batch
            yield f, [(names[rows[j]], errors[j]) for j in bad]

    identity = image_identity(backbone, views, stack_views, decode, embed.bf16 and device.type == "cpu")
    return build_cache(out_dir, names, identity, compute, unit_size=batch_size, chunk_size=chunk_size,
                       force=force, desc=f"images ({backbone.name})", unit="img", extra=extra)


def image_identity(backbone: ImageBackbone, views: tuple[str, ...], stack_views: bool, decode: str,
                   cpu_bf16: bool) -> dict:
    """What an image cache records of what made it (``cache.build_cache``'s identity)."""
    preprocess = {**backbone.preprocess, "jpeg_draft": decode == "cpu", "decode": decode}
    if cpu_bf16:  # absent otherwise: earlier caches keep their identity
        preprocess["autocast"] = "bf16"
    identity = {"kind": "image", "backbone": backbone.name, "weights": backbone.weights, "preprocess": preprocess,
                "dim": backbone.dim * (len(views) if stack_views else 1)}
    if stack_views:  # rows hold the views stacked (preprocess["views"] says which)
        identity["views"] = list(views)
    return identity


def extract_dataset_images(backbone: ImageBackbone, images_dir: str | os.PathLike, captions: CaptionSet,
                           captions_file: str | os.PathLike, out_dir: str | os.PathLike,
                           **kwargs) -> FeatureCache:
    """Stage 1: features of every image of a caption file (resumable); the manifest records the
    images folder and the caption file. ``kwargs`` as for ``extract_image_features``."""
    return extract_image_features(backbone, images_dir, captions.images, out_dir,
                                  extra=dataset_images_extra(images_dir, captions_file), **kwargs)


def dataset_images_extra(images_dir: str | os.PathLike, captions_file: str | os.PathLike) -> dict:
    """What stage 1's manifest records besides the features: the images folder and the caption file."""
    return {"images_dir": str(Path(images_dir).resolve()), "captions_file": str(Path(captions_file).resolve())}


def caption_features_extra(captions: CaptionSet, captions_file: str | os.PathLike) -> dict:
    """What stage 2's manifest records: the caption file and its image list (training checks the
    image cache against it)."""
    return {"captions_file": str(Path(captions_file).resolve()), "image_ids_sha256": list_hash(captions.images)}


def extract_caption_features(backbone: TextBackbone, captions: CaptionSet, captions_file: str | os.PathLike,
                             out_dir: str | os.PathLike, **kwargs) -> FeatureCache:
    """Stage 2: one vector per caption of a caption file, row ids its caption keys (resumable).

    The manifest records the caption file and its image list, which training checks the image
    cache against. ``kwargs`` as for ``extract_text_features``.
    """
    return extract_text_features(backbone, captions.texts, captions.keys, out_dir, kind="caption",
                                 extra=caption_features_extra(captions, captions_file), **kwargs)


def extract_text_features(
    backbone: TextBackbone,
    texts: Sequence[str],
    ids: Sequence[str],
    out_dir: str | os.PathLike,
    *,
    kind: str = "text",
    batch_size: int = TEXT_BATCH_SIZE,
    chunk_size: int = CHUNK_SIZE * 4,
    device: str | None = None,
    force: bool = False,
    extra: dict | None = None,
) -> FeatureCache:
    """One vector per text, cached in ``out_dir`` under the given row ids (resumable)."""
    if len(texts) != len(ids):
        raise ValueError(f"{len(texts)} texts but {len(ids)} ids")
    device = resolve_device(device)
    lengths = backbone.token_lengths(texts)
    # Computed in order of length, then text: a unit holds similar lengths, so padding stays
    # small, and equal texts are neighbours.
    order = np.array(sorted(range(len(texts)), key=lambda i: (lengths[i], texts[i])), dtype=np.int64)

    # One unit of the resumable build is ``batch_size`` rows of that order, encoded as one batch
    # (the same in every run, so a resumed build is byte-identical). Keyword phrases repeat a lot
    # ("dog" for hundreds of images): each distinct text of a unit is encoded once.
    def compute(units: list[np.ndarray], progress: Callable[[int], object]) -> Iterator:
        for rows in units:
            unique, inverse = np.unique(np.asarray([texts[i] for i in rows], dtype=object), return_inverse=True)
            encoded = backbone.encode(unique.tolist(), batch_size, device)
            progress(len(rows))
            yield encoded[inverse], []

    identity = {"kind": kind, "backbone": backbone.name, "weights": backbone.weights,
                "preprocess": backbone.preprocess, "dim": backbone.dim}
    return build_cache(out_dir, ids, identity, compute, unit_size=batch_size, chunk_size=chunk_size, order=order,
                       force=force, desc=f"{kind} ({backbone.name})", unit="text", extra=extra)
