"""The ``decode="gpu"`` input path of image extraction: worker processes read each batch's file bytes
(``PackedBytesBatches``), nvJPEG decodes them on the device and a batched resize brings them to the
backbone's input size, in background threads on their own CUDA streams while the model runs.

Files nvJPEG cannot decode (PNG, WebP, odd JPEGs) are decoded on the CPU; unreadable ones are
reported as errors, row by row, as the CPU path does.
"""
from __future__ import annotations

import os
import threading
from typing import Callable, Iterable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from crossmodal.backbones import ImageBackbone
from crossmodal.webdataset import read_bytes

GPU_DECODE_THREADS = 3  # decode="gpu": threads running nvJPEG + resize beside the model (0 = inline)


class PackedBytesBatches(Dataset):
    """Item b: the file bytes of batch b packed in one uint8 tensor, each file's length, and errors.

    One tensor per batch, because a DataLoader sends each tensor between processes on its own:
    thousands of small byte tensors cost more than the reads (H200 machine: 2,700 files/s through
    16 workers). And processes, not threads: threads reading files in the main process competed
    with the decode threads for the GIL (H200, ResNet18: 4,220 images/s end to end with reading
    threads, 5,389 with worker processes; runs of 5,000 and 10,000 images).
    """

    def __init__(self, paths: Sequence[str | os.PathLike], batches: Sequence[Sequence[int]]):
        self.paths = [str(p) for p in paths]
        self.batches = [list(b) for b in batches]

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, b: int) -> tuple[torch.Tensor, list[int], list[str]]:
        chunks, errors = [], []
        for i in self.batches[b]:
            try:
                chunks.append(read_bytes(self.paths[i]))
                errors.append("")
            except OSError as err:
                chunks.append(b"")
                errors.append(f"{type(err).__name__}: {err}")
        packed = bytearray().join(chunks)
        data = torch.frombuffer(packed, dtype=torch.uint8) if packed else torch.empty(0, dtype=torch.uint8)
        return data, [len(c) for c in chunks], errors


def byte_batches(paths: Sequence[str | os.PathLike], batches: Sequence[Sequence[int]],
                  num_workers: int) -> Iterator[tuple[list[torch.Tensor], list[str]]]:
    """(each file's bytes, errors) per batch, read ahead by DataLoader worker processes."""
    loader = DataLoader(PackedBytesBatches(paths, batches), batch_size=None, num_workers=num_workers,
                        prefetch_factor=4 if num_workers else None)
    for packed, lengths, errors in loader:
        yield list(torch.split(packed, lengths)), errors


def _resize_batch(images: Sequence[torch.Tensor], resize: Callable, out: torch.Tensor,
                  rows: Sequence[int]) -> None:
    """``out[rows[k]] = resize(images[k])``, one resize call per distinct image size.

    Photos of a collection come in a handful of sizes (Flickr: 500x375, 375x500, 500x333 ...):
    stacking the images of each size and resizing the stack runs a few large kernels per
    batch instead of a few small ones per image. Results are identical to per-image resizing.
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for k, img in enumerate(images):
        groups.setdefault(tuple(img.shape), []).append(k)
    for ks in groups.values():
        dst = torch.tensor([rows[k] for k in ks])
        if out.is_cuda:  # from pinned memory, asynchronously: a pageable copy would wait for the device
            dst = dst.pin_memory().to(out.device, non_blocking=True)
        out.index_copy_(0, dst, resize(torch.stack([images[k] for k in ks])))


def _map_ahead(fn: Callable, items: Iterable, threads: int = 1, ahead: int = 4) -> Iterator:
    """``fn(item)`` for each item, in order, computed by a thread pool up to ``ahead`` items early."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def gpu_decoded_batches(file_batches: Iterable[tuple[list[torch.Tensor], list[str]]], backbone: ImageBackbone,
                         device: torch.device, threads: int = GPU_DECODE_THREADS,
                         ahead: int = 2) -> Iterator[tuple[torch.Tensor, list[str]]]:
    """(uint8 batch on the device, errors) for each batch of file bytes.

    With ``threads`` > 0, nvJPEG decoding and resizing run in background threads, each on its own
    CUDA stream, while the caller's stream runs the model: torchvision's batched decode waits for
    the hardware decoder before it returns, so done inline it leaves the GPU's compute idle.
    ``threads=0`` decodes inline on the caller's stream.
    """
    if threads <= 0:
        for data, errors in file_batches:
            yield decode_on_device(data, errors, backbone, device)
        return
    cuda = device.type == "cuda"  # (on a CPU, as in the tests, there are no streams to order)
    local = threading.local()

    def prepare(item: tuple[list[torch.Tensor], list[str]]) -> tuple[torch.Tensor, list[str], torch.cuda.Event | None]:
        if not cuda:
            return (*decode_on_device(*item, backbone, device), None)
        if not hasattr(local, "stream"):
            local.stream = torch.cuda.Stream(device)
        with torch.cuda.stream(local.stream):
            x, errors = decode_on_device(*item, backbone, device)
            return x, errors, local.stream.record_event()

    consumer = torch.cuda.current_stream(device) if cuda else None
    for x, errors, ready in _map_ahead(prepare, file_batches, threads, ahead):
        if ready is not None:
            consumer.wait_event(ready)
            x.record_stream(consumer)  # allocated on the producer's stream: not reused before the model is done
        yield x, errors


def decode_on_device(data: list[torch.Tensor], errors: list[str], backbone: ImageBackbone,
                     device: torch.device) -> tuple[torch.Tensor, list[str]]:
    """nvJPEG batch decode + batched resize on the device; files it cannot decode go through PIL."""
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    resize = backbone.tensor_transform()
    size = backbone.image_size
    out = torch.zeros(len(data), 3, size, size, dtype=torch.uint8, device=device)
    errors = list(errors)
    jpeg_rows = [i for i, d in enumerate(data) if not errors[i] and len(d) > 2 and d[:2].tolist() == [0xFF, 0xD8]]
    decoded: dict[int, torch.Tensor] = {}
    if jpeg_rows:
        try:
            imgs = decode_jpeg([data[i] for i in jpeg_rows], mode=ImageReadMode.RGB, device=device)
            decoded = dict(zip(jpeg_rows, imgs))
        except RuntimeError:  # one bad file fails the batch: decode them one by one instead
            for i in jpeg_rows:
                try:
                    decoded[i] = decode_jpeg(data[i], mode=ImageReadMode.RGB, device=device)
                except RuntimeError:
                    pass
    if decoded:
        _resize_batch(list(decoded.values()), resize, out, list(decoded))
    for i, d in enumerate(data):
        if errors[i] or i in decoded:
            continue
        try:  # PNG/WebP/odd JPEGs: CPU decode
            img = decode_image(d, mode=ImageReadMode.RGB)
            out[i] = resize(img).to(device)
        except Exception as err:  # noqa: BLE001
            errors[i] = f"{type(err).__name__}: {err}"
    return out, errors
